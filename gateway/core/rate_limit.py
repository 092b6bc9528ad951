"""Token buckets: at most `rate_per_s` on average and `burst` at once, per key
(a pole's messages into the gateway; a user's expensive API requests). Pure: the
caller passes the monotonic time."""

from __future__ import annotations

__all__ = ["TokenBuckets"]


class TokenBuckets:
    """One bucket per key, created full; memory is bounded by dropping buckets
    that have refilled (a full bucket is the same as none)."""

    def __init__(self, rate_per_s: float, burst: int, *, max_keys: int = 10_000) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a rate limit needs rate_per_s > 0 and burst >= 1")
        self.rate = rate_per_s
        self.burst = float(burst)
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def take(self, key: str, now: float) -> bool:
        """Spend one token of `key`'s bucket; False (nothing spent) when it is empty."""
        tokens = self._tokens(key, now)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self._max_keys:
            self._forget_full(now)
        return True

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until `key` has a token again (0 when it has one now)."""
        return max(0.0, (1.0 - self._tokens(key, now)) / self.rate)

    def _forget_full(self, now: float) -> None:
        for key in [k for k in self._buckets if self._tokens(k, now) >= self.burst]:
            del self._buckets[key]
