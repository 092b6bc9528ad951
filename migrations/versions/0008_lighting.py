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
    pass  # SCAFFOLD: filled in by the lighting work


def downgrade() -> None:
    pass  # SCAFFOLD
