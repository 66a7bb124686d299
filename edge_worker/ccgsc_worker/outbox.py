"""Result frames kept until the server acknowledges them, and re-sent after every reconnect."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

OUTBOX_LIMIT = 256


class Outbox:
    """Result frames kept until the server acknowledges them, in completion order.

    Memory only: a result survives a lost connection, not a restart of the process (the server
    reissues a replica whose lease expires). Over ``limit`` the oldest frames are given up.
    """

    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self.limit = limit
        self._frames: OrderedDict[str, bytes] = OrderedDict()

    def put(self, assignment: str, frame: bytes) -> list[str]:
        """Keep a frame; return the ids of the oldest frames dropped to stay within the limit."""
        self._frames[assignment] = frame
        self._frames.move_to_end(assignment)
        dropped = []
        while len(self._frames) > self.limit:
            dropped.append(self._frames.popitem(last=False)[0])
        return dropped

    def ack(self, assignment: str) -> bool:
        """Forget an acknowledged frame; False when it was not (or no longer) held."""
        return self._frames.pop(assignment, None) is not None

    def get(self, assignment: str) -> bytes | None:
        """The frame held for an assignment, if any."""
        return self._frames.get(assignment)

    def frames(self) -> list[tuple[str, bytes]]:
        """Every unacknowledged frame, oldest first."""
        return list(self._frames.items())

    def __len__(self) -> int:
        return len(self._frames)

    def __contains__(self, assignment: object) -> bool:
        return assignment in self._frames

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._frames))
