"""Migrations run from empty, back to base and up again; TimescaleDB objects where available."""

from __future__ import annotations

import psycopg
import pytest

from gateway.adapters import migrate

TABLES = {
    "tenants",
    "poles",
    "devices",
    "telemetry",
    "device_events",
    "dead_letters",
    "pole_presence",
    "device_state",
    "device_commands",
}
VIEWS = {"telemetry_15m", "telemetry_1h"}


def relations(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return {r[0] for r in rows} - {"alembic_version"}


def has_timescale(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return (
            conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
            is not None
        )


def test_upgrade_downgrade_upgrade(fresh_database_url: str) -> None:
    migrate.upgrade(fresh_database_url)
    assert migrate.current(fresh_database_url) == migrate.head()
    assert relations(fresh_database_url) >= TABLES | VIEWS
    migrate.downgrade(fresh_database_url)
    assert migrate.current(fresh_database_url) is None
    assert relations(fresh_database_url) == set()
    migrate.upgrade(fresh_database_url)
    assert relations(fresh_database_url) >= TABLES | VIEWS


def test_rollup_views_answer_the_same_on_plain_postgresql(migrated_database_url: str) -> None:
    with psycopg.connect(migrated_database_url) as conn:
        conn.execute(
            "INSERT INTO telemetry (ts, device_id, metric, value) VALUES"
            " ('2026-11-22T10:01:00Z', 'm', 'port1_energy_kwh', 10.0),"
            " ('2026-11-22T10:14:00Z', 'm', 'port1_energy_kwh', 10.5),"
            " ('2026-11-22T10:16:00Z', 'm', 'port1_energy_kwh', 11.0)"
        )
        rows = conn.execute(
            "SELECT bucket, first, last, min, max, samples FROM telemetry_15m"
            " WHERE device_id = 'm' ORDER BY bucket"
        ).fetchall()
        conn.rollback()
    assert [(r[0].isoformat(), *r[1:]) for r in rows] == [
        ("2026-11-22T10:00:00+00:00", 10.0, 10.5, 10.0, 10.5, 2),
        ("2026-11-22T10:15:00+00:00", 11.0, 11.0, 11.0, 11.0, 1),
    ]


def test_timescale_objects(migrated_database_url: str) -> None:
    if not has_timescale(migrated_database_url):
        pytest.skip("the TimescaleDB extension is not installed in this PostgreSQL")
    with psycopg.connect(migrated_database_url) as conn:
        hypertables = {
            r[0]
            for r in conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")
        }
        caggs = {
            r[0]
            for r in conn.execute(
                "SELECT view_name FROM timescaledb_information.continuous_aggregates"
            )
        }
        jobs = {r[0] for r in conn.execute("SELECT proc_name FROM timescaledb_information.jobs")}
    assert {"telemetry", "device_events"} <= hypertables
    assert caggs == VIEWS
    assert {"policy_compression", "policy_retention", "policy_refresh_continuous_aggregate"} <= jobs
