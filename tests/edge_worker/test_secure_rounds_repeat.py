"""The edge worker's secure-round clients (``ccgsc_worker.secure_rounds``) answer a phase request
the server sends again after a reconnect with the answer the first one got, and keep the round;
a request out of phase is still refused and forgets the round."""

from __future__ import annotations

import os

from ccgsc_worker.secagg.wire import WireClient, b64encode
from ccgsc_worker.secure_rounds import SecureRounds

D = 16
JOB = "3f1b2c4d-0000-4000-8000-000000000002"


def _block(client: int) -> dict:
    return {
        "client": client,
        "clients": 3,
        "threshold": 2,
        "session": b64encode(bytes(32)),
        "graph_seed": b64encode(bytes([9]) * 32),
        "scale": 1000.0,
        "bound": 1.0,
    }


def _invite(client: int) -> dict:
    return {
        "job": JOB,
        "round": 4,
        "participation": 100 + client,
        "model": {"parameters": D},
        "secagg": _block(client),
    }


def _keys_for_first() -> dict:
    others = [
        WireClient(
            job=JOB,
            round_number=4,
            participation=100 + c,
            block=_block(c),
            dimension=D,
            random_bytes=os.urandom,
        ).advertise()
        for c in (2, 3)
    ]
    keys = [
        {"client": c, "cipher_public": a["cipher_public"], "mask_public": a["mask_public"]}
        for c, a in zip((2, 3), others, strict=True)
    ]
    return {"type": "secagg_keys", "participation": 101, "round": 4, "keys": keys}


def test_a_key_list_sent_again_gets_the_same_share_message_and_the_round_is_kept():
    # given a secure-round client that answered the key list with its shares
    rounds = SecureRounds()
    rounds.begin(_invite(1))
    keys = _keys_for_first()
    first = rounds.handle(keys)
    assert first is not None
    assert first["type"] == "secagg_share_keys"
    # when the server sends the key list again (the worker reconnected mid-phase)
    again = rounds.handle(keys)
    # then the same answer goes back, and the client still holds the round's secrets
    assert again == first
    assert 101 in rounds._clients  # noqa: SLF001 - the round was not forgotten


def test_a_request_out_of_phase_is_refused_and_forgets_the_round():
    rounds = SecureRounds()
    rounds.begin(_invite(1))
    unmask = {"type": "secagg_unmask", "participation": 101, "round": 4, "alive": [1, 2, 3]}
    assert rounds.handle({**unmask, "dropped": []}) is None
    assert 101 not in rounds._clients  # noqa: SLF001
    assert rounds.handle(_keys_for_first()) is None
