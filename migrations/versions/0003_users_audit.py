"""Users, API keys, the append-only audit log, and leases (who rents on which pole).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("tenant_id", sa.Text, sa.ForeignKey("tenants.id"), nullable=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint(
            "role IN ('admin', 'operator', 'maintainer', 'tenant')", name="users_role"
        ),
        # A tenant user belongs to exactly one tenant; staff belong to none.
        sa.CheckConstraint("(role = 'tenant') = (tenant_id IS NOT NULL)", name="users_tenant"),
    )
    # Machine clients. The secret is random (256 bits), so a plain SHA-256 of
    # it is as good as a slow hash and lets a key be checked on every request.
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text, primary_key=True),  # the public part of the key
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("secret_sha256", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("revoked_at", TS, nullable=True),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", TS, nullable=False, server_default=NOW),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("actor_role", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("resource", sa.Text, nullable=False),
        sa.Column("resource_id", sa.Text, nullable=False),
        sa.Column("before", JSONB, nullable=True),
        sa.Column("after", JSONB, nullable=True),
    )
    op.create_index("audit_log_resource", "audit_log", ["resource", "resource_id", "id"])
    # Append-only, enforced by the database: not even a bug in the API can
    # rewrite history. (A superuser can drop the trigger; that is outside the API.)
    op.execute(
        """
        CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log"
        " FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
    )
    op.execute(
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
    )
    # A tenant's presence on a pole. The mounting service (slots, ports, rates,
    # the full lifecycle) extends this table; operations need it already to
    # show a tenant only the poles it leases on.
    op.create_table(
        "leases",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("tenant_id", sa.Text, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("pole_id", sa.Text, sa.ForeignKey("poles.id"), nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="contracted"),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint(
            "state IN ('contracted', 'installing', 'acceptance_test', 'in_service',"
            " 'suspended', 'terminated', 'removed')",
            name="leases_state",
        ),
    )
    op.create_index("leases_tenant_pole", "leases", ["tenant_id", "pole_id"])


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("audit_log")
    op.execute("DROP FUNCTION audit_log_append_only()")
    op.drop_table("api_keys")
    op.drop_table("users")
