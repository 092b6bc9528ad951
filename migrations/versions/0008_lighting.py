"""Lighting groups, schedules, overrides and dispatched steps.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "lighting_groups",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        # Members by road (every lamp on a pole of that road), or explicit members.
        sa.Column("road", sa.Text, nullable=True),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
    )
    op.create_table(
        "lighting_group_members",
        sa.Column(
            "group_id",
            sa.Text,
            sa.ForeignKey("lighting_groups.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("member_id", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint(
            "group_id", "kind", "member_id", name="lighting_group_members_pkey"
        ),
        sa.CheckConstraint("kind IN ('pole', 'device')", name="lighting_group_members_kind_check"),
    )
    op.create_table(
        "lighting_schedules",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "group_id",
            sa.Text,
            sa.ForeignKey("lighting_groups.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("definition", JSONB, nullable=False),
        sa.Column("valid_from", TS, nullable=False, server_default=NOW),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_by", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
    )
    op.create_index(
        "lighting_schedules_active_key",
        "lighting_schedules",
        ["group_id"],
        unique=True,
        postgresql_where=sa.text("active"),
    )
    op.create_table(
        "lighting_overrides",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "group_id",
            sa.Text,
            sa.ForeignKey("lighting_groups.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("level", sa.SmallInteger, nullable=False),
        sa.Column("starts_at", TS, nullable=False, server_default=NOW),
        sa.Column("until", TS, nullable=False),
        sa.Column("ended_early_at", TS, nullable=True),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("created_by", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("level BETWEEN 0 AND 100", name="lighting_overrides_level_check"),
        sa.CheckConstraint("until >= starts_at", name="lighting_overrides_until_check"),
    )
    op.create_index("lighting_overrides_group_idx", "lighting_overrides", ["group_id", "until"])
    # One row per step the dispatcher applied to a group, claimed (inserted) before
    # its commands go out; issued_at is set once they are submitted. A row left
    # with issued_at NULL by a crash is issued again at the next start.
    op.create_table(
        "lighting_dispatches",
        sa.Column(
            "group_id",
            sa.Text,
            sa.ForeignKey("lighting_groups.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("instant", TS, nullable=False),
        sa.Column("level", sa.SmallInteger, nullable=False),
        sa.Column("source", sa.Text, nullable=False, server_default="schedule"),
        sa.Column("dispatched_at", TS, nullable=False, server_default=NOW),
        sa.Column("issued_at", TS, nullable=True),
        sa.Column("commands", JSONB, nullable=True),
        sa.PrimaryKeyConstraint("group_id", "instant", name="lighting_dispatches_pkey"),
    )


def downgrade() -> None:
    for table in (
        "lighting_dispatches",
        "lighting_overrides",
        "lighting_schedules",
        "lighting_group_members",
        "lighting_groups",
    ):
        op.drop_table(table)
