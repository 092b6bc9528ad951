"""MQTT identities: each pole's (and each polegw service's) broker credential.

A secret is shown once when issued; only its Mosquitto `$7$` hash is kept, which
is what `polegw broker config` writes into the broker's password file.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mqtt_credentials",
        sa.Column("username", sa.Text, primary_key=True),
        # A pole's credential goes with the pole; a service's has no pole.
        sa.Column("pole_id", sa.Text, sa.ForeignKey("poles.id", ondelete="CASCADE"), nullable=True),
        sa.Column("service", sa.Text, nullable=True),
        sa.Column("password_hash", sa.Text, nullable=True),
        # SHA-256 of the DER certificate last issued by `polegw broker certs`.
        sa.Column("cert_sha256", sa.Text, nullable=True),
        sa.Column(
            "issued_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(pole_id IS NULL) <> (service IS NULL)", name="mqtt_credentials_pole_or_service"
        ),
        sa.CheckConstraint(
            "service IS NULL OR service IN ('gateway', 'simulators', 'monitor')",
            name="mqtt_credentials_service",
        ),
        sa.CheckConstraint(
            "pole_id IS NULL OR pole_id = username", name="mqtt_credentials_pole_username"
        ),
        sa.CheckConstraint(
            "password_hash IS NULL OR password_hash LIKE '$7$%'",
            name="mqtt_credentials_hash_format",
        ),
    )


def downgrade() -> None:
    op.drop_table("mqtt_credentials")
