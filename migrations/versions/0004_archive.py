"""Operation archive: pole and device records (model, vendor, serial, dates,
takeover, warranty, status) with their history of changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
NOW = sa.text("now()")

STATUSES = ("planned", "in_service", "faulty", "under_maintenance", "retired")
TABLES = ("poles", "devices")


def _columns() -> list[sa.Column[object]]:
    # Rows that exist already (and rows a site import creates) are in service
    # by default: the site file describes the running installation.
    return [
        sa.Column("model", sa.Text, nullable=True),
        sa.Column("vendor", sa.Text, nullable=True),
        sa.Column("serial", sa.Text, nullable=True),
        sa.Column("installed_on", sa.Date, nullable=True),
        sa.Column("taken_over_on", sa.Date, nullable=True),
        sa.Column("taken_over_from", sa.Text, nullable=True),
        sa.Column("warranty_until", sa.Date, nullable=True),
        sa.Column("mounting_position", sa.Text, nullable=True),
        sa.Column("status", sa.Text, nullable=False, server_default="in_service"),
        sa.Column("notes", sa.Text, nullable=True),
    ]


def upgrade() -> None:
    for table in TABLES:
        for column in _columns():
            op.add_column(table, column)
        op.create_check_constraint(
            f"{table}_status_check",
            table,
            "status IN (" + ", ".join(f"'{s}'" for s in STATUSES) + ")",
        )
        op.create_index(f"{table}_status_idx", table, ["status", "id"])

    # Every change of a pole or device row, kept by the database itself: a
    # trigger diffs the row (all columns but the timestamps) and appends
    # {field: [old, new]}. It sees the API's writes, site imports and manual
    # SQL alike. The API names the person with set_config('polegw.actor', …,
    # true) in the write's transaction; other writers appear as `db:<role>`.
    op.create_table(
        "archive_history",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("resource", sa.Text, nullable=False),
        sa.Column("resource_id", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("changed_at", TS, nullable=False, server_default=NOW),
        sa.Column("changed_by", sa.Text, nullable=False),
        sa.Column("changes", JSONB, nullable=False),
        sa.CheckConstraint("resource IN ('poles', 'devices')", name="archive_history_resource"),
        sa.CheckConstraint("action IN ('create', 'update')", name="archive_history_action"),
    )
    op.create_index(
        "archive_history_resource_idx", "archive_history", ["resource", "resource_id", "id"]
    )
    op.execute(
        """
        CREATE FUNCTION archive_history_record() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            old_row jsonb := CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) ELSE '{}'::jsonb END;
            diff jsonb;
        BEGIN
            SELECT jsonb_object_agg(n.key,
                                    jsonb_build_array(coalesce(old_row -> n.key, 'null'), n.value))
              INTO diff
              FROM jsonb_each(to_jsonb(NEW)) AS n
             WHERE n.key NOT IN ('created_at', 'updated_at')
               AND coalesce(old_row -> n.key, 'null') IS DISTINCT FROM n.value;
            IF diff IS NOT NULL THEN
                INSERT INTO archive_history (resource, resource_id, action, changed_by, changes)
                VALUES (TG_TABLE_NAME, NEW.id,
                        CASE WHEN TG_OP = 'INSERT' THEN 'create' ELSE 'update' END,
                        coalesce(nullif(current_setting('polegw.actor', true), ''),
                                 'db:' || session_user),
                        diff);
            END IF;
            RETURN NULL;
        END $$
        """
    )
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_archive_history AFTER INSERT OR UPDATE ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION archive_history_record()"
        )
    # History, like the audit log, is not rewritten.
    op.execute(
        """
        CREATE FUNCTION archive_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'archive_history is append-only'
                USING ERRCODE = 'insufficient_privilege';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER archive_history_append_only BEFORE UPDATE OR DELETE ON archive_history"
        " FOR EACH ROW EXECUTE FUNCTION archive_history_append_only()"
    )


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_archive_history ON {table}")
    op.drop_table("archive_history")
    op.execute("DROP FUNCTION IF EXISTS archive_history_record()")
    op.execute("DROP FUNCTION IF EXISTS archive_history_append_only()")
    for table in reversed(TABLES):
        op.drop_index(f"{table}_status_idx", table_name=table)
        op.drop_constraint(f"{table}_status_check", table, type_="check")
        for column in reversed(_columns()):
            op.drop_column(table, column.name)
