"""StaleWhileRevalidate: the dashboard's expensive figures (gateway/api/cache.py)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.api.cache import StaleWhileRevalidate


async def test_a_fresh_value_is_served_a_stale_one_too_while_it_is_recomputed() -> None:
    calls: list[int] = []
    gate = asyncio.Event()

    async def compute() -> int:
        calls.append(len(calls))
        if len(calls) > 1:
            await gate.wait()
        return len(calls) * 10

    cache = StaleWhileRevalidate[int](max_age_s=0.05)
    assert await cache.get("day-1", compute) == (10, 0.0)
    value, _ = await cache.get("day-1", compute)
    assert (value, len(calls)) == (10, 1)  # fresh: not computed again
    await asyncio.sleep(0.06)
    value, age = await cache.get("day-1", compute)  # stale: served at once, refreshed behind
    assert value == 10
    assert age > 0.05
    await asyncio.sleep(0)
    assert len(calls) == 2
    value, _ = await cache.get("day-1", compute)  # one refresh at a time
    assert (value, len(calls)) == (10, 2)
    gate.set()
    await asyncio.sleep(0.01)
    assert (await cache.get("day-1", compute))[0] == 20


async def test_a_new_key_is_computed_at_once_and_a_failed_refresh_keeps_the_old_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = StaleWhileRevalidate[int](max_age_s=0.0)

    async def one() -> int:
        return 1

    async def broken() -> int:
        raise OSError("database went away")

    assert (await cache.get("day-1", one))[0] == 1
    assert (await cache.get("day-1", broken))[0] == 1  # stale, refresh fails behind
    await asyncio.sleep(0.01)
    assert "refreshing a cached figure failed" in caplog.text
    assert (await cache.get("day-1", one))[0] == 1

    async def two() -> int:
        return 2

    assert (await cache.get("day-2", two)) == (2, 0.0)
