"""Mounting capacity: pole budgets, slots, cabinet compartments, tenant power ports;
leases get their slot, compartment, port, dates and a state history.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    # The pole's own structural and electrical budget (null: not declared).
    op.add_column("poles", sa.Column("max_load_kg", sa.Float, nullable=True))
    op.add_column("poles", sa.Column("max_wind_area_m2", sa.Float, nullable=True))
    op.add_column("poles", sa.Column("power_budget_w", sa.Float, nullable=True))

    # A mounting position on a pole: a height range with its own limits.
    op.create_table(
        "slots",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("pole_id", sa.Text, sa.ForeignKey("poles.id"), nullable=False),
        sa.Column("position", sa.Text, nullable=False),  # e.g. "top", "arm-east", "mid"
        sa.Column("slot_type", sa.Text, nullable=False, server_default="standard"),
        sa.Column("height_min_m", sa.Float, nullable=True),
        sa.Column("height_max_m", sa.Float, nullable=True),
        sa.Column("max_load_kg", sa.Float, nullable=False),
        sa.Column("max_wind_area_m2", sa.Float, nullable=False),
        sa.Column("max_power_w", sa.Float, nullable=False),
        sa.Column("supply", sa.Text, nullable=False, server_default="AC"),  # AC | DC
        sa.Column("voltage_v", sa.Float, nullable=True),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("supply IN ('AC', 'DC')", name="slots_supply"),
        sa.UniqueConstraint("pole_id", "position", name="slots_pole_position"),
    )
    # Space in the pole's cabinet, in rack units (or positions).
    op.create_table(
        "compartments",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("pole_id", sa.Text, sa.ForeignKey("poles.id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("units", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("units >= 1", name="compartments_units"),
    )
    # A tenant power port: which meter channel measures it and how it is switched.
    op.create_table(
        "ports",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("pole_id", sa.Text, sa.ForeignKey("poles.id"), nullable=False),
        sa.Column("meter_device_id", sa.Text, sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("port_no", sa.Integer, nullable=False),  # channel n: metric port{n}_energy_kwh
        sa.Column("rated_w", sa.Float, nullable=False),
        sa.Column("supply", sa.Text, nullable=False, server_default="AC"),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("port_no >= 1", name="ports_port_no"),
        sa.CheckConstraint("rated_w > 0", name="ports_rated_w"),
        sa.UniqueConstraint("meter_device_id", "port_no", name="ports_meter_channel"),
    )

    # Leases (created in 0003 with tenant, pole and state) get what they occupy.
    op.add_column("leases", sa.Column("application_id", sa.BigInteger, nullable=True))
    op.add_column("leases", sa.Column("slot_id", sa.Text, sa.ForeignKey("slots.id"), nullable=True))
    op.add_column(
        "leases",
        sa.Column("compartment_id", sa.Text, sa.ForeignKey("compartments.id"), nullable=True),
    )
    op.add_column("leases", sa.Column("port_id", sa.Text, sa.ForeignKey("ports.id"), nullable=True))
    # What the lease takes from the slot's and the pole's budgets.
    op.add_column("leases", sa.Column("load_kg", sa.Float, nullable=False, server_default="0"))
    op.add_column("leases", sa.Column("wind_area_m2", sa.Float, nullable=False, server_default="0"))
    op.add_column("leases", sa.Column("power_w", sa.Float, nullable=False, server_default="0"))
    op.add_column(
        "leases", sa.Column("cabinet_units", sa.Integer, nullable=False, server_default="0")
    )
    op.add_column("leases", sa.Column("starts_on", sa.Date, nullable=True))
    op.add_column("leases", sa.Column("ends_on", sa.Date, nullable=True))
    op.add_column("leases", sa.Column("rates", JSONB, nullable=True))
    # Every state a lease has been in, and since when: usage and rent are
    # attributed to the lease that was in service on the port at the time.
    op.create_table(
        "lease_history",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("lease_id", sa.BigInteger, sa.ForeignKey("leases.id"), nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("since", TS, nullable=False, server_default=NOW),
        sa.Column("by", sa.Text, nullable=False, server_default="system"),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_index("lease_history_lease", "lease_history", ["lease_id", "since"])
    # A port carries at most one lease at a time that is not ended.
    op.create_index(
        "leases_one_per_port",
        "leases",
        ["port_id"],
        unique=True,
        postgresql_where=sa.text("port_id IS NOT NULL AND state NOT IN ('terminated', 'removed')"),
    )
    op.create_index(
        "leases_one_per_slot",
        "leases",
        ["slot_id"],
        unique=True,
        postgresql_where=sa.text("slot_id IS NOT NULL AND state NOT IN ('terminated', 'removed')"),
    )


def downgrade() -> None:
    op.drop_index("leases_one_per_slot", "leases")
    op.drop_index("leases_one_per_port", "leases")
    op.drop_table("lease_history")
    for column in (
        "rates",
        "ends_on",
        "starts_on",
        "cabinet_units",
        "power_w",
        "wind_area_m2",
        "load_kg",
        "port_id",
        "compartment_id",
        "slot_id",
        "application_id",
    ):
        op.drop_column("leases", column)
    op.drop_table("ports")
    op.drop_table("compartments")
    op.drop_table("slots")
    for column in ("power_budget_w", "max_wind_area_m2", "max_load_kg"):
        op.drop_column("poles", column)
