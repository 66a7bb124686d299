"""``assign`` messages are spliced from text with their job's fields encoded once per job: the
bytes are those of the documented message encoded whole, and a wrong field still fails the
outbound schema check."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobs import protocol

U64 = st.integers(min_value=0, max_value=2**64 - 1)
NAMES = st.text(min_size=1, max_size=20).filter(lambda name: name.strip())


def _expected(**fields) -> str:  # noqa: ANN003
    return json.dumps(
        {
            "v": protocol.PROTOCOL_VERSION,
            "type": "assign",
            "assignment": str(fields["assignment"]),
            "job": str(fields["job"]),
            "task": fields["task"],
            "kernel": {
                "name": fields["kernel_name"],
                "version": fields["kernel_version"],
                "sha256": fields["kernel_sha256"],
                "url": f"/kernels/{fields['kernel_sha256']}.wasm",
            },
            "input": {
                "lo": str(fields["lo"]),
                "hi": str(fields["hi"]),
                "seed": str(fields["seed"]),
                "params": fields["params"],
            },
            "lease_ms": fields["lease_ms"],
            "work_units": fields["work_units"],
        },
        separators=(",", ":"),
        allow_nan=False,
    )


@given(
    task=st.integers(min_value=0, max_value=2**31),
    lo=U64,
    hi=U64,
    seed=U64,
    params=st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=4),
    kernel_name=NAMES,
    lease_ms=st.integers(min_value=1, max_value=10**9),
    work_units=st.integers(min_value=0, max_value=2**53),
)
def test_an_assign_is_the_documented_message_encoded_whole(
    task, lo, hi, seed, params, kernel_name, lease_ms, work_units
):
    # given an offer's fields (outbound checks off: hypothesis ranges past the schema's limits)
    fields = {
        "assignment": uuid.uuid4(),
        "job": uuid.uuid4(),
        "task": task,
        "kernel_name": kernel_name,
        "kernel_version": "1.0.0",
        "kernel_sha256": "ab" * 32,
        "lo": lo,
        "hi": hi,
        "seed": seed,
        "params": params,
        "lease_ms": lease_ms,
        "work_units": work_units,
    }
    protocol.set_outbound_checks(False)
    try:
        # when it is encoded, twice (the second from the job's cached text)
        first, second = protocol.assign_text(**fields), protocol.assign_text(**fields)
    finally:
        protocol.set_outbound_checks(True)
    # then both are the whole message's encoding
    assert first == second == _expected(**fields)


def test_offers_of_two_jobs_keep_their_own_job_fields():
    # given two jobs whose offers alternate
    shared = {"task": 1, "kernel_version": "1.0.0", "lo": 1, "hi": 2, "work_units": 1}
    jobs = [
        {
            "job": uuid.uuid4(),
            "kernel_name": "prime_count",
            "kernel_sha256": "ab" * 32,
            "seed": 5,
            "params": [],
            "lease_ms": 60_000,
        },
        {
            "job": uuid.uuid4(),
            "kernel_name": "monte_carlo_pi",
            "kernel_sha256": "cd" * 32,
            "seed": 7,
            "params": [0.5],
            "lease_ms": 30_000,
        },
    ]
    # when each job's offers are encoded in turn
    for job in [*jobs, *jobs]:
        fields = {**shared, **job, "assignment": uuid.uuid4()}
        # then each message carries its own job's fields
        assert protocol.assign_text(**fields) == _expected(**fields)


def test_an_assign_outside_the_schema_is_refused_when_checks_are_on():
    # given outbound checks (on in tests) and a negative lease
    # when the assign is encoded, then the schema check refuses it
    with pytest.raises(protocol.OutboundMessageError):
        protocol.assign_text(
            assignment=uuid.uuid4(),
            job=uuid.uuid4(),
            task=0,
            kernel_name="prime_count",
            kernel_version="1.0.0",
            kernel_sha256="ab" * 32,
            lo=1,
            hi=2,
            seed=0,
            params=[],
            lease_ms=-1,
            work_units=1,
        )
