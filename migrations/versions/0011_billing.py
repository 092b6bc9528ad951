"""Metering (meter replacements, usage flags), tariffs and bills.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    # Versioned tariffs: versions of one name never overlap in validity (the API
    # checks under a lock on the name; an exclusion constraint would need btree_gist).
    op.create_table(
        "tariffs",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("valid_from", TS, nullable=False),
        sa.Column("valid_to", TS, nullable=True),  # exclusive; null: open-ended
        sa.Column("definition", JSONB, nullable=False),
        sa.Column("estimate_gaps", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.UniqueConstraint("name", "version", name="tariffs_name_version"),
        sa.CheckConstraint("valid_to IS NULL OR valid_to > valid_from", name="tariffs_valid_range"),
    )
    # A port's meter swapped: the old meter's last reading and the new one's first.
    op.create_table(
        "meter_replacements",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("port_id", sa.Text, sa.ForeignKey("ports.id"), nullable=False),
        sa.Column("replaced_at", TS, nullable=False),
        sa.Column("old_final_kwh", sa.Numeric, nullable=False),
        sa.Column("new_first_kwh", sa.Numeric, nullable=False),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.UniqueConstraint("port_id", "replaced_at", name="meter_replacements_port_at"),
        sa.CheckConstraint(
            "old_final_kwh >= 0 AND new_first_kwh >= 0", name="meter_replacements_readings"
        ),
    )
    op.create_table(
        "bills",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("tenant_id", sa.Text, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("month", sa.Text, nullable=False),  # YYYY-MM, site time zone
        sa.Column("state", sa.Text, nullable=False, server_default="draft"),
        sa.Column("energy_kwh", sa.Numeric, nullable=False, server_default="0"),
        sa.Column("energy_amount", sa.Numeric(14, 2), nullable=False, server_default="0"),
        sa.Column("rent_amount", sa.Numeric(14, 2), nullable=False, server_default="0"),
        sa.Column("maintenance_amount", sa.Numeric(14, 2), nullable=False, server_default="0"),
        sa.Column("total_amount", sa.Numeric(14, 2), nullable=False, server_default="0"),
        sa.Column("currency", sa.Text, nullable=False, server_default="CNY"),
        sa.Column("generated_at", TS, nullable=False, server_default=NOW),
        sa.Column("issued_at", TS, nullable=True),
        sa.UniqueConstraint("tenant_id", "month", name="bills_tenant_month"),
        sa.CheckConstraint("state IN ('draft', 'issued')", name="bills_state"),
        sa.CheckConstraint("month ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'", name="bills_month"),
    )
    op.create_table(
        "bill_lines",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "bill_id", sa.BigInteger, sa.ForeignKey("bills.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("lease_id", sa.BigInteger, sa.ForeignKey("leases.id"), nullable=True),
        sa.Column("port_id", sa.Text, nullable=True),
        sa.Column("slot_id", sa.Text, nullable=True),
        sa.Column("compartment_id", sa.Text, nullable=True),
        sa.Column("tariff_id", sa.BigInteger, sa.ForeignKey("tariffs.id"), nullable=True),
        sa.Column("period", sa.Text, nullable=True),  # sharp/peak/flat/valley; rent: null
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),  # kWh, or days in service
        sa.Column("unit", sa.Text, nullable=False),  # kWh | day
        sa.Column("unit_price", sa.Numeric, nullable=False),
        sa.Column("amount", sa.Numeric(14, 2), nullable=False),
        sa.Column("estimated", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("flags", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.CheckConstraint("kind IN ('energy', 'rent', 'maintenance')", name="bill_lines_kind"),
    )
    op.create_index("bill_lines_bill", "bill_lines", ["bill_id", "id"])
    # Energy above rated power x time: not billed, kept for review.
    op.create_table(
        "usage_flags",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("port_id", sa.Text, sa.ForeignKey("ports.id"), nullable=False),
        sa.Column("start", TS, nullable=False),
        sa.Column("end", TS, nullable=False),
        sa.Column("excess_kwh", sa.Numeric, nullable=False),
        sa.Column("flags", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("lease_id", sa.BigInteger, sa.ForeignKey("leases.id"), nullable=True),
        sa.Column("reviewed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.UniqueConstraint("port_id", "start", name="usage_flags_port_start"),
    )


def downgrade() -> None:
    op.drop_table("usage_flags")
    op.drop_table("bill_lines")
    op.drop_table("bills")
    op.drop_table("meter_replacements")
    op.drop_table("tariffs")
