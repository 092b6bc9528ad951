"""Registry (tenants, poles, devices) and telemetry, with TimescaleDB when available.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import logging
import os

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

TS = sa.DateTime(timezone=True)
ID = sa.Text(collation="C")
NOW = sa.text("now()")

# Rollup views (same names with and without TimescaleDB). `first`/`last` are the
# earliest and latest value in the bucket: for energy counters, the readings a
# billing delta is computed from; min/avg/max serve gauges.
ROLLUPS = {"telemetry_15m": "15 minutes", "telemetry_1h": "1 hour"}


def timescale_available() -> bool:
    """Whether to build the TimescaleDB objects: POLEGW_TIMESCALEDB=auto (default:
    when the extension is installed and preloaded), require, or off."""
    mode = os.environ.get("POLEGW_TIMESCALEDB", "auto").lower()
    if mode not in ("auto", "require", "off"):
        raise RuntimeError(f"POLEGW_TIMESCALEDB must be auto, require or off, not {mode!r}")
    if mode == "off":
        log.warning("POLEGW_TIMESCALEDB=off: telemetry on plain PostgreSQL")
        return False
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).first():
        log.info("TimescaleDB extension present: hypertables and continuous aggregates")
        return True
    available = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    ).first()
    # CREATE EXTENSION on a server that did not preload timescaledb ends the
    # session with FATAL, which no savepoint can catch: check first.
    preloaded = "timescaledb" in str(
        bind.execute(sa.text("SELECT current_setting('shared_preload_libraries')")).scalar()
    )
    why = None
    if not available:
        why = "the timescaledb extension is not installed on this server"
    elif not preloaded:
        why = "timescaledb is installed but not in shared_preload_libraries"
    else:
        try:
            with bind.begin_nested():
                bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
        except sa.exc.DBAPIError as exc:  # e.g. not allowed to create extensions
            why = f"CREATE EXTENSION timescaledb failed: {exc.orig}"
    if why is None:
        log.info("TimescaleDB enabled: hypertables and continuous aggregates")
        return True
    if mode == "require":
        raise RuntimeError(f"POLEGW_TIMESCALEDB=require, but {why}")
    log.warning(
        "%s: telemetry on plain PostgreSQL (same tables and views, no compression"
        " or retention policies)",
        why,
    )
    return False


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
    )
    op.create_table(
        "poles",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, server_default=""),
        sa.Column("road", sa.Text, nullable=False, server_default=""),
        sa.Column("lat", sa.Float, nullable=True),
        sa.Column("lon", sa.Float, nullable=True),
        sa.Column("height_m", sa.Float, nullable=True),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("pole_id", sa.Text, sa.ForeignKey("poles.id"), nullable=False),
        sa.Column("profile", sa.Text, nullable=False),
        sa.Column("transport", sa.Text, nullable=False),
        sa.Column("modbus", pg.JSONB, nullable=True),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("transport IN ('mqtt', 'modbus')", name="devices_transport_check"),
    )
    op.create_index("devices_pole_idx", "devices", ["pole_id", "id"])

    # Telemetry: one narrow row per reading. No foreign key on device_id: the
    # gateway only writes readings of registered devices, and a key check per
    # row would cost the hot path. Unique (device, metric, ts) makes storing a
    # reading twice a no-op. Ids compare bytewise (COLLATE "C"): they are ASCII
    # identifiers, and a locale collation made COPY 13% slower (measured on PG 15).
    op.create_table(
        "telemetry",
        sa.Column("ts", TS, nullable=False),
        sa.Column("device_id", ID, nullable=False),
        sa.Column("metric", ID, nullable=False),
        sa.Column("value", sa.Float(53), nullable=False),
        sa.Column("quality", sa.SmallInteger, nullable=False, server_default="0"),
    )
    op.create_index(
        "telemetry_reading_key", "telemetry", ["device_id", "metric", "ts"], unique=True
    )
    op.create_table(
        "device_events",
        sa.Column("ts", TS, nullable=False),
        sa.Column("pole_id", ID, nullable=False),
        sa.Column("device_id", ID, nullable=False),
        sa.Column("type", ID, nullable=False),
        sa.Column("data", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("received_at", TS, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("device_id", "type", "ts", name="device_events_pkey"),
    )
    op.create_index("device_events_pole_ts_idx", "device_events", ["pole_id", "ts"])
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        # sha256 of (topic, payload, reason, device, metric): a redelivered bad
        # message is kept once.
        sa.Column("key", sa.LargeBinary, nullable=False, unique=True),
        sa.Column("received_at", TS, nullable=False, server_default=NOW),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("pole_id", sa.Text, nullable=True),
        sa.Column("device_id", sa.Text, nullable=True),
        sa.Column("metric", sa.Text, nullable=True),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    op.create_index("dead_letters_received_idx", "dead_letters", ["received_at"])
    op.create_table(
        "pole_presence",
        sa.Column("pole_id", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("since", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
    )

    if timescale_available():
        _timescale_upgrade()
    else:
        _plain_views()


def _plain_views() -> None:
    for view, width in ROLLUPS.items():
        op.execute(
            f"""
            CREATE VIEW {view} AS
            SELECT date_bin(INTERVAL '{width}', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00')
                   AS bucket,
                   device_id, metric,
                   min(value) AS min, avg(value) AS avg, max(value) AS max,
                   (array_agg(value ORDER BY ts ASC))[1] AS first,
                   (array_agg(value ORDER BY ts DESC))[1] AS last,
                   min(ts) AS first_ts, max(ts) AS last_ts,
                   count(*) AS samples
            FROM telemetry GROUP BY 1, 2, 3
            """
        )


def _timescale_upgrade() -> None:
    op.execute(
        "SELECT create_hypertable('telemetry', 'ts', chunk_time_interval => INTERVAL '1 day')"
    )
    op.execute(
        "SELECT create_hypertable('device_events', 'ts', chunk_time_interval => INTERVAL '7 days')"
    )
    op.execute(
        "ALTER TABLE telemetry SET (timescaledb.compress,"
        " timescaledb.compress_segmentby = 'device_id, metric',"
        " timescaledb.compress_orderby = 'ts DESC')"
    )
    op.execute("SELECT add_compression_policy('telemetry', INTERVAL '7 days')")
    # Raw readings are kept 400 days (a year of bills plus a month to dispute);
    # the rollups are kept without limit. Change with remove/add_retention_policy.
    op.execute("SELECT add_retention_policy('telemetry', INTERVAL '400 days')")
    for view, width in ROLLUPS.items():
        op.execute(
            f"""
            CREATE MATERIALIZED VIEW {view} WITH (timescaledb.continuous) AS
            SELECT time_bucket(INTERVAL '{width}', ts) AS bucket,
                   device_id, metric,
                   min(value) AS min, avg(value) AS avg, max(value) AS max,
                   first(value, ts) AS first, last(value, ts) AS last,
                   min(ts) AS first_ts, max(ts) AS last_ts,
                   count(*) AS samples
            FROM telemetry GROUP BY 1, 2, 3
            WITH NO DATA
            """
        )
        op.execute(f"ALTER MATERIALIZED VIEW {view} SET (timescaledb.materialized_only = false)")
        # Refresh the last 35 days each time: readings a pole uploads after an
        # outage (or a spool drains) up to that late still reach the rollups.
        op.execute(
            f"SELECT add_continuous_aggregate_policy('{view}',"
            f" start_offset => INTERVAL '35 days', end_offset => INTERVAL '{width}',"
            f" schedule_interval => INTERVAL '{width}')"
        )


def downgrade() -> None:
    bind = op.get_bind()
    has_timescale = bind.execute(
        sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    ).first()
    for view in reversed(ROLLUPS):
        continuous = (
            has_timescale
            and bind.execute(
                sa.text(
                    "SELECT 1 FROM timescaledb_information.continuous_aggregates"
                    " WHERE view_name = :v"
                ),
                {"v": view},
            ).first()
        )
        op.execute(f"DROP {'MATERIALIZED VIEW' if continuous else 'VIEW'} IF EXISTS {view}")
    op.drop_table("pole_presence")
    op.drop_table("dead_letters")
    op.drop_table("device_events")
    op.drop_table("telemetry")
    op.drop_table("devices")
    op.drop_table("poles")
    op.drop_table("tenants")
