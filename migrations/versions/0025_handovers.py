"""Handovers: the cut-over of each change of operator (运行单位变更) this
installation took part in, so that billing stops at an export's cut-over and
starts at an import's (docs/decisions.md, "Change of operator").

Revision ID: 0025
Revises: 0020
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "handovers",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("direction", sa.Text, nullable=False),
        sa.Column("cutover", sa.DateTime(timezone=True), nullable=False),
        sa.Column("package_sha256", sa.Text, nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("direction IN ('export', 'import')", name="handovers_direction"),
    )
    # A tenant's usage and bills are cut at the cut-overs too (the role of 0013);
    # the table says nothing about any tenant.
    op.execute("GRANT SELECT ON handovers TO polegw_tenant")


def downgrade() -> None:
    op.drop_table("handovers")
