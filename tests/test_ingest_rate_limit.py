"""Per-pole rate limits in the gateway: one pole flooding cannot crowd out the
others; its excess is dead-lettered (reason rate_limited) and counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.core.rate_limit import TokenBuckets
from tests.support import (
    count,
    eventually,
    gateway,
    gateway_settings,
    prepare_database,
    publish,
    telemetry_message,
)


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    b = TokenBuckets(2.0, 3)
    assert [b.take("P1", 0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take("P2", 0.0)  # another key has its own bucket
    assert b.retry_after("P1", 0.0) == pytest.approx(0.5)
    assert not b.take("P1", 0.4)
    assert b.take("P1", 0.5)
    assert b.take("P1", 100.0)  # refilled, but never beyond the burst
    assert [b.take("P1", 100.0) for _ in range(3)] == [True, True, False]


def test_full_buckets_are_forgotten_beyond_the_bound() -> None:
    b = TokenBuckets(1.0, 1, max_keys=10)
    for i in range(50):
        assert b.take(f"P{i}", float(i * 10))
    assert len(b._buckets) <= 11
    with pytest.raises(ValueError, match="rate_per_s"):
        TokenBuckets(0, 1)


async def test_a_flooding_pole_is_limited_and_the_others_are_not(
    fresh_database_url: str, mqtt_url: str, topic_prefix: str
) -> None:
    await prepare_database(fresh_database_url)
    settings = gateway_settings(
        fresh_database_url, mqtt_url, topic_prefix, mqtt_pole_rate_per_s=0.01, mqtt_pole_burst=3
    )
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    flood = [
        (
            f"{topic_prefix}/P0001/telemetry",
            telemetry_message("P0001", t0 + timedelta(seconds=i), i),
        )
        for i in range(8)
    ]
    other = [(f"{topic_prefix}/P0002/telemetry", telemetry_message("P0002", t0, 100))]
    async with gateway(settings) as gw:
        publish(mqtt_url, flood + other)
        await eventually(
            lambda: (
                count(fresh_database_url, "SELECT count(*) FROM dead_letters") == 5
                and count(fresh_database_url, "SELECT count(*) FROM telemetry") == 4 * 8
            ),
            what="3 of P0001's messages and P0002's stored, 5 dead letters",
        )
        limited = count(
            fresh_database_url,
            "SELECT count(*) FROM dead_letters WHERE reason = 'rate_limited' AND pole_id = 'P0001'",
        )
        assert limited == 5
        stored_other = count(
            fresh_database_url,
            "SELECT count(*) FROM telemetry WHERE device_id LIKE 'P0002-%%'",
        )
        assert stored_other == 8
        got = gw.metrics.registry.get_sample_value(
            "polegw_dead_letters_total", {"reason": "rate_limited"}
        )
        assert got == 5
