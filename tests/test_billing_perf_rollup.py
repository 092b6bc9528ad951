"""The ranged rollup read of migration 0015 (`telemetry_15m_between`): the same rows
as the `telemetry_15m` view for any window, and on plain PostgreSQL a read of
the window's raw rows only (an index condition on `ts`), not the whole history."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

T0 = datetime(2026, 11, 1, tzinfo=UTC)
COLUMNS = "bucket, first, first_ts, last, last_ts"


@pytest.fixture(scope="module")
def url(migrated_database_url: str) -> str:
    """Two counters: irregular readings over four days, some right on bucket
    bounds, some a microsecond either side; a second counter that must not leak in."""
    rnd = random.Random(7)
    rows = []
    value = 0.0
    t = T0 - timedelta(days=2)
    while t < T0 + timedelta(days=2):
        value += rnd.randint(0, 30) / 100
        rows.append((t, "m1", "port1_energy_kwh", value))
        rows.append((t, "m1", "port2_energy_kwh", value * 2))
        step = rnd.choice([60, 60, 300, 899, 900, 901, 1800, 7200])
        t += timedelta(seconds=step, microseconds=rnd.choice([0, 0, 1, -1]))
    for edge in (T0, T0 + timedelta(minutes=15) - timedelta(microseconds=1)):
        rows.append((edge, "m1", "port1_energy_kwh", value + 1))
        value += 1
    with psycopg.connect(migrated_database_url, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO telemetry (ts, device_id, metric, value) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                rows,
            )
        conn.execute("ANALYZE telemetry")
    return migrated_database_url


WINDOWS = [
    (T0, T0 + timedelta(days=1)),
    (T0 - timedelta(days=3), T0 + timedelta(days=3)),  # wider than the data
    (T0 + timedelta(minutes=7), T0 + timedelta(hours=5, minutes=3)),  # unaligned both ends
    (T0 + timedelta(minutes=15), T0 + timedelta(minutes=15)),  # empty
    (T0 - timedelta(microseconds=1), T0 + timedelta(minutes=15, microseconds=1)),
    (T0 + timedelta(days=9), T0 + timedelta(days=10)),  # no data
]


@pytest.mark.parametrize(("start", "end"), WINDOWS)
def test_between_gives_the_rows_of_the_view(url: str, start: datetime, end: datetime) -> None:
    with psycopg.connect(url) as conn:
        want = conn.execute(
            f"SELECT {COLUMNS} FROM telemetry_15m WHERE device_id = 'm1'"
            " AND metric = 'port1_energy_kwh' AND bucket >= %s AND bucket < %s ORDER BY bucket",
            (start, end),
        ).fetchall()
        got = conn.execute(
            f"SELECT {COLUMNS} FROM telemetry_15m_between('m1', 'port1_energy_kwh', %s, %s)"
            " ORDER BY bucket",
            (start, end),
        ).fetchall()
    assert got == want
    if start == T0 and end == T0 + timedelta(days=1):
        assert len(got) > 30  # the case is not vacuous


def test_between_reads_only_the_window_on_plain_postgresql(url: str) -> None:
    """The plan's index scan on telemetry is bounded by ts (not a filter on date_bin)."""
    with psycopg.connect(url) as conn:
        continuous = conn.execute(
            "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
        if continuous:
            pytest.skip("TimescaleDB: the function reads the continuous aggregate")
        body = conn.execute(
            "SELECT prosrc FROM pg_proc WHERE proname = 'telemetry_15m_between'"
        ).fetchone()
        assert body is not None
        # Plan the function's query with the window as constants.
        sql = (
            body[0]
            .replace("p_device", "'m1'")
            .replace("p_metric", "'port1_energy_kwh'")
            .replace("p_start", "TIMESTAMPTZ '2026-11-01 00:00+00'")
            .replace("p_end", "TIMESTAMPTZ '2026-11-02 00:00+00'")
        )
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql).fetchall())
    assert "Index Cond" in plan, plan
    cond = next(line for line in plan.splitlines() if "Index Cond" in line)
    assert "ts >=" in cond, plan
    assert "ts <" in cond, plan


def test_the_tenant_role_may_call_it_but_not_read_raw_telemetry(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("SET ROLE polegw_tenant")
        rows = conn.execute(
            "SELECT count(*) FROM telemetry_15m_between('m1', 'port1_energy_kwh', %s, %s)",
            (T0, T0 + timedelta(hours=1)),
        ).fetchone()
        assert rows is not None
        assert rows[0] > 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM telemetry")
