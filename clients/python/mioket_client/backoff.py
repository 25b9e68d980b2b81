"""Full-jitter exponential backoff (AWS's "full jitter"), with an injectable random source."""

from __future__ import annotations

import random as _random
from typing import Callable


class Backoff:
    """Delays between reconnect attempts.

    Attempt ``n`` (0-based since the last reset) waits ``random() * min(maximum, initial * 2**n)``
    seconds: a uniform draw under a cap that doubles from ``initial`` (0.5 s) to ``maximum``
    (20 s). ``random`` must return floats in [0, 1) (tests pass their own).
    """

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 20.0,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("need 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self._random = random
        self.attempt = 0

    def cap(self, attempt: int) -> float:
        """The upper bound of the delay of attempt ``attempt``."""
        return min(self.maximum, self.initial * 2.0 ** min(attempt, 64))

    def next(self) -> float:
        """The delay before the next attempt; counts the attempt."""
        delay = self._random() * self.cap(self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Start again from ``initial`` (after a stable connection)."""
        self.attempt = 0
