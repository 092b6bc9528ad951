"""Lease history records when a transition was entered beside when it took effect;
the tenant role may read its own usage flags.

- `lease_history.since` is the effective time of a state (billing prorates from
  it); an operator may now enter a transition after the fact (`effective_at`), so
  each row also keeps `entered_at`, the moment it was written (and `by`, who wrote
  it). Rows written before this migration were entered when they took effect.
- `usage_flags` had a row-level policy for polegw_tenant (0013) but no grant, so
  the tenant's own flags were "permission denied"; the policy still limits the
  role to the flags of its own leases.
- `leases.port_switch` takes the outcome of its switch_port command when it ends
  (gateway/adapters/command_store.py): an index finds the lease by command id.

Plain SQL, the same on PostgreSQL and TimescaleDB.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

TENANT_ROLE = "polegw_tenant"


def upgrade() -> None:
    op.execute("ALTER TABLE lease_history ADD COLUMN entered_at timestamptz")
    op.execute("UPDATE lease_history SET entered_at = since")
    op.execute(
        "ALTER TABLE lease_history ALTER COLUMN entered_at SET DEFAULT now(),"
        " ALTER COLUMN entered_at SET NOT NULL"
    )
    op.execute(f"GRANT SELECT ON usage_flags TO {TENANT_ROLE}")
    # A command's outcome is copied to the lease whose port switch it is.
    op.execute(
        "CREATE INDEX leases_port_switch_command ON leases ((port_switch ->> 'command_id'))"
        " WHERE port_switch IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX leases_port_switch_command")
    op.execute(f"REVOKE SELECT ON usage_flags FROM {TENANT_ROLE}")
    op.execute("ALTER TABLE lease_history DROP COLUMN entered_at")
