"""Secure aggregation (SecAgg+): pure numerics and cryptography, never Django.

primitives: X25519, HKDF, AES-CTR masks, AES-GCM, Shamir; encoding: fixed point in Z_2^32;
graph: the public neighbour graph; protocol: client and server state machines. The client side
and the shared maths live in the edge worker's package (``ccgsc_worker.secagg``), which cannot
import ``jobs``; this package re-exports them, so there is one implementation.
"""

from ccgsc_worker.secagg.encoding import decode_sum, encode, scale_for
from ccgsc_worker.secagg.graph import default_threshold, neighbour_count, neighbours
from jobs.secagg.protocol import (
    RequestRefused,
    RoundAborted,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    UnmaskPlan,
    unmask_range,
)

__all__ = [
    "RequestRefused",
    "RoundAborted",
    "RoundConfig",
    "SecAggClient",
    "SecAggServer",
    "UnmaskPlan",
    "decode_sum",
    "default_threshold",
    "encode",
    "neighbour_count",
    "neighbours",
    "scale_for",
    "unmask_range",
]
