"""A figure that is expensive to compute and may be a little old: served from the
last computation while a fresh one is made in the background."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class StaleWhileRevalidate(Generic[T]):
    """The value for a key, computed at most every `max_age_s`: a request within
    that time gets the stored value; a later one gets it too (at once) and starts
    one background recomputation; a new key (a new day, say) is computed while the
    caller waits. A failed background computation keeps the old value."""

    max_age_s: float
    _key: Hashable = None
    _value: T | None = None
    _at: float = 0.0
    _refresh: asyncio.Task[None] | None = field(default=None, repr=False)

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> tuple[T, float]:
        """The value and its age in seconds."""
        now = time.monotonic()
        if self._value is None or key != self._key:
            value = await compute()
            self._key, self._value, self._at = key, value, time.monotonic()
            return value, 0.0
        if now - self._at > self.max_age_s and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.create_task(self._recompute(key, compute), name="cache-refresh")
        return self._value, now - self._at

    async def _recompute(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> None:
        try:
            value = await compute()
        except Exception as exc:  # noqa: BLE001 - a background refresh keeps the old value
            log.warning("refreshing a cached figure failed (the old one stays): %s", exc)
            return
        if key == self._key:
            self._value, self._at = value, time.monotonic()
