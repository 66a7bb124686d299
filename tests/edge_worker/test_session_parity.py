"""Random input sequences give the same effects in the edge worker's and the browser's session.

The scenario table pins the behaviour that matters; this test checks that nothing else differs:
seeded random sequences (any input in any phase, malformed messages, unknown ids) run through
session.py here and through session.js under Node (tests/js/session-replay.mjs), step by step.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.edge_worker.test_session_scenarios import TABLE, feed, make_session, resolve

ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")
SEQUENCES = 150
STEPS = 40
IDS = [resolve(f"@A{n}") for n in range(1, 5)]
CODES = [None, 1000, 1006, 1011, 4003, 4008, 4009, 4001, 4002]
PARTICIPATIONS = [11, 12, 13]
OUTCOMES = ["uploaded", "late", "rejected", "deadline", "no_local_data", "unsupported", "paused"]


def random_input(rng: random.Random) -> dict[str, Any]:
    """One input of any kind, with plausible and implausible values."""
    aid = rng.choice(IDS)
    choices: list[dict[str, Any]] = [
        {"event": "start"},
        {"event": "opened"},
        {"event": "opened"},
        {"event": "closed", "code": rng.choice(CODES[:7] if rng.random() < 0.9 else CODES)},
        {"server": "welcome", "outstanding": rng.sample(IDS, rng.randint(0, 4))},
        {"server": "welcome", "worker": resolve("@W2"), "limits": {"max_result_bytes": 3}},
        {"server": "assign", "assignment": aid},
        {"server": "assign", "assignment": aid},
        {"server": "assign", "assignment": aid, "input": {"lo": "5", "hi": "1"}},
        {"server": "ack", "assignment": aid, "status": rng.choice(["accepted", "late", "x"])},
        {"server": "ack", "assignment": aid, "status": rng.choice(["duplicate", "discarded"])},
        {"server": "ack", "assignment": aid, "status": "accepted"},
        {"server": "credit", "validated": rng.choice([1, "2", -1]), "work_units": 10},
        {"server": "cancel", "assignment": aid, "reason": "lease_lost"},
        {"server": "error", "code": "rate_limited", "message": "slow down"},
        {"server": "pong"},
        {"event": "finished", "assignment": aid, "output_hex": "ab" * rng.randint(0, 5)},
        {"event": "finished", "assignment": aid, "output_hex": "01", "elapsed_ms": 7},
        {"event": "finished", "assignment": aid, "output_hex": "0102", "elapsed_ms": 3},
        {"event": "failed", "assignment": aid, "code": "timeout", "message": "slow"},
        {"event": "tick"},
        {"event": "pause", "reason": rng.choice(["user", "battery", "metered"])},
        {"event": "resume", "reason": rng.choice(["user", "battery", "metered"])},
        {"event": "concurrency", "concurrency": rng.randint(1, 4)},
        {"event": "stop", "abandon": rng.random() < 0.5},
        {"server": "round_invite", "participation": rng.choice(PARTICIPATIONS)},
        {
            "event": "round_finished",
            "participation": rng.choice(PARTICIPATIONS),
            "outcome": rng.choice(OUTCOMES),
            "message": rng.choice(["", "why\nnot"]),
        },
    ]
    return rng.choice(choices)


def normalise(effect: dict[str, Any]) -> dict[str, Any]:
    """Leave out what legitimately differs: error texts and the client part of hello."""
    effect = dict(effect)
    if effect["do"] == "notify" and effect["event"] == "bad_message":
        effect.pop("error")
    if effect["do"] == "send":
        message = dict(effect["message"])
        if message["type"] == "hello":
            message = {k: message[k] for k in ("type", "slots", "resume")}
        if message["type"] == "error" and message["code"] == "kernel_rejected":
            message.pop("message", None)
        effect["message"] = message
    return effect


@pytest.mark.skipif(NODE is None, reason="needs Node")
def test_random_sequences_behave_the_same_in_both_sessions() -> None:
    rng = random.Random(20261201)
    config = resolve({**TABLE["config"], "concurrency": 2})
    sequences = [
        {
            "jitter": rng.choice([0.0, 0.25, 0.5, 1.0]),
            "steps": [{"event": "start"}] + [random_input(rng) for _ in range(STEPS)],
        }
        for _ in range(SEQUENCES)
    ]
    payload = {
        "config": config,
        "server_defaults": resolve(TABLE["server_defaults"]),
        "sequences": sequences,
    }
    replay = subprocess.run(
        [NODE, str(ROOT / "tests" / "js" / "session-replay.mjs")],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    browser = json.loads(replay.stdout)
    for number, sequence in enumerate(sequences):
        session = make_session({**config, "jitter": sequence["jitter"]})
        for index, step in enumerate(sequence["steps"]):
            effects = [normalise(e) for e in feed(session, step)]
            expected = browser[number][index]
            where = f"sequence {number} step {index} {step}"
            assert effects == [normalise(e) for e in expected["effects"]], where
            assert session.snapshot() == expected["state"], where
