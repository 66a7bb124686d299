"""The public k-regular neighbour graph of SecAgg+ (Bell et al. 2020).

Clients sit on a ring in an order drawn from a public seed (SHA-256 of seed ‖ id), and each is
joined to its k/2 nearest clients on either side: a random Harary graph. Every client and the
server derive the same graph from the seed, so the server cannot choose a client's neighbours.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable


def neighbour_count(n_clients: int) -> int:
    """k = 2·⌈log2 n⌉ (even, O(log n)); n − 1, the full graph, when that is not smaller."""
    if n_clients <= 1:
        return 0
    k = 2 * (n_clients - 1).bit_length()  # 2·⌈log2 n⌉ in exact integer arithmetic
    return min(k, n_clients - 1)


def default_threshold(k: int) -> int:
    """t = ⌊k/2⌋ + 1: a strict majority of a client's neighbours must help to unmask it."""
    return max(1, min(k, k // 2 + 1))


def ring_order(ids: Iterable[int], seed: bytes) -> list[int]:
    """Client ids in ring order: sorted by SHA-256(seed ‖ u32 big-endian id)."""
    return sorted(ids, key=lambda i: hashlib.sha256(seed + struct.pack(">I", i)).digest())


def neighbours(ids: Iterable[int], seed: bytes, k: int) -> dict[int, frozenset[int]]:
    """Each client's k neighbours (k even, or n − 1 for the full graph)."""
    ring = ring_order(ids, seed)
    n = len(ring)
    if k >= n - 1:
        members = frozenset(ring)
        return {i: members - {i} for i in ring}
    if k % 2:
        raise ValueError("a sparse graph needs an even k")
    half = k // 2
    return {
        node: frozenset(ring[(pos + off) % n] for off in range(-half, half + 1) if off)
        for pos, node in enumerate(ring)
    }
