"""Run a whole SecAgg+ round in one process, with clients dropping at chosen phases.

The reference driver for tests and benchmarks: the same message flow the wire will carry,
without the wire.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np

from ccgsc_worker.secagg.primitives import RandomBytes
from jobs.secagg.protocol import RoundConfig, SecAggClient, SecAggServer, unmask_range

PHASES = ("advertise", "share", "masked_input", "unmask")


def run_round(
    config: RoundConfig,
    inputs: Mapping[int, np.ndarray],
    *,
    drop_before: Mapping[int, str] | None = None,
    random_bytes: RandomBytes = os.urandom,
    clients: Mapping[int, object] | None = None,
) -> tuple[np.ndarray, SecAggServer]:
    """The unmasked uint32 sum of the surviving inputs, and the server that computed it.

    inputs: client id → (dimension,) uint32 encoded input. drop_before: client id → the phase
    (one of PHASES) it never answers. clients: optional stand-ins (e.g. a browser client over a
    pipe) with the SecAggClient methods; the rest are SecAggClients. Raises RoundAborted.
    """
    drop_before = drop_before or {}
    agents = {
        i: (clients or {}).get(i) or SecAggClient(config, i, random_bytes)
        for i in config.client_ids
    }

    def answering(phase: str, among: Iterable[int]) -> list[int]:
        cutoff = PHASES.index(phase)
        return [
            i
            for i in sorted(among)
            if i not in drop_before or PHASES.index(drop_before[i]) > cutoff
        ]

    server = SecAggServer(config)
    for i in answering("advertise", agents):
        server.receive_advertisement(agents[i].advertise_keys())
    keys = server.close_advertise()
    for i in answering("share", keys):
        server.receive_shares(agents[i].share_keys(keys[i]))
    ciphertexts = server.close_share()
    for i in answering("masked_input", ciphertexts):
        server.receive_masked_input(agents[i].masked_input(ciphertexts[i], inputs[i]))
    request = server.close_masked_input()
    for i in answering("unmask", request["alive"]):
        server.receive_unmask(agents[i].unmask(request["alive"], request["dropped"]))
    plan = server.close_unmask()
    return unmask_range(plan, server.masked_sum), server
