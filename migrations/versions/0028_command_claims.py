"""Commands across replicas: which replica executes a command (`claimed_by`,
`claimed_at`), and an index on the unfinished ones, which every replica sweeps
for commands to claim and for commands left by a replica that died
(gateway/command_routing.py, docs/scaling.md).

Revision ID: 0028
Revises: 0026
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The replica id (its POLEGW_MQTT_CLIENT_ID) executing the command; NULL
    # while it waits for the replica that owns the device's Modbus bus.
    op.add_column("device_commands", sa.Column("claimed_by", sa.Text, nullable=True))
    op.add_column(
        "device_commands", sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        "device_commands_unfinished_idx",
        "device_commands",
        ["seq"],
        postgresql_where=sa.text("state IN ('pending', 'sent')"),
    )


def downgrade() -> None:
    op.drop_index("device_commands_unfinished_idx", table_name="device_commands")
    op.drop_column("device_commands", "claimed_at")
    op.drop_column("device_commands", "claimed_by")
