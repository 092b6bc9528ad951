"""Capped exponential back-off with jitter, for every reconnect and retry loop."""

from __future__ import annotations

import random


class Backoff:
    """Delays first, 2·first, 4·first … up to `cap`, each drawn from [delay/2, delay].

    The jitter keeps many clients that lost the same broker or database from
    coming back in lockstep.
    """

    def __init__(
        self, *, first: float = 0.5, cap: float = 30.0, rng: random.Random | None = None
    ) -> None:
        if first <= 0 or cap < first:
            raise ValueError("back-off needs 0 < first <= cap")
        self._first, self._cap, self._n = first, cap, 0
        self._rng = rng or random.Random()

    @property
    def failures(self) -> int:
        """Delays handed out since the last reset."""
        return self._n

    def reset(self) -> None:
        self._n = 0

    def next_delay(self) -> float:
        delay = min(self._cap, self._first * 2 ** min(self._n, 32))
        self._n += 1
        return self._rng.uniform(delay / 2, delay)
