"""Row-level security on the tenant tables: the role polegw_tenant, its grants and
policies, and the view of lease reservations a tenant's capacity review reads.

The API scopes every connection of a tenant's request to this role with the
tenant in the setting polegw.tenant_id (gateway.adapters.db.TenantScopedPool).
The role has no BYPASSRLS and owns nothing, so the policies below hold for it;
the gateway's own connection owns the tables, and RLS is not forced on owners,
so staff routes, ingest and billing runs are unaffected.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

ROLE = "polegw_tenant"
# The calling tenant; NULL when the setting is unset or reset ('' after RESET):
# a row compared with it never matches, so a scope that is missing shows nothing.
ME = "nullif(current_setting('polegw.tenant_id', true), '')"

# Each table holding a tenant's data, and which of its rows are the caller's.
# Tables without a tenant_id go through their parent (whose own policy applies
# to the subquery too).
POLICIES: dict[str, str] = {
    "tenants": f"id = {ME}",
    "users": f"tenant_id = {ME}",
    "api_keys": f"user_id IN (SELECT id FROM users WHERE tenant_id = {ME})",
    "applications": f"tenant_id = {ME}",
    "application_history": (
        f"application_id IN (SELECT id FROM applications WHERE tenant_id = {ME})"
    ),
    "application_overrides": (
        f"application_id IN (SELECT id FROM applications WHERE tenant_id = {ME})"
    ),
    "leases": f"tenant_id = {ME}",
    "lease_history": f"lease_id IN (SELECT id FROM leases WHERE tenant_id = {ME})",
    "usage_flags": f"lease_id IN (SELECT id FROM leases WHERE tenant_id = {ME})",
    "bills": f"tenant_id = {ME}",
    "bill_lines": f"bill_id IN (SELECT id FROM bills WHERE tenant_id = {ME})",
}

# What the routes a tenant may call read and write, and nothing else. The
# operator's catalogue (poles, devices, slots, compartments, ports, tariffs,
# meter swaps, the 15-minute rollup) holds no tenant's data: readable whole.
# Password hashes and API key digests are not readable at all.
GRANTS: list[tuple[str, str]] = [
    ("SELECT", "poles"),
    ("SELECT", "pole_presence"),
    ("SELECT", "devices"),
    ("SELECT", "slots"),
    ("SELECT", "compartments"),
    ("SELECT", "ports"),
    ("SELECT", "tariffs"),
    ("SELECT", "meter_replacements"),
    ("SELECT", "telemetry_15m"),
    ("SELECT", "lease_reservations"),
    ("SELECT", "tenants"),
    ("SELECT (id, name, role, tenant_id, disabled, created_at)", "users"),
    ("SELECT (id, user_id, name, created_at, revoked_at)", "api_keys"),
    ("INSERT (id, user_id, name, secret_sha256)", "api_keys"),
    ("UPDATE (revoked_at)", "api_keys"),
    ("INSERT", "audit_log"),
    ("SELECT, INSERT", "applications"),
    # What a tenant amends or moves (state, reasons); never the decision, the
    # kind, the lease or the tenant.
    (
        "UPDATE (state, reasons, devices, supply, voltage_v, height_m, cabinet_units,"
        " fibre_cores, bandwidth_mbps, term_start, term_end, poles, attachments,"
        " description, updated_at)",
        "applications",
    ),
    ("SELECT, INSERT", "application_history"),
    ("SELECT", "application_overrides"),
    ("SELECT", "leases"),
    # SELECT … FOR UPDATE (a change request locks its lease) needs an UPDATE
    # privilege on some column; updated_at is the one that means nothing.
    ("UPDATE (updated_at)", "leases"),
    ("SELECT", "lease_history"),
    ("SELECT", "bills"),
    ("SELECT", "bill_lines"),
]

CREATE_ROLE = f"""
DO $$
BEGIN
    -- The role is cluster-wide; several databases (parallel test databases, a
    -- staging copy) share it, and their migrations may run at the same time.
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
        BEGIN
            CREATE ROLE {ROLE} NOLOGIN NOBYPASSRLS;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;  -- a concurrent migration created it
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'migration 0013 needs the role {ROLE}'
                    USING HINT = 'As a superuser: CREATE ROLE {ROLE} NOLOGIN;'
                        ' GRANT {ROLE} TO ' || quote_ident(current_user) || ';'
                        ' then migrate again.';
        END;
    END IF;
    IF EXISTS (
        SELECT FROM pg_roles
        WHERE rolname = '{ROLE}' AND (rolsuper OR rolbypassrls OR rolcanlogin)
    ) THEN
        RAISE EXCEPTION 'the role {ROLE} may not log in, be a superuser or bypass RLS'
            USING HINT = 'ALTER ROLE {ROLE} NOLOGIN NOSUPERUSER NOBYPASSRLS';
    END IF;
    -- The gateway's user switches to the role for a tenant's requests (SET ROLE).
    IF NOT pg_has_role(current_user, '{ROLE}', 'MEMBER') THEN
        BEGIN
            EXECUTE format('GRANT {ROLE} TO %I', current_user);
        EXCEPTION WHEN unique_violation THEN
            NULL;  -- granted by a concurrent migration
        END;
    END IF;
END $$
"""


def upgrade() -> None:
    op.execute(CREATE_ROLE)
    # What a capacity review needs of every live lease on a pole, and nothing
    # that says whose it is: a tenant reviewing its own application sees the
    # slots, ports and budget others hold. A plain view runs with its owner's
    # rights, so the policies on leases do not narrow it.
    op.execute(
        """
        CREATE VIEW lease_reservations AS
        SELECT id, pole_id, slot_id, compartment_id, port_id,
               load_kg, wind_area_m2, power_w, cabinet_units
        FROM leases WHERE state NOT IN ('terminated', 'removed')
        """
    )
    for privileges, table in GRANTS:
        op.execute(f"GRANT {privileges} ON {table} TO {ROLE}")
    for table, rows in POLICIES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} TO {ROLE}"
            f" USING ({rows}) WITH CHECK ({rows})"
        )


def downgrade() -> None:
    for table in reversed(POLICIES):
        op.execute(f"DROP POLICY tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    for table in dict.fromkeys(table for _, table in reversed(GRANTS)):
        op.execute(f"REVOKE ALL ON {table} FROM {ROLE}")
    op.execute("DROP VIEW lease_reservations")
    # The role stays: other databases of the cluster may use it, and without
    # privileges here it can do nothing in this one.
