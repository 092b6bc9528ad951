"""Mounting applications (受理申请和审核) and their review.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    # An application to mount equipment (kind new) or to change a lease in
    # service (kind change). The device list and the per-pole targets are jsonb:
    # they are read whole and never queried inside.
    op.create_table(
        "applications",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("kind", sa.Text, nullable=False, server_default="new"),
        sa.Column("tenant_id", sa.Text, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("lease_id", sa.BigInteger, sa.ForeignKey("leases.id"), nullable=True),
        sa.Column("state", sa.Text, nullable=False, server_default="submitted"),
        # [{type, model, quantity, weight_kg, dimensions_mm: {w, h, d}, wind_area_m2, power_w}]
        sa.Column("devices", JSONB, nullable=False),
        sa.Column("supply", sa.Text, nullable=False, server_default="AC"),
        sa.Column("voltage_v", sa.Float, nullable=True),
        sa.Column("height_m", sa.Float, nullable=True),
        sa.Column("cabinet_units", sa.Integer, nullable=False, server_default="0"),
        sa.Column("fibre_cores", sa.Integer, nullable=False, server_default="0"),
        sa.Column("bandwidth_mbps", sa.Float, nullable=True),
        sa.Column("term_start", sa.Date, nullable=True),
        sa.Column("term_end", sa.Date, nullable=True),
        # [{pole_id, slots: [preferred slot ids]}]
        sa.Column("poles", JSONB, nullable=False),
        # [{name, url, sha256?}]: references to documents kept elsewhere
        sa.Column("attachments", JSONB, nullable=False, server_default="[]"),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        # The reasons of the latest return or rejection.
        sa.Column("reasons", JSONB, nullable=True),
        # At approval: the per-pole capacity check as it stood, the assignment and rates.
        sa.Column("decision", JSONB, nullable=True),
        sa.Column("created_by", sa.BigInteger, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("kind IN ('new', 'change')", name="applications_kind"),
        sa.CheckConstraint("(kind = 'change') = (lease_id IS NOT NULL)", name="applications_lease"),
        sa.CheckConstraint(
            "state IN ('submitted', 'accepted', 'returned', 'under_review', 'approved',"
            " 'rejected', 'withdrawn')",
            name="applications_state",
        ),
        sa.CheckConstraint("supply IN ('AC', 'DC')", name="applications_supply"),
        sa.CheckConstraint("cabinet_units >= 0", name="applications_cabinet_units"),
    )
    op.create_index("applications_tenant", "applications", ["tenant_id", "id"])
    op.create_index("applications_state_idx", "applications", ["state", "id"])
    # The application's timeline: every state change and note, with who and why.
    op.create_table(
        "application_history",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "application_id", sa.BigInteger, sa.ForeignKey("applications.id"), nullable=False
        ),
        sa.Column("at", TS, nullable=False, server_default=NOW),
        sa.Column("by", sa.BigInteger, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("from_state", sa.Text, nullable=True),
        sa.Column("to_state", sa.Text, nullable=True),
        sa.Column("reasons", JSONB, nullable=True),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("application_history_app", "application_history", ["application_id", "id"])
    # A reviewer's decision to accept a failed capacity check, with the reason.
    op.create_table(
        "application_overrides",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "application_id", sa.BigInteger, sa.ForeignKey("applications.id"), nullable=False
        ),
        sa.Column("pole_id", sa.Text, sa.ForeignKey("poles.id"), nullable=False),
        sa.Column("check_name", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("by", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("length(btrim(reason)) > 0", name="application_overrides_reason"),
        sa.UniqueConstraint(
            "application_id", "pole_id", "check_name", name="application_overrides_once"
        ),
    )
    # Leases made by an approval point back at it; the port switch requests
    # made for a lease's state changes are kept on the lease.
    op.create_foreign_key(
        "leases_application", "leases", "applications", ["application_id"], ["id"]
    )
    op.add_column("leases", sa.Column("port_switch", JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("leases", "port_switch")
    op.drop_constraint("leases_application", "leases", type_="foreignkey")
    op.drop_table("application_overrides")
    op.drop_table("application_history")
    op.drop_table("applications")
