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


def upgrade() -> None:
    pass  # SCAFFOLD: filled in by the emergencies work


def downgrade() -> None:
    pass  # SCAFFOLD
