"""Maintenance: work orders, attachments, inspection plans and records.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
NOW = sa.text("now()")
USER = sa.BigInteger


def upgrade() -> None:
    op.create_table(
        "inspection_plans",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        # Which poles: an explicit list, or every pole on a road (exactly one).
        sa.Column("pole_ids", ARRAY(sa.Text), nullable=True),
        sa.Column("road", sa.Text, nullable=True),
        sa.Column("every_days", sa.Integer, nullable=False),
        sa.Column("starts_on", sa.Date, nullable=False),
        sa.Column("checklist", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("priority", sa.Text, nullable=False, server_default="general"),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        # Index of the newest period an order was generated for (see core.maintenance).
        sa.Column("last_period", sa.Integer, nullable=True),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("every_days >= 1", name="inspection_plans_every"),
        sa.CheckConstraint("(pole_ids IS NULL) <> (road IS NULL)", name="inspection_plans_scope"),
    )
    op.create_table(
        "work_orders",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("kind", sa.Text, nullable=False, server_default="repair"),
        sa.Column("source", sa.Text, nullable=False, server_default="manual"),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        # NULL only for inspection orders, which cover their plan's poles.
        sa.Column("pole_id", sa.Text, sa.ForeignKey("poles.id"), nullable=True),
        sa.Column("device_id", sa.Text, nullable=True),
        # The alarm that opened it (migration 0005 creates alarms).
        sa.Column(
            "alarm_id",
            sa.BigInteger,
            sa.ForeignKey("alarms.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("fault", sa.Text, nullable=True),
        sa.Column("plan_id", sa.BigInteger, sa.ForeignKey("inspection_plans.id"), nullable=True),
        sa.Column("period", sa.Integer, nullable=True),
        sa.Column("priority", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="open"),
        sa.Column("assignee", USER, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("created_by", USER, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("response_due", TS, nullable=True),
        sa.Column("resolution_due", TS, nullable=True),
        sa.Column("assigned_at", TS, nullable=True),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("resolved_at", TS, nullable=True),
        sa.Column("closed_at", TS, nullable=True),
        sa.Column("resolution", sa.Text, nullable=True),
        sa.Column("spare_parts", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("kind IN ('repair', 'inspection')", name="work_orders_kind"),
        sa.CheckConstraint("source IN ('manual', 'alarm', 'schedule')", name="work_orders_source"),
        sa.CheckConstraint(
            "priority IN ('urgent', 'serious', 'general', 'single_lamp_out')",
            name="work_orders_priority",
        ),
        sa.CheckConstraint(
            "state IN ('open', 'assigned', 'in_progress', 'resolved', 'closed', 'cancelled')",
            name="work_orders_state",
        ),
        sa.CheckConstraint("kind = 'inspection' OR pole_id IS NOT NULL", name="work_orders_pole"),
        sa.CheckConstraint(
            "(kind = 'inspection') = (plan_id IS NOT NULL AND period IS NOT NULL)",
            name="work_orders_plan",
        ),
        sa.CheckConstraint(
            "state = 'open' OR assignee IS NOT NULL OR state = 'cancelled'",
            name="work_orders_assignee",
        ),
    )
    # One unfinished order per pole and fault: repeated alarms never open two.
    op.create_index(
        "work_orders_one_per_fault",
        "work_orders",
        ["pole_id", "fault"],
        unique=True,
        postgresql_where=sa.text("fault IS NOT NULL AND state NOT IN ('closed', 'cancelled')"),
    )
    # One inspection order per plan and period, whatever restarts in between.
    op.create_index("work_orders_plan_period", "work_orders", ["plan_id", "period"], unique=True)
    op.create_index("work_orders_state_idx", "work_orders", ["state", "id"])
    op.create_index("work_orders_pole_idx", "work_orders", ["pole_id", "id"])
    op.create_index("work_orders_assignee_idx", "work_orders", ["assignee", "id"])
    op.create_table(
        "work_order_notes",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "work_order_id",
            sa.BigInteger,
            sa.ForeignKey("work_orders.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", TS, nullable=False, server_default=NOW),
        sa.Column("author", USER, sa.ForeignKey("users.id"), nullable=True),  # NULL: the system
        sa.Column("kind", sa.Text, nullable=False, server_default="note"),
        sa.Column("text", sa.Text, nullable=False, server_default=""),
        sa.Column("from_state", sa.Text, nullable=True),
        sa.Column("to_state", sa.Text, nullable=True),
        sa.Column("alarm_id", sa.BigInteger, nullable=True),
        sa.CheckConstraint("kind IN ('note', 'transition', 'alarm')", name="work_order_notes_kind"),
    )
    op.create_index("work_order_notes_order", "work_order_notes", ["work_order_id", "id"])
    op.create_table(
        "work_order_attachments",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "work_order_id",
            sa.BigInteger,
            sa.ForeignKey("work_orders.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("content_type", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("sha256", sa.LargeBinary, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("uploaded_by", USER, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint(
            "content_type IN ('image/jpeg', 'image/png', 'image/gif', 'image/webp',"
            " 'application/pdf')",
            name="work_order_attachments_type",
        ),
    )
    op.create_index(
        "work_order_attachments_order", "work_order_attachments", ["work_order_id", "id"]
    )
    op.create_table(
        "inspection_records",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("plan_id", sa.BigInteger, sa.ForeignKey("inspection_plans.id"), nullable=False),
        sa.Column("work_order_id", sa.BigInteger, sa.ForeignKey("work_orders.id"), nullable=False),
        sa.Column("pole_id", sa.Text, sa.ForeignKey("poles.id"), nullable=False),
        sa.Column("results", JSONB, nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("by", USER, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("at", TS, nullable=False, server_default=NOW),
        sa.UniqueConstraint("work_order_id", "pole_id", name="inspection_records_once"),
    )
    op.create_index("inspection_records_pole", "inspection_records", ["pole_id", "id"])


def downgrade() -> None:
    op.drop_table("inspection_records")
    op.drop_table("work_order_attachments")
    op.drop_table("work_order_notes")
    op.drop_table("work_orders")
    op.drop_table("inspection_plans")
