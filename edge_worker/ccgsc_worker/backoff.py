"""Reconnect back-off: 0.5 s doubling up to 30 s, with jitter (pure; the randomness is injected)."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Reconnect delays: 0.5 s doubling up to 30 s, each drawn uniformly from [d/2, d]."""

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng

    def nominal(self) -> float:
        """The un-jittered delay of the next attempt, in seconds."""
        return min(self.maximum, self.initial * 2 ** min(self.attempt, 32))

    def next_delay(self) -> float:
        """Return the delay before the next attempt in seconds, and advance."""
        nominal = self.nominal()
        self.attempt += 1
        return nominal / 2 + nominal / 2 * self._rng()

    def reset(self) -> None:
        """Start again from the initial delay (after a successful welcome)."""
        self.attempt = 0
