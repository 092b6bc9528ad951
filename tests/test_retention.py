"""Retention: batched deletes of old raw readings on plain PostgreSQL; policies on TimescaleDB."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import pytest

from gateway.config import Settings
from gateway.retention import Retention
from tests.support import count


def has_timescale(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return (
            conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
            is not None
        )


def seed(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE telemetry")
        conn.execute(
            "INSERT INTO telemetry (ts, device_id, metric, value)"
            " SELECT now() - make_interval(days => d) - make_interval(secs => s), 'm', 'x', d"
            " FROM generate_series(0, 20) d, generate_series(1, 50) s"
        )


def test_settings_defaults() -> None:
    s = Settings()
    assert (s.retention_raw_days, s.retention_rollup_days) == (400, 1100)
    with pytest.raises(ValueError, match="retention_rollup_days"):
        Settings(retention_rollup_days=10)


async def test_sweep_deletes_old_readings_in_batches(migrated_database_url: str) -> None:
    url = migrated_database_url
    if has_timescale(url):
        pytest.skip("TimescaleDB: retention is a policy, not a sweep")
    seed(url)
    retention = Retention(url, raw_days=10, rollup_days=400, batch=7)
    assert not await retention.timescale()
    deleted = await retention.sweep()
    # Days 10..20 are older than 10 days (day 10 by its seconds past the boundary).
    assert deleted == 11 * 50
    assert count(url, "SELECT count(*) FROM telemetry") == 10 * 50
    assert count(url, "SELECT count(*) FROM telemetry WHERE ts < now() - interval '10 days'") == 0
    assert await retention.sweep() == 0


async def test_run_sweeps_until_stopped(migrated_database_url: str) -> None:
    url = migrated_database_url
    if has_timescale(url):
        pytest.skip("TimescaleDB: retention is a policy, not a sweep")
    seed(url)
    stop = asyncio.Event()
    task = asyncio.create_task(Retention(url, raw_days=5, rollup_days=400, every_s=0.05).run(stop))
    deadline = asyncio.get_running_loop().time() + 10
    while count(url, "SELECT count(*) FROM telemetry") != 5 * 50:
        assert asyncio.get_running_loop().time() < deadline, "the sweep did not run"
        await asyncio.sleep(0.05)
    stop.set()
    async with asyncio.timeout(5):
        await task


async def test_database_down_is_not_fatal() -> None:
    stop = asyncio.Event()
    retention = Retention(
        "postgresql://postgres@127.0.0.1:1/none", raw_days=5, rollup_days=400, every_s=0.05
    )
    task = asyncio.create_task(retention.run(stop))
    await asyncio.sleep(0.3)
    assert not task.done()
    stop.set()
    async with asyncio.timeout(5):
        await task


async def test_timescale_policies(migrated_database_url: str) -> None:
    url = migrated_database_url
    if not has_timescale(url):
        pytest.skip("the timescaledb extension is not installed on the test server")
    retention = Retention(url, raw_days=30, rollup_days=500)
    assert await retention.timescale()
    await retention.apply_policies()
    await retention.apply_policies()  # idempotent
    with psycopg.connect(url) as conn:
        policies: dict[str, str] = dict(
            conn.execute(
                "SELECT hypertable_name, config ->> 'drop_after' FROM timescaledb_information.jobs"
                " WHERE proc_name = 'policy_retention'"
            ).fetchall()
        )
    assert policies["telemetry"] in ("30 days", str(timedelta(days=30)))
    assert len(policies) == 3
