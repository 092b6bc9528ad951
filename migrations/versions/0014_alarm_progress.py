"""Durable alarm evaluation: what the alarm engine has processed, pending protective actions.

- `device_events.seq`: the order events were committed in (the ingest writer is
  the only writer and commits one transaction at a time, so a sequence default
  numbers them in commit order). Rows older than this migration keep NULL: they
  were handled (or lost) before it and are never replayed.
- `alarm_progress`: one row, the last `seq` the alarm engine has fully processed;
  advanced in the transaction that records the alarms those events caused.
- `emergency_actions`: the protective commands an emergency requires, written in
  the emergency's transaction and issued by a retry loop until each succeeds or
  finally fails.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    # An explicit sequence rather than an identity column: it is added the same way
    # to a plain table and to a TimescaleDB hypertable, without rewriting old rows.
    op.execute("CREATE SEQUENCE device_events_seq AS bigint")
    op.execute("ALTER TABLE device_events ADD COLUMN seq bigint")
    op.execute(
        "ALTER TABLE device_events ALTER COLUMN seq SET DEFAULT nextval('device_events_seq')"
    )
    op.execute("ALTER SEQUENCE device_events_seq OWNED BY device_events.seq")
    op.create_index("device_events_seq_idx", "device_events", ["seq"])
    op.create_table(
        "alarm_progress",
        sa.Column("id", sa.Boolean, primary_key=True, server_default=sa.true()),
        sa.Column("events_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("id", name="alarm_progress_one_row"),
    )
    op.execute("INSERT INTO alarm_progress (id, events_seq) VALUES (true, 0)")
    op.create_table(
        "emergency_actions",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "emergency_id",
            sa.BigInteger,
            sa.ForeignKey("emergencies.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("args", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        # Who asked: "system (gateway)" or the user who opened the emergency.
        sa.Column("requested_by", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_at", TS, nullable=False, server_default=NOW),
        # The device command of the latest attempt (device_commands.id, no foreign
        # key: commands are kept and pruned on their own terms).
        sa.Column("command_id", UUID(as_uuid=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint(
            "state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')",
            name="emergency_actions_state_check",
        ),
        sa.CheckConstraint(
            "state <> 'running' OR command_id IS NOT NULL", name="emergency_actions_running"
        ),
    )
    op.create_index("emergency_actions_emergency_idx", "emergency_actions", ["emergency_id", "id"])
    op.create_index(
        "emergency_actions_open_idx",
        "emergency_actions",
        ["next_at"],
        postgresql_where=sa.text("state IN ('pending', 'running')"),
    )


def downgrade() -> None:
    op.drop_table("emergency_actions")
    op.drop_table("alarm_progress")
    op.drop_index("device_events_seq_idx", table_name="device_events")
    op.execute("ALTER TABLE device_events DROP COLUMN seq")  # drops the owned sequence
