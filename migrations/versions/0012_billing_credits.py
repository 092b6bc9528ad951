"""Bill settlement: paid/void, credit notes, outage credits.

Bills move `draft -> issued -> paid | void`. A credit note is a row of `bills`
too (`kind = 'credit_note'`, `corrects_bill_id` the issued invoice it corrects),
so everything that guards bills (row-level security, the triggers below)
guards credit notes as well. The month is unique per tenant among invoices
that are not void: a voided invoice can be replaced by a new one.

Once a bill leaves `draft`, the database itself keeps it as issued: its lines
cannot be inserted, changed or deleted, and of the bill only the settlement
columns may change, once (issued -> paid, or issued -> void).

Outages: a time the operator made a pole, or one port or slot on it, unusable
(works, a power cut it caused). They are the operator's records (no tenant
data); a tariff's credit policy says which causes credit the leases affected.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
NOW = sa.text("now()")

SETTLEMENT = (
    "state",
    "paid_on",
    "paid_at",
    "paid_by",
    "payment_reference",
    "voided_at",
    "voided_by",
    "void_reason",
)
SETTLEMENT_ARRAY = "ARRAY[" + ", ".join(f"'{c}'" for c in SETTLEMENT) + "]"

BILLS_GUARD = f"""
CREATE FUNCTION bills_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.state <> 'draft' THEN
            RAISE EXCEPTION 'bill % is %: it cannot be deleted', OLD.id, OLD.state
                USING ERRCODE = 'check_violation', CONSTRAINT = 'bills_issued_immutable';
        END IF;
        RETURN OLD;
    END IF;
    IF OLD.state = 'draft' THEN
        IF NEW.state NOT IN ('draft', 'issued') THEN
            RAISE EXCEPTION 'bill % is a draft: it can only be issued, not %', OLD.id, NEW.state
                USING ERRCODE = 'check_violation', CONSTRAINT = 'bills_issued_immutable';
        END IF;
        RETURN NEW;
    END IF;
    IF OLD.state <> 'issued' OR NEW.state NOT IN ('paid', 'void') THEN
        RAISE EXCEPTION 'bill % is %: it cannot become %', OLD.id, OLD.state, NEW.state
            USING ERRCODE = 'check_violation', CONSTRAINT = 'bills_issued_immutable';
    END IF;
    IF (to_jsonb(NEW) - {SETTLEMENT_ARRAY}::text[])
        IS DISTINCT FROM (to_jsonb(OLD) - {SETTLEMENT_ARRAY}::text[]) THEN
        RAISE EXCEPTION 'bill % is issued: only its payment or voiding may be recorded', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'bills_issued_immutable';
    END IF;
    RETURN NEW;
END
$$;
"""

# SECURITY DEFINER: the guard sees every bill, whatever row-level security lets
# the caller see.
LINES_GUARD = """
CREATE FUNCTION bill_lines_guard() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    ids bigint[];
    frozen bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        ids := ARRAY[NEW.bill_id];
    ELSIF TG_OP = 'UPDATE' THEN
        ids := ARRAY[OLD.bill_id, NEW.bill_id];
    ELSE
        ids := ARRAY[OLD.bill_id];
    END IF;
    -- A line deleted by the cascade of its (draft) bill's deletion finds no bill.
    SELECT id INTO frozen FROM bills WHERE id = ANY(ids) AND state <> 'draft' LIMIT 1;
    IF frozen IS NOT NULL THEN
        RAISE EXCEPTION 'bill % is issued: its lines cannot change', frozen
            USING ERRCODE = 'check_violation', CONSTRAINT = 'bill_lines_issued_immutable';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$;
"""

LINE_KINDS_OLD = "kind IN ('energy', 'rent', 'maintenance')"
LINE_KINDS = "kind IN ('energy', 'rent', 'maintenance', 'credit', 'correction')"


def upgrade() -> None:
    op.create_table(
        "outages",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("pole_id", sa.Text, sa.ForeignKey("poles.id"), nullable=False),
        # Neither: the whole pole; otherwise the one port and/or slot.
        sa.Column("port_id", sa.Text, sa.ForeignKey("ports.id"), nullable=True),
        sa.Column("slot_id", sa.Text, sa.ForeignKey("slots.id"), nullable=True),
        sa.Column("cause", sa.Text, nullable=False),
        sa.Column("start", TS, nullable=False),
        sa.Column("end", TS, nullable=True),  # exclusive; null: still going on
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("updated_by", sa.Text, nullable=True),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint('"end" IS NULL OR "end" > start', name="outages_range"),
        sa.CheckConstraint("cause ~ '^[a-z][a-z0-9_]{0,39}$'", name="outages_cause"),
    )
    op.create_index("outages_pole_start", "outages", ["pole_id", "start"])

    op.add_column("bills", sa.Column("kind", sa.Text, nullable=False, server_default="invoice"))
    op.add_column(
        "bills",
        sa.Column("corrects_bill_id", sa.BigInteger, sa.ForeignKey("bills.id"), nullable=True),
    )
    op.add_column("bills", sa.Column("reason", sa.Text, nullable=True))
    op.add_column(
        "bills",
        sa.Column("credit_amount", sa.Numeric(14, 2), nullable=False, server_default="0"),
    )
    op.add_column("bills", sa.Column("issued_by", sa.Text, nullable=True))
    op.add_column("bills", sa.Column("paid_on", sa.Date, nullable=True))
    op.add_column("bills", sa.Column("payment_reference", sa.Text, nullable=True))
    op.add_column("bills", sa.Column("paid_at", TS, nullable=True))
    op.add_column("bills", sa.Column("paid_by", sa.Text, nullable=True))
    op.add_column("bills", sa.Column("voided_at", TS, nullable=True))
    op.add_column("bills", sa.Column("voided_by", sa.Text, nullable=True))
    op.add_column("bills", sa.Column("void_reason", sa.Text, nullable=True))
    op.drop_constraint("bills_state", "bills", type_="check")
    op.create_check_constraint(
        "bills_state", "bills", "state IN ('draft', 'issued', 'paid', 'void')"
    )
    op.create_check_constraint("bills_kind", "bills", "kind IN ('invoice', 'credit_note')")
    op.create_check_constraint(
        "bills_credit_note_corrects",
        "bills",
        "(kind = 'credit_note') = (corrects_bill_id IS NOT NULL)"
        " AND (kind <> 'credit_note' OR reason IS NOT NULL)",
    )
    op.create_check_constraint(
        "bills_settlement",
        "bills",
        "(state = 'draft' OR issued_at IS NOT NULL)"
        " AND (state <> 'paid' OR (paid_on IS NOT NULL AND paid_at IS NOT NULL"
        " AND payment_reference IS NOT NULL))"
        " AND (state <> 'void' OR (voided_at IS NOT NULL AND void_reason IS NOT NULL))",
    )
    op.drop_constraint("bills_tenant_month", "bills", type_="unique")
    op.create_index(
        "bills_invoice_month",
        "bills",
        ["tenant_id", "month"],
        unique=True,
        postgresql_where=sa.text("kind = 'invoice' AND state <> 'void'"),
    )
    op.create_index(
        "bills_corrects",
        "bills",
        ["corrects_bill_id"],
        postgresql_where=sa.text("corrects_bill_id IS NOT NULL"),
    )

    op.add_column(
        "bill_lines",
        sa.Column("emergency_id", sa.BigInteger, sa.ForeignKey("emergencies.id"), nullable=True),
    )
    op.add_column(
        "bill_lines",
        sa.Column("outage_id", sa.BigInteger, sa.ForeignKey("outages.id"), nullable=True),
    )
    op.drop_constraint("bill_lines_kind", "bill_lines", type_="check")
    op.create_check_constraint("bill_lines_kind", "bill_lines", LINE_KINDS)
    op.create_check_constraint(
        "bill_lines_credit",
        "bill_lines",
        "(kind = 'credit') = (emergency_id IS NOT NULL OR outage_id IS NOT NULL)"
        " AND NOT (emergency_id IS NOT NULL AND outage_id IS NOT NULL)"
        " AND (kind NOT IN ('credit', 'correction') OR amount < 0)",
    )

    op.execute(BILLS_GUARD)
    op.execute(LINES_GUARD)
    op.execute(
        "CREATE TRIGGER bills_guard BEFORE UPDATE OR DELETE ON bills"
        " FOR EACH ROW EXECUTE FUNCTION bills_guard()"
    )
    op.execute(
        "CREATE TRIGGER bill_lines_guard BEFORE INSERT OR UPDATE OR DELETE ON bill_lines"
        " FOR EACH ROW EXECUTE FUNCTION bill_lines_guard()"
    )


def downgrade() -> None:
    """Lossy: credit notes, credit lines and void invoices are deleted, paid bills
    go back to issued (0011 knows neither)."""
    op.execute("DROP TRIGGER bill_lines_guard ON bill_lines")
    op.execute("DROP TRIGGER bills_guard ON bills")
    op.execute("DROP FUNCTION bill_lines_guard()")
    op.execute("DROP FUNCTION bills_guard()")
    op.execute("DELETE FROM bill_lines WHERE kind IN ('credit', 'correction')")
    op.execute("DELETE FROM bills WHERE kind = 'credit_note' OR state = 'void'")
    op.execute("UPDATE bills SET state = 'issued' WHERE state = 'paid'")
    op.execute("UPDATE bills SET total_amount = total_amount - credit_amount")
    op.drop_constraint("bill_lines_credit", "bill_lines", type_="check")
    op.drop_constraint("bill_lines_kind", "bill_lines", type_="check")
    op.create_check_constraint("bill_lines_kind", "bill_lines", LINE_KINDS_OLD)
    op.drop_column("bill_lines", "outage_id")
    op.drop_column("bill_lines", "emergency_id")
    op.drop_index("bills_corrects", table_name="bills")
    op.drop_index("bills_invoice_month", table_name="bills")
    op.create_unique_constraint("bills_tenant_month", "bills", ["tenant_id", "month"])
    op.drop_constraint("bills_settlement", "bills", type_="check")
    op.drop_constraint("bills_credit_note_corrects", "bills", type_="check")
    op.drop_constraint("bills_kind", "bills", type_="check")
    op.drop_constraint("bills_state", "bills", type_="check")
    op.create_check_constraint("bills_state", "bills", "state IN ('draft', 'issued')")
    for column in (
        "void_reason",
        "voided_by",
        "voided_at",
        "paid_by",
        "paid_at",
        "payment_reference",
        "paid_on",
        "issued_by",
        "credit_amount",
        "reason",
        "corrects_bill_id",
        "kind",
    ):
        op.drop_column("bills", column)
    op.drop_index("outages_pole_start", table_name="outages")
    op.drop_table("outages")
