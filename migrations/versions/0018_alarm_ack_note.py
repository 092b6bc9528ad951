"""Alarms keep the note their acknowledger wrote (the console asks for one).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("alarms", sa.Column("ack_note", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("alarms", "ack_note")
