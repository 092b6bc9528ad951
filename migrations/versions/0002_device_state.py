"""Device state (online/offline and since when) and tracked device commands.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Written only when a device's state changes, so one row per device.
    op.create_table(
        "device_state",
        sa.Column("device_id", sa.Text(collation="C"), primary_key=True),
        sa.Column("online", sa.Boolean, nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
    )

    # Every command sent to a device, with its outcome. `seq` orders and pages.
    op.create_table(
        "device_commands",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, unique=True),
        sa.Column("device_id", sa.Text(collation="C"), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("args", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("result", JSONB, nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'sent', 'succeeded', 'failed', 'timed_out')",
            name="device_commands_state_check",
        ),
    )
    op.create_index("device_commands_device_idx", "device_commands", ["device_id", "seq"])


def downgrade() -> None:
    op.drop_table("device_commands")
    op.drop_table("device_state")
