"""Billing (计费): bills with credits for unusable time, their settlement (paid,
void, credit notes) and their export (CSV of the lines, a printable HTML
invoice)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Header, HTTPException, Query
from fastapi.responses import HTMLResponse, Response
from psycopg import AsyncConnection
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gateway.adapters.billing_store import (
    BillConflict,
    BillingStore,
    BillRunBusy,
    MonthNotEnded,
    dumps,
)
from gateway.api.deps import ApiContext, Context
from gateway.api.errors import bad_param, not_found
from gateway.api.hardening import ExpensiveManagers
from gateway.api.schemas import Page, RequestBody
from gateway.api.security import AnyUser, Audit, Managers
from gateway.config import Settings
from gateway.core import invoice
from gateway.core import metering as mt
from gateway.core import tariffs as tf
from gateway.core.auth import Principal

router = APIRouter(tags=["billing"])

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
After = Annotated[int | None, Query(ge=0, description="Cursor: the `next` of the previous page")]
# Years 2000-2999: a bill month outside them is a typing error (and year 0 / 9999-12
# would overflow the month arithmetic).
MONTH = re.compile(r"^2[0-9]{3}-(0[1-9]|1[0-2])$")


def _store(ctx: ApiContext) -> BillingStore:
    return BillingStore(ctx.pool, ctx.catalog, ZoneInfo(ctx.settings.site_timezone))


BillState = Literal["draft", "issued", "paid", "void"]
BillKind = Literal["invoice", "credit_note"]


class BillLine(BaseModel):
    id: int
    kind: Literal["energy", "rent", "maintenance", "credit", "correction", "adjustment"]
    lease_id: int | None
    port_id: str | None
    slot_id: str | None
    compartment_id: str | None
    tariff_id: int | None
    period: str | None
    emergency_id: int | None = Field(description="A credit for this emergency")
    outage_id: int | None = Field(description="A credit for this outage")
    corrects_bill_id: int | None = Field(
        None,
        description="An adjustment: the issued invoice whose energy the ledger corrected since",
    )
    label: str
    quantity: Decimal = Field(
        description="kWh (energy), days in service (rent, maintenance), hours unusable"
        " (credit), 1 (correction)"
    )
    unit: str
    unit_price: Annotated[Decimal, AfterValidator(tf.unit_price)] = Field(
        description="CNY per kWh, per day (monthly / days in month), per hour (credit:"
        " share x monthly / (days x 24), negative), or per item; shown to 4 decimals (the"
        " amount is computed from the exact price)"
    )
    amount: Decimal = Field(description="CNY, rounded once to 0.01 (credits: negative)")
    estimated: bool
    flags: list[mt.Flag] = Field(description=mt.FLAGS_DOC)


class Bill(BaseModel):
    id: int
    kind: BillKind
    corrects_bill_id: int | None = Field(description="A credit note: the invoice it corrects")
    reason: str | None = Field(description="A credit note: why")
    tenant_id: str
    month: str
    state: BillState
    energy_kwh: Decimal
    energy_amount: Decimal
    rent_amount: Decimal
    maintenance_amount: Decimal
    credit_amount: Decimal = Field(description="Credits for unusable time (negative)")
    total_amount: Decimal
    currency: str
    generated_at: datetime
    issued_at: datetime | None
    issued_by: str | None
    paid_on: date | None
    payment_reference: str | None
    paid_at: datetime | None = Field(description="When the payment was recorded")
    paid_by: str | None
    voided_at: datetime | None
    voided_by: str | None
    void_reason: str | None
    provisional: bool = Field(
        False, description="Generated before its month ended: a draft that cannot be issued"
    )


class BillWithLines(Bill):
    lines: list[BillLine]
    credit_notes: list[int] = Field(description="Credit notes correcting this invoice")


class GenerateBills(RequestBody):
    month: str = Field(pattern=MONTH.pattern, description="YYYY-MM in the site's time zone")
    tenant: str | None = Field(None, max_length=64, description="Only this tenant")
    provisional: bool = Field(
        False,
        description="Bill a month that has not ended (a provisional draft); refused without",
    )

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"month": "2026-11", "tenant": None}]}
    )


class Generated(BaseModel):
    bill: Bill
    outcome: Literal["created", "replaced", "issued, unchanged"]


class Payment(RequestBody):
    paid_on: date = Field(description="The day the money arrived (or a credit note was settled)")
    reference: str = Field(min_length=1, max_length=200, description="Bank or receipt reference")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"paid_on": "2026-12-10", "reference": "ICBC 8812-0457"}]}
    )


class Voiding(RequestBody):
    reason: str = Field(min_length=1, max_length=1000)

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"reason": "issued to the wrong tenant"}]}
    )


class CorrectionLine(RequestBody):
    label: str = Field(min_length=1, max_length=500)
    amount: Decimal = Field(lt=0, max_digits=14, decimal_places=2, description="CNY, negative")
    lease_id: int | None = Field(None, description="A lease billed on the invoice")


class NewCreditNote(RequestBody):
    reason: str = Field(min_length=1, max_length=1000)
    lines: list[CorrectionLine] = Field(min_length=1, max_length=200)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "reason": "port 1 meter over-read on 11-25, confirmed on site",
                    "lines": [
                        {"label": "electricity over-read, port P0001-port1", "amount": "-12.60"}
                    ],
                }
            ]
        }
    )


def _may_see(principal: Principal, row: dict[str, Any]) -> bool:
    return principal.is_staff or row["tenant_id"] == principal.tenant_id


def _head(row: dict[str, Any]) -> dict[str, Any]:
    """A bill as the audit log keeps it: without its lines."""
    return {k: v for k, v in dumps(row).items() if k != "lines"}


def _conflict(exc: BillConflict) -> HTTPException:
    return HTTPException(409, detail={"msg": exc.msg, **exc.data})


@router.post(
    "/bills/generate",
    summary="Create or replace the month's draft bills (managers); issued bills stay as they are",
    responses={
        409: {
            "description": "No tariff version is valid at a time to be priced, or a bill"
            " run for the month is in progress"
        }
    },
)
async def generate_bills(
    ctx: Context, _: ExpensiveManagers, audit: Audit, body: GenerateBills
) -> list[Generated]:
    store = _store(ctx)
    try:
        results = await store.generate(body.month, body.tenant, provisional=body.provisional)
    except MonthNotEnded as exc:
        raise bad_param("month", str(exc), where="body") from None
    except BillRunBusy as exc:
        raise HTTPException(409, detail={"msg": str(exc), "month": exc.month}) from None
    except tf.NoTariff as exc:
        raise HTTPException(
            409, detail={"msg": str(exc), "tariff": exc.name, "at": exc.at.isoformat()}
        ) from None
    async with ctx.pool.connection() as conn, conn.transaction():
        for bill, outcome in results:
            if outcome != "issued, unchanged":
                after = dumps(bill) | {"outcome": outcome}
                await audit.record(conn, "generate", "bill", bill["id"], after=after)
    return [Generated.model_validate({"bill": b, "outcome": o}) for b, o in results]


@router.get("/bills", summary="List bills and credit notes (tenants: their own)")
async def list_bills(
    ctx: Context,
    principal: AnyUser,
    tenant: Annotated[str | None, Query(max_length=64)] = None,
    month: Annotated[str | None, Query(pattern=MONTH.pattern)] = None,
    state: BillState | None = None,
    kind: BillKind | None = None,
    limit: Limit = 100,
    after: After = None,
) -> Page[Bill]:
    if not principal.is_staff:
        tenant = principal.tenant_id
    rows = await _store(ctx).bill_page(
        tenant_id=tenant, month=month, state=state, kind=kind, after=after, limit=limit
    )
    items = [Bill.model_validate(r) for r in rows]
    return Page[Bill](items=items, next=str(items[-1].id) if len(items) == limit else None)


async def _visible(ctx: ApiContext, principal: Principal, bill_id: int) -> dict[str, Any]:
    row = await _store(ctx).bill(bill_id)
    if row is None or not _may_see(principal, row):
        raise not_found("bill", str(bill_id))
    return row


@router.get(
    "/bills/{bill_id}",
    summary="One bill with its lines (tenants: their own)",
    responses={404: {"description": "No such bill (or not the tenant's)"}},
)
async def get_bill(ctx: Context, principal: AnyUser, bill_id: int) -> BillWithLines:
    return BillWithLines.model_validate(await _visible(ctx, principal, bill_id))


@router.get(
    "/bills/{bill_id}/lines.csv",
    summary="A bill's lines as CSV (tenants: their own)",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {}}, "description": "CSV with a header line"},
        404: {"description": "No such bill (or not the tenant's)"},
    },
)
async def bill_csv(ctx: Context, principal: AnyUser, bill_id: int) -> Response:
    row = await _visible(ctx, principal, bill_id)
    name = f"{row['kind'].replace('_', '-')}-{row['id']}-{row['month']}.csv"
    return Response(
        invoice.lines_csv(row),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def issuer(settings: Settings) -> invoice.Party:
    """The operator as printed on invoices: `Settings.invoice_issuer`, a mapping
    with `name` and any details in order (address, tax id, bank, phone…)."""
    raw: dict[str, str] = dict(settings.invoice_issuer)
    name = raw.pop("name", "") or "The operator"
    return invoice.Party(name, tuple(raw.items()))


def invoice_language(lang: str | None, accept_language: str | None) -> str:
    """`lang` if given, else the first of zh*/en* in Accept-Language (by q), else en."""
    if lang is not None:
        return lang
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        ranked.append((-q, i, tag.strip().lower()))
    for _, _, tag in sorted(ranked):
        if tag.startswith("zh"):
            return "zh-CN"
        if tag.startswith("en"):
            return "en"
    return "en"


@router.get(
    "/bills/{bill_id}/invoice.html",
    summary="A bill as a printable HTML invoice, with the operator's and tenant's details",
    description="In `lang` (zh-CN or en); without it, in the first of those the"
    " Accept-Language header prefers, else English. With the service period (the bill's"
    " month) and the due date (`invoice_due_days` after issue).",
    response_class=HTMLResponse,
    responses={404: {"description": "No such bill (or not the tenant's)"}},
)
async def bill_html(
    ctx: Context,
    principal: AnyUser,
    bill_id: int,
    lang: Annotated[
        Literal["zh-CN", "en"] | None, Query(description="The invoice's language")
    ] = None,
    accept_language: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> HTMLResponse:
    row = await _visible(ctx, principal, bill_id)
    store = _store(ctx)
    tenant = await store.tenant(row["tenant_id"])
    language = invoice_language(lang, accept_language)
    party = invoice.Party(
        tenant["name"] if tenant else row["tenant_id"],
        ((invoice.LABELS[language]["tenant_id"], row["tenant_id"]),),
    )
    page = invoice.invoice_html(
        row,
        issuer=issuer(ctx.settings),
        tenant=party,
        tz=store.tz,
        lang=language,
        due_days=ctx.settings.invoice_due_days,
    )
    return HTMLResponse(page, headers={"Content-Language": language})


async def _move(
    ctx: ApiContext,
    audit: Audit,
    bill_id: int,
    action: str,
    step: Callable[[BillingStore, AsyncConnection[Any]], Awaitable[dict[str, Any]]],
) -> BillWithLines:
    store = _store(ctx)
    async with ctx.pool.connection() as conn, conn.transaction():
        try:
            await store.lock_bill(conn, bill_id)
        except LookupError:
            raise not_found("bill", str(bill_id)) from None
        before = await store.bill(bill_id, conn)
        assert before is not None
        try:
            row = await step(store, conn)
        except BillConflict as exc:
            raise _conflict(exc) from None
        await audit.record(conn, action, "bill", bill_id, before=_head(before), after=_head(row))
    return BillWithLines.model_validate(row)


_MOVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such bill"},
    409: {"description": "The bill's state does not allow it (the body says why)"},
}


@router.post(
    "/bills/{bill_id}/issue",
    summary="Issue a draft bill (managers); an issued bill never changes",
    responses=_MOVE_RESPONSES,
)
async def issue_bill(
    ctx: Context, principal: Managers, audit: Audit, bill_id: int
) -> BillWithLines:
    return await _move(
        ctx, audit, bill_id, "issue", lambda s, c: s.issue(c, bill_id, by=principal.name)
    )


@router.post(
    "/bills/{bill_id}/pay",
    summary="Record an issued bill's payment, with its date and reference (managers)",
    responses=_MOVE_RESPONSES,
)
async def pay_bill(
    ctx: Context, principal: Managers, audit: Audit, bill_id: int, body: Payment
) -> BillWithLines:
    return await _move(
        ctx,
        audit,
        bill_id,
        "pay",
        lambda s, c: s.pay(
            c, bill_id, paid_on=body.paid_on, reference=body.reference, by=principal.name
        ),
    )


@router.post(
    "/bills/{bill_id}/void",
    summary="Void an issued bill, with a reason (managers); a paid bill takes a credit note",
    description="Only an issued bill that is not paid can be voided. A draft is regenerated"
    " instead; a paid bill is corrected with a credit note (its payment stays on record);"
    " an invoice's credit notes are voided first. Once an invoice is void, generating the"
    " month again makes a new invoice.",
    responses=_MOVE_RESPONSES,
)
async def void_bill(
    ctx: Context, principal: Managers, audit: Audit, bill_id: int, body: Voiding
) -> BillWithLines:
    return await _move(
        ctx,
        audit,
        bill_id,
        "void",
        lambda s, c: s.void(c, bill_id, reason=body.reason, by=principal.name),
    )


@router.post(
    "/bills/{bill_id}/credit-notes",
    status_code=201,
    summary="Correct an issued or paid invoice with a credit note (managers)",
    description="The credit note is issued at once, for the invoice's tenant and month; its"
    " lines have negative amounts. The credit notes of an invoice never exceed its total.",
    responses={
        404: {"description": "No such invoice"},
        409: {"description": "The invoice cannot be corrected, or not by that much"},
    },
)
async def create_credit_note(
    ctx: Context, principal: Managers, audit: Audit, bill_id: int, body: NewCreditNote
) -> BillWithLines:
    store = _store(ctx)
    lines = [ln.model_dump() for ln in body.lines]
    async with ctx.pool.connection() as conn, conn.transaction():
        try:
            row = await store.credit_note(
                conn, bill_id, reason=body.reason, lines=lines, by=principal.name
            )
        except LookupError:
            raise not_found("bill", str(bill_id)) from None
        except BillConflict as exc:
            raise _conflict(exc) from None
        except ValueError as exc:
            n = next(i for i, ln in enumerate(lines) if ln["lease_id"] == exc.args[0])
            raise HTTPException(
                422,
                detail=[
                    {
                        "loc": ["body", "lines", n, "lease_id"],
                        "msg": f"lease {exc.args[0]} is not billed on invoice {bill_id}",
                        "type": "value_error",
                    }
                ],
            ) from None
        await audit.record(
            conn,
            "credit_note",
            "bill",
            row["id"],
            after=dumps(row) | {"corrects_bill_id": bill_id},
        )
    return BillWithLines.model_validate(row)
