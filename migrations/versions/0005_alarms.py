"""Alarm rules overrides and alarms.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    # Per-site overrides of the profiles' alarm rules, keyed "<profile>/<rule>".
    op.create_table(
        "alarm_rule_overrides",
        sa.Column("rule_key", sa.Text, primary_key=True),
        sa.Column("settings", JSONB, nullable=False),
        sa.Column("updated_by", sa.Text, nullable=False),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
    )
    op.create_table(
        "alarms",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("rule_key", sa.Text, nullable=False),
        sa.Column("fault", sa.Text, nullable=False),
        sa.Column("severity", sa.Text, nullable=False),
        sa.Column("pole_id", sa.Text, nullable=False),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("metric", sa.Text, nullable=True),
        sa.Column("state", sa.Text, nullable=False, server_default="active"),
        sa.Column("first_seen", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
        sa.Column("count", sa.Integer, nullable=False, server_default="1"),
        sa.Column("value", sa.Float(53), nullable=True),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
        sa.Column("acknowledged_by", sa.Text, nullable=True),
        sa.Column("acknowledged_at", TS, nullable=True),
        sa.Column("cleared_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint(
            "state IN ('active', 'acknowledged', 'cleared')", name="alarms_state_check"
        ),
        sa.CheckConstraint(
            "severity IN ('critical', 'major', 'minor', 'warning')", name="alarms_severity_check"
        ),
        sa.CheckConstraint("(state = 'cleared') = (cleared_at IS NOT NULL)", name="alarms_cleared"),
    )
    # One alarm not yet cleared per (rule, device): a repeat updates it.
    op.create_index(
        "alarms_open_key",
        "alarms",
        ["rule_key", "device_id"],
        unique=True,
        postgresql_where=sa.text("state <> 'cleared'"),
    )
    op.create_index("alarms_pole_idx", "alarms", ["pole_id", "id"])
    op.create_index("alarms_device_idx", "alarms", ["device_id", "id"])
    op.create_index(
        "alarms_open_idx", "alarms", ["id"], postgresql_where=sa.text("state <> 'cleared'")
    )


def downgrade() -> None:
    op.drop_table("alarms")
    op.drop_table("alarm_rule_overrides")
