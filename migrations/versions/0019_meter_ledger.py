"""The meter-data ledger: a port's metered energy as pieces of 15-minute slots,
kept continuously by the metering worker (gateway/metering_worker.py).

- `meter_ledger`: one row per piece (a metered interval's part inside one
  15-minute slot): kWh, the estimate where the gap rule would estimate it,
  excess above the rating, flags (a bit set, gateway/core/ledger.py).
- `meter_ledger_changes`: every change to a piece the ledger had already
  counted as complete: old and new kWh, why, when.
- `meter_ports`: each port's watermark, the newest reading metered, written in
  the same transaction as the pieces.
- `meter_queue`: which counters have new, late, changed or deleted readings
  (filled by triggers on `telemetry`, so every writer is seen: the gateway's
  COPY, the spool's drain, a hand-made INSERT); the worker empties it.
- `meter_held`: readings held out of metering (clock-suspect, quality <> 0).
- Bills: `provisional` (a month that had not ended), and lines of kind
  `adjustment` that carry a correction of an issued bill into a later one
  (`corrects_bill_id`).

With TimescaleDB the ledger is a hypertable (chunks of 7 days).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
NOW = sa.text("now()")
ENERGY = r"port%\_energy\_kwh"

QUEUE_FUNCTION = """
CREATE FUNCTION meter_queue_reading() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Retention's deletes of old readings are no corrections (gateway/retention.py).
    IF current_setting('polegw.meter_queue', true) = 'off' THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO meter_queue (device_id, metric, ts) VALUES (OLD.device_id, OLD.metric, OLD.ts);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO meter_queue (device_id, metric, ts) VALUES (NEW.device_id, NEW.metric, NEW.ts);
    END IF;
    RETURN NULL;
END
$$;
"""

LINE_KINDS_OLD = "kind IN ('energy', 'rent', 'maintenance', 'credit', 'correction')"
LINE_KINDS = "kind IN ('energy', 'rent', 'maintenance', 'credit', 'correction', 'adjustment')"


def _timescale() -> bool:
    bind = op.get_bind()
    return bool(
        bind.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).first()
    )


def upgrade() -> None:
    op.create_table(
        "meter_ledger",
        sa.Column("port_id", sa.Text, nullable=False),
        sa.Column("start", TS, nullable=False),
        sa.Column("end", TS, nullable=False),
        sa.Column("iv_start", TS, nullable=False),
        sa.Column("iv_end", TS, nullable=False),
        sa.Column("kwh", sa.Numeric, nullable=False),
        sa.Column("est_kwh", sa.Numeric, nullable=True),
        sa.Column("excess_kwh", sa.Numeric, nullable=False, server_default="0"),
        sa.Column("flags", sa.SmallInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("port_id", "start", name="meter_ledger_pkey"),
        sa.CheckConstraint('start < "end" AND kwh >= 0', name="meter_ledger_piece"),
    )
    # Flagged or estimable pieces are few: what /usage lists and bills report.
    op.execute(
        "CREATE INDEX meter_ledger_flagged_idx ON meter_ledger (port_id, start)"
        " WHERE flags <> 0 OR est_kwh IS NOT NULL"
    )
    # The pieces summed by slot (written with them): what a bill or /usage sums
    # for the slots that lie whole in a lease's span and a tariff's period.
    op.create_table(
        "meter_slots",
        sa.Column("port_id", sa.Text, nullable=False),
        sa.Column("slot", TS, nullable=False),
        sa.Column("kwh", sa.Numeric, nullable=False),  # pieces without an estimate
        sa.Column("gap_kwh", sa.Numeric, nullable=False),  # pieces with one: measured
        sa.Column("est_kwh", sa.Numeric, nullable=False),  # ... and estimated
        sa.Column("flags", sa.SmallInteger, nullable=False),  # of kWh > 0, no estimate
        sa.Column("gap_flags", sa.SmallInteger, nullable=False),  # measured kWh > 0
        sa.Column("est_flags", sa.SmallInteger, nullable=False),  # estimated kWh > 0
        sa.PrimaryKeyConstraint("port_id", "slot", name="meter_slots_pkey"),
    )
    if _timescale():
        for table in ("meter_ledger", "meter_slots"):
            column = "start" if table == "meter_ledger" else "slot"
            op.execute(
                f"SELECT create_hypertable('{table}', '{column}',"
                " chunk_time_interval => INTERVAL '7 days')"
            )
    op.create_table(
        "meter_ledger_changes",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("port_id", sa.Text, nullable=False),
        sa.Column("start", TS, nullable=False),
        sa.Column("end", TS, nullable=False),
        sa.Column("old_kwh", sa.Numeric, nullable=True),
        sa.Column("new_kwh", sa.Numeric, nullable=True),
        sa.Column("old_flags", sa.SmallInteger, nullable=True),
        sa.Column("new_flags", sa.SmallInteger, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("changed_at", TS, nullable=False, server_default=NOW),
    )
    op.create_index("meter_ledger_changes_port_idx", "meter_ledger_changes", ["port_id", "start"])
    op.create_index("meter_ledger_changes_at_idx", "meter_ledger_changes", ["changed_at"])
    op.create_table(
        "meter_ports",
        sa.Column("port_id", sa.Text, sa.ForeignKey("ports.id"), primary_key=True),
        sa.Column("metered_to", TS, nullable=True),
        sa.Column("metered_at", TS, nullable=False, server_default=NOW),
    )
    op.create_table(
        "meter_queue",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("queued_at", TS, nullable=False, server_default=NOW),
    )
    op.create_table(
        "meter_held",
        sa.Column("port_id", sa.Text, nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("value", sa.Float(53), nullable=False),
        sa.Column("quality", sa.SmallInteger, nullable=False),
        sa.Column("seen_at", TS, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("port_id", "ts", name="meter_held_pkey"),
    )
    op.create_index("meter_held_seen_idx", "meter_held", ["port_id", "seen_at"])
    op.execute(QUEUE_FUNCTION)
    for event, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
        op.execute(
            f"CREATE TRIGGER telemetry_meter_{event.lower()} AFTER {event} ON telemetry"
            f" FOR EACH ROW WHEN ({row}.metric LIKE '{ENERGY}')"
            " EXECUTE FUNCTION meter_queue_reading()"
        )
    # Every port metered so far is metered again from its first reading.
    op.execute(
        "INSERT INTO meter_queue (device_id, metric, ts, reason)"
        " SELECT p.meter_device_id, 'port' || p.port_no || '_energy_kwh',"
        " TIMESTAMPTZ '2000-01-01 00:00:00+00', 'rebuild' FROM ports p"
    )
    # A tenant's /usage reads the ledger as the 15-minute rollup before it: the
    # operator's per-port data, filtered to the tenant's ports by the route.
    for table in ("meter_ledger", "meter_slots", "meter_held"):
        op.execute(f"GRANT SELECT ON {table} TO polegw_tenant")

    op.add_column(
        "bills", sa.Column("provisional", sa.Boolean, nullable=False, server_default=sa.false())
    )
    op.add_column(
        "bill_lines",
        sa.Column("corrects_bill_id", sa.BigInteger, sa.ForeignKey("bills.id"), nullable=True),
    )
    op.drop_constraint("bill_lines_kind", "bill_lines", type_="check")
    op.create_check_constraint("bill_lines_kind", "bill_lines", LINE_KINDS)
    op.create_check_constraint(
        "bill_lines_adjustment",
        "bill_lines",
        "(kind = 'adjustment') = (corrects_bill_id IS NOT NULL)",
    )


def downgrade() -> None:
    op.drop_constraint("bill_lines_adjustment", "bill_lines", type_="check")
    op.execute("DELETE FROM bill_lines WHERE kind = 'adjustment'")
    op.drop_constraint("bill_lines_kind", "bill_lines", type_="check")
    op.create_check_constraint("bill_lines_kind", "bill_lines", LINE_KINDS_OLD)
    op.drop_column("bill_lines", "corrects_bill_id")
    op.drop_column("bills", "provisional")
    for event in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS telemetry_meter_{event} ON telemetry")
    op.execute("DROP FUNCTION IF EXISTS meter_queue_reading()")
    for table in (
        "meter_held",
        "meter_queue",
        "meter_ports",
        "meter_ledger_changes",
        "meter_slots",
    ):
        op.drop_table(table)
    op.drop_table("meter_ledger")
