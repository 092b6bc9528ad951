"""Emergencies, their timeline and links, emergency plans and drills.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
NOW = sa.text("now()")


TYPES = (
    "collision_tilt",
    "flooding",
    "leakage",
    "fire_smoke",
    "sos_call",
    "power_outage",
    "severe_weather",
)
TYPE_CHECK = "type IN (" + ", ".join(f"'{t}'" for t in TYPES) + ")"


def upgrade() -> None:
    op.create_table(
        "emergencies",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="open"),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        # Null for an emergency that is not one pole's (a large-area outage).
        sa.Column("pole_id", sa.Text, sa.ForeignKey("poles.id"), nullable=True),
        sa.Column("opened_by", sa.Text, nullable=False),
        sa.Column("opened_at", TS, nullable=False, server_default=NOW),
        sa.Column("resolved_at", TS, nullable=True),
        sa.Column("closed_at", TS, nullable=True),
        sa.Column("report", sa.Text, nullable=True),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint(TYPE_CHECK, name="emergencies_type_check"),
        sa.CheckConstraint(
            "state IN ('open', 'resolved', 'closed')", name="emergencies_state_check"
        ),
        sa.CheckConstraint(
            "state <> 'closed' OR report IS NOT NULL", name="emergencies_closed_report"
        ),
    )
    # One emergency of a type per pole until it is closed: a second SOS press
    # joins the open one.
    op.create_index(
        "emergencies_open_key",
        "emergencies",
        ["pole_id", "type"],
        unique=True,
        postgresql_where=sa.text("state <> 'closed' AND pole_id IS NOT NULL"),
    )
    op.create_index("emergencies_state_idx", "emergencies", ["state", "id"])
    op.create_table(
        "emergency_timeline",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "emergency_id",
            sa.BigInteger,
            sa.ForeignKey("emergencies.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", TS, nullable=False, server_default=NOW),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("author", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False, server_default=""),
        sa.Column("data", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.CheckConstraint(
            "kind IN ('raised', 'dispatched', 'action', 'note', 'resolved', 'closed')",
            name="emergency_timeline_kind_check",
        ),
    )
    op.create_index("emergency_timeline_idx", "emergency_timeline", ["emergency_id", "id"])
    op.create_table(
        "emergency_alarms",
        sa.Column(
            "emergency_id",
            sa.BigInteger,
            sa.ForeignKey("emergencies.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("alarm_id", sa.BigInteger, sa.ForeignKey("alarms.id"), primary_key=True),
    )
    op.create_index("emergency_alarms_alarm_idx", "emergency_alarms", ["alarm_id"])
    # Work orders by id only (no foreign key): the maintenance schema evolves apart.
    op.create_table(
        "emergency_work_orders",
        sa.Column(
            "emergency_id",
            sa.BigInteger,
            sa.ForeignKey("emergencies.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("work_order_id", sa.BigInteger, primary_key=True),
    )
    # Emergency plans (预案) and drill records, stored documents linked by type.
    op.create_table(
        "emergency_plans",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False, server_default="1"),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint(TYPE_CHECK, name="emergency_plans_type_check"),
    )
    op.create_index("emergency_plans_type_idx", "emergency_plans", ["type", "id"])
    op.create_table(
        "emergency_drills",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("plan_id", sa.BigInteger, sa.ForeignKey("emergency_plans.id"), nullable=True),
        sa.Column("held_at", TS, nullable=False),
        sa.Column("location", sa.Text, nullable=False, server_default=""),
        sa.Column("participants", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("report", sa.Text, nullable=False, server_default=""),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint(TYPE_CHECK, name="emergency_drills_type_check"),
    )
    op.create_index("emergency_drills_type_idx", "emergency_drills", ["type", "id"])


def downgrade() -> None:
    op.drop_table("emergency_drills")
    op.drop_table("emergency_plans")
    op.drop_table("emergency_work_orders")
    op.drop_table("emergency_alarms")
    op.drop_table("emergency_timeline")
    op.drop_table("emergencies")
