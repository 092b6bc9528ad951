"""Metering and billing (计量与计费): tariffs, meter replacements, usage, bills
with credits for unusable time, their settlement (paid, void, credit notes) and
their export (CSV of the lines, a printable HTML invoice)."""

from __future__ import annotations

import asyncio
import re
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import HTMLResponse, Response
from psycopg import AsyncConnection
from pydantic import AwareDatetime, BaseModel, Field

from gateway.adapters.billing_store import BillConflict, BillingStore, dumps
from gateway.adapters.tariff_store import TariffEnded, TariffOverlap, TariffStore
from gateway.adapters.usage_store import PortUsage, Span, UsageStore
from gateway.api.deps import ApiContext, Context
from gateway.api.errors import bad_param, not_found
from gateway.api.schemas import Page
from gateway.api.security import AnyUser, Audit, Managers, Staff
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
BUCKETS = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "1d": timedelta(days=1)}
MAX_USAGE_RANGE = timedelta(days=93)

TOU_EXAMPLE: dict[str, Any] = {
    "energy": {
        "prices": {"sharp": "1.20", "peak": "1.00", "flat": "0.60", "valley": "0.30"},
        "default_period": "flat",
        "seasons": [
            {
                "months": [7, 8, 11, 12],
                "ranges": [
                    {"period": "valley", "start": 0, "end": 8},
                    {"period": "peak", "start": 8, "end": 11},
                    {"period": "sharp", "start": 11, "end": 12},
                    {"period": "peak", "start": 18, "end": 22},
                ],
            }
        ],
    },
    "rent": {
        "positions": {"top": "500"},
        "slot_types": {"standard": "300"},
        "compartment": "90",
        "credits": {
            "emergencies": {"power_outage": "1", "flooding": "1", "collision_tilt": "1"},
            "outages": {"maintenance": "1", "power_cut": "1", "road_works": "0.5"},
        },
    },
    "maintenance_fee": "60",
}


def _store(ctx: ApiContext) -> BillingStore:
    return BillingStore(ctx.pool, ctx.catalog, ZoneInfo(ctx.settings.site_timezone))


def _tariffs(ctx: ApiContext) -> TariffStore:
    return TariffStore(ctx.pool)


def _usage(ctx: ApiContext) -> UsageStore:
    return UsageStore(ctx.pool, ctx.catalog)


# ---------------------------------------------------------------------- tariffs


class NewTariff(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    valid_from: AwareDatetime
    valid_to: AwareDatetime | None = Field(None, description="Exclusive; null: open-ended")
    estimate_gaps: bool = Field(
        False, description="Estimate energy lost in data gaps from neighbouring intervals"
    )
    definition: tf.TariffDefinition

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "name": "default",
                    "valid_from": "2026-11-01T00:00:00+08:00",
                    "valid_to": None,
                    "estimate_gaps": False,
                    "definition": TOU_EXAMPLE,
                }
            ]
        }
    }


class TariffOut(BaseModel):
    id: int
    name: str
    version: int
    valid_from: datetime
    valid_to: datetime | None
    estimate_gaps: bool
    definition: tf.TariffDefinition
    created_at: datetime


@router.get("/tariffs", summary="List tariff versions (staff)")
async def list_tariffs(
    ctx: Context,
    _: Staff,
    name: Annotated[str | None, Query(max_length=100)] = None,
    limit: Limit = 100,
    after: After = None,
) -> Page[TariffOut]:
    rows = await _tariffs(ctx).tariff_page(name, after=after, limit=limit)
    items = [TariffOut.model_validate(r) for r in rows]
    return Page[TariffOut](items=items, next=str(items[-1].id) if len(items) == limit else None)


@router.get(
    "/tariffs/{tariff_id}",
    summary="One tariff version (staff)",
    responses={404: {"description": "No such tariff"}},
)
async def get_tariff(ctx: Context, _: Staff, tariff_id: int) -> TariffOut:
    row = await _tariffs(ctx).tariff(tariff_id)
    if row is None:
        raise not_found("tariff", str(tariff_id))
    return TariffOut.model_validate(row)


@router.post(
    "/tariffs",
    status_code=201,
    summary="Add a tariff version (managers); versions of a name may not overlap",
    responses={409: {"description": "Overlaps the validity of another version"}},
)
async def create_tariff(ctx: Context, _: Managers, audit: Audit, body: NewTariff) -> TariffOut:
    if body.valid_to is not None and body.valid_to <= body.valid_from:
        raise bad_param("valid_to", "must be after valid_from", where="body")
    store = _tariffs(ctx)
    try:
        async with ctx.pool.connection() as conn, conn.transaction():
            row = await store.create_tariff(
                conn,
                name=body.name,
                valid_from=body.valid_from,
                valid_to=body.valid_to,
                definition=body.definition.model_dump(mode="json"),
                estimate_gaps=body.estimate_gaps,
            )
            await audit.record(conn, "create", "tariff", row["id"], after=dumps(row))
    except TariffOverlap as exc:
        raise HTTPException(
            409,
            detail={
                "msg": f"overlaps the validity of version {exc.other['version']} of {body.name!r}",
                "conflicts_with": dumps(exc.other),
            },
        ) from None
    return TariffOut.model_validate(row)


class TariffEnd(BaseModel):
    valid_to: AwareDatetime = Field(description="Exclusive: the next version may start here")

    model_config = {"json_schema_extra": {"examples": [{"valid_to": "2027-01-01T00:00:00+08:00"}]}}


@router.post(
    "/tariffs/{tariff_id}/end",
    summary="Give an open-ended tariff version its end, so a next version may start (managers)",
    description="Only a version without an end can be given one; bills issued already keep"
    " the prices they were issued with, drafts take the change when regenerated.",
    responses={
        404: {"description": "No such tariff version"},
        409: {"description": "The version has an end already"},
    },
)
async def end_tariff(
    ctx: Context, _: Managers, audit: Audit, tariff_id: int, body: TariffEnd
) -> TariffOut:
    store = _tariffs(ctx)
    async with ctx.pool.connection() as conn, conn.transaction():
        current = await store.tariff(tariff_id)
        if current is not None and body.valid_to <= current["valid_from"]:
            start = current["valid_from"].isoformat()
            raise bad_param("valid_to", f"must be after valid_from ({start})", where="body")
        try:
            moved = await store.end_tariff(conn, tariff_id, body.valid_to)
        except TariffEnded as exc:
            raise HTTPException(
                409,
                detail={
                    "msg": "the version has an end already; add a new version instead",
                    "valid_to": exc.row["valid_to"].isoformat(),
                },
            ) from None
        if moved is None:
            raise not_found("tariff", str(tariff_id))
        before, after = moved
        await audit.record(
            conn, "end", "tariff", tariff_id, before=dumps(before), after=dumps(after)
        )
    return TariffOut.model_validate(after)


# ---------------------------------------------------------------------- meter replacements


class NewReplacement(BaseModel):
    replaced_at: AwareDatetime
    old_final_kwh: Decimal = Field(ge=0, max_digits=16, decimal_places=4)
    new_first_kwh: Decimal = Field(ge=0, max_digits=16, decimal_places=4)
    note: str | None = Field(None, max_length=1000)

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "replaced_at": "2026-11-20T10:30:00+08:00",
                    "old_final_kwh": "1234.56",
                    "new_first_kwh": "0.00",
                    "note": "meter failed calibration",
                }
            ]
        }
    }


class Replacement(BaseModel):
    id: int
    port_id: str
    replaced_at: datetime
    old_final_kwh: Decimal
    new_first_kwh: Decimal
    note: str | None
    created_at: datetime


@router.post(
    "/ports/{port_id}/meter-replacements",
    status_code=201,
    summary="Record a port meter's replacement: the old meter's final and the new one's first",
    responses={
        404: {"description": "No such port"},
        409: {"description": "A replacement is recorded at that time already"},
    },
)
async def add_meter_replacement(
    ctx: Context, _: Managers, audit: Audit, port_id: str, body: NewReplacement
) -> Replacement:
    store = _usage(ctx)
    if await store.port(port_id) is None:
        raise not_found("port", port_id)
    async with ctx.pool.connection() as conn, conn.transaction():
        row = await store.add_replacement(
            conn,
            port_id,
            replaced_at=body.replaced_at,
            old_final_kwh=body.old_final_kwh,
            new_first_kwh=body.new_first_kwh,
            note=body.note,
        )
        await audit.record(conn, "create", "meter_replacement", row["id"], after=dumps(row))
    return Replacement.model_validate(row)


# ---------------------------------------------------------------------- usage


class UsageBucket(BaseModel):
    start: datetime
    kwh: Decimal
    periods: dict[str, Decimal] = Field(
        description="kWh per tariff period (sharp/peak/flat/valley; `none` with no tariff)"
    )
    estimated_kwh: Decimal


class UsageGap(BaseModel):
    start: datetime
    end: datetime
    duration_s: float


class UsageFlag(BaseModel):
    start: datetime
    end: datetime
    kwh: Decimal
    flags: list[str]
    excess_kwh: Decimal = Field(description="Above rated power x time: not billed, for review")


class PortUsageOut(BaseModel):
    port_id: str
    tenant_id: str | None = Field(description="The tenant whose leases the usage is limited to")
    kwh: Decimal
    periods: dict[str, Decimal]
    buckets: list[UsageBucket]
    gaps: list[UsageGap]
    flags: list[UsageFlag]


class Usage(BaseModel):
    start: datetime
    end: datetime
    bucket: str
    ports: list[PortUsageOut]


def _bucket_bounds(start: datetime, end: datetime, width: str, tz: ZoneInfo) -> list[datetime]:
    if width == "1d":
        day = start.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
        out = []
        while day < end:
            out.append(day)
            day = (day + timedelta(days=1)).replace(hour=0)
        return out
    step = BUCKETS[width]
    epoch = datetime(2000, 1, 1, tzinfo=start.tzinfo)
    t = start - (start - epoch) % step
    out = []
    while t < end:
        out.append(t)
        t += step
    return out


def _usage_out(
    usage: PortUsage,
    intervals: list[mt.Interval],
    tariffs: list[tf.Tariff],
    tenant_id: str | None,
    start: datetime,
    end: datetime,
    width: str,
    tz: ZoneInfo,
) -> PortUsageOut:
    bounds = _bucket_bounds(start, end, width, tz)
    # Sorted once, bisected for each interval and part (not scanned: ~750 bounds
    # for a month by day and hour).
    cuts = mt.Cuts(bounds + tf.hour_bounds(start, end, tz) + [t.valid_from for t in tariffs])
    buckets: dict[datetime, dict[str, Decimal]] = {}
    estimated: dict[datetime, Decimal] = defaultdict(lambda: mt.ZERO)
    totals: dict[str, Decimal] = defaultdict(lambda: mt.ZERO)
    clock = tf.Clock(tariffs, tz, start, end)
    bounds_utc = [mt.utc(b) for b in bounds]
    for iv in intervals:
        for part in mt.split_interval(iv, cuts):
            _, at = clock.at(part.start)
            period = at.value if at is not None else "none"
            # The last bucket bound at or before the part (bounds are ascending).
            key = bounds[bisect_right(bounds_utc, mt.utc(part.start)) - 1] if bounds else start
            slot = buckets.setdefault(key, defaultdict(lambda: mt.ZERO))
            slot[period] += part.kwh
            totals[period] += part.kwh
            if mt.Flag.ESTIMATED in part.flags:
                estimated[key] += part.kwh
    q = Decimal("0.000001")
    return PortUsageOut(
        port_id=usage.port.id,
        tenant_id=tenant_id,
        kwh=sum(totals.values(), mt.ZERO).quantize(q),
        periods={k: v.quantize(q) for k, v in sorted(totals.items())},
        buckets=[
            UsageBucket(
                start=k,
                kwh=sum(v.values(), mt.ZERO).quantize(q),
                periods={p: x.quantize(q) for p, x in sorted(v.items())},
                estimated_kwh=estimated[k].quantize(q),
            )
            for k, v in sorted(buckets.items())
        ],
        gaps=[
            UsageGap(start=g.start, end=g.end, duration_s=g.duration.total_seconds())
            for g in usage.gaps
        ],
        flags=[
            UsageFlag(
                start=iv.start,
                end=iv.end,
                kwh=iv.kwh.quantize(q),
                flags=sorted(iv.flags),
                excess_kwh=iv.excess_kwh.quantize(q),
            )
            for iv in intervals
            if iv.flags
        ],
    )


@router.get(
    "/usage",
    summary="Energy per port by interval and by tariff period, with gaps and flags",
    description=(
        "kWh per bucket (15m, 1h or 1d; days are local days of the site) from the ports' "
        "counter deltas (wrap, reset, glitches and meter replacements handled), split by "
        "time-of-use period. With `tenant` (forced to their own for tenants) only the "
        "usage of that tenant's leases while in service counts. Staff give `tenant` or `port`."
    ),
    responses={404: {"description": "No such port (or not the tenant's)"}},
)
async def get_usage(
    ctx: Context,
    principal: AnyUser,
    start: datetime,
    end: datetime,
    tenant: Annotated[str | None, Query(max_length=64)] = None,
    port: Annotated[str | None, Query(max_length=64)] = None,
    bucket: Literal["15m", "1h", "1d"] = "1h",
) -> Usage:
    if start.tzinfo is None:
        raise bad_param("start", "give a time zone (e.g. Z or +08:00)")
    if end.tzinfo is None:
        raise bad_param("end", "give a time zone (e.g. Z or +08:00)")
    if end <= start:
        raise bad_param("end", "must be after start")
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end - start > MAX_USAGE_RANGE:
        raise bad_param("end", f"the range may span at most {MAX_USAGE_RANGE.days} days")
    if not principal.is_staff:
        tenant = principal.tenant_id
    elif tenant is None and port is None:
        raise bad_param("tenant", "give a tenant or a port")
    store = _usage(ctx)
    tariff_store = _tariffs(ctx)
    tz = ZoneInfo(ctx.settings.site_timezone)
    if port is not None:
        if await store.port(port) is None:
            raise not_found("port", port)
        if tenant is not None and port not in await store.tenant_port_ids(tenant):
            raise not_found("port", port)
    spans = await store.spans(start, end, tenant_id=tenant, port_id=port)
    port_ids = sorted({s.port_id for s in spans if s.port_id} | ({port} if port else set()))

    async def read(pid: str) -> tuple[PortUsage, list[tf.Tariff]]:
        meta = await store.port(pid)
        assert meta is not None
        names = {s.tariff for s in spans if s.port_id == pid} or {"default"}
        estimate = await tariff_store.estimate_gaps(names, start, end)
        usage = await store.port_usage(meta, start, end, estimate_gaps=estimate)
        return usage, await tariff_store.tariffs_named(sorted(names)[0])

    # The next port is read while this one is worked on (the database aggregates
    # on its own core meanwhile).
    tasks = [asyncio.create_task(read(pid)) for pid in port_ids[:1]]
    out = []
    try:
        for i, pid in enumerate(port_ids):
            if i + 1 < len(port_ids):
                tasks.append(asyncio.create_task(read(port_ids[i + 1])))
            usage, tariffs = await tasks[i]
            mine = [s for s in spans if s.port_id == pid]
            out.append(_port_usage_out(usage, mine, tariffs, tenant, start, end, bucket, tz))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return Usage(start=start, end=end, bucket=bucket, ports=out)


def _port_usage_out(
    usage: PortUsage,
    mine: list[Span],
    tariffs: list[tf.Tariff],
    tenant: str | None,
    start: datetime,
    end: datetime,
    bucket: str,
    tz: ZoneInfo,
) -> PortUsageOut:
    """The usage of one port, limited to the tenant's spans on it if a tenant is given."""
    if tenant is None:
        intervals = usage.intervals
    else:
        intervals = [
            p
            for s in mine
            for iv in usage.intervals
            if (p := mt.clip(iv, mt.utc(s.start), mt.utc(s.end or end))) is not None
        ]
    return _usage_out(usage, intervals, tariffs, tenant, start, end, bucket, tz)


# ---------------------------------------------------------------------- bills


BillState = Literal["draft", "issued", "paid", "void"]
BillKind = Literal["invoice", "credit_note"]


class BillLine(BaseModel):
    id: int
    kind: Literal["energy", "rent", "maintenance", "credit", "correction"]
    lease_id: int | None
    port_id: str | None
    slot_id: str | None
    compartment_id: str | None
    tariff_id: int | None
    period: str | None
    emergency_id: int | None = Field(description="A credit for this emergency")
    outage_id: int | None = Field(description="A credit for this outage")
    label: str
    quantity: Decimal = Field(
        description="kWh (energy), days in service (rent, maintenance), hours unusable"
        " (credit), 1 (correction)"
    )
    unit: str
    unit_price: Decimal = Field(
        description="CNY per kWh, per day (monthly / days in month), per hour (credit:"
        " share x monthly / (days x 24), negative), or per item"
    )
    amount: Decimal = Field(description="CNY, rounded once to 0.01 (credits: negative)")
    estimated: bool
    flags: list[str]


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


class BillWithLines(Bill):
    lines: list[BillLine]
    credit_notes: list[int] = Field(description="Credit notes correcting this invoice")


class GenerateBills(BaseModel):
    month: str = Field(pattern=MONTH.pattern, description="YYYY-MM in the site's time zone")
    tenant: str | None = Field(None, max_length=64, description="Only this tenant")

    model_config = {"json_schema_extra": {"examples": [{"month": "2026-11", "tenant": None}]}}


class Generated(BaseModel):
    bill: Bill
    outcome: Literal["created", "replaced", "issued, unchanged"]


class Payment(BaseModel):
    paid_on: date = Field(description="The day the money arrived (or a credit note was settled)")
    reference: str = Field(min_length=1, max_length=200, description="Bank or receipt reference")

    model_config = {
        "json_schema_extra": {
            "examples": [{"paid_on": "2026-12-10", "reference": "ICBC 8812-0457"}]
        }
    }


class Voiding(BaseModel):
    reason: str = Field(min_length=1, max_length=1000)

    model_config = {"json_schema_extra": {"examples": [{"reason": "issued to the wrong tenant"}]}}


class CorrectionLine(BaseModel):
    label: str = Field(min_length=1, max_length=500)
    amount: Decimal = Field(lt=0, max_digits=14, decimal_places=2, description="CNY, negative")
    lease_id: int | None = Field(None, description="A lease billed on the invoice")


class NewCreditNote(BaseModel):
    reason: str = Field(min_length=1, max_length=1000)
    lines: list[CorrectionLine] = Field(min_length=1, max_length=200)

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "reason": "port 1 meter over-read on 11-25, confirmed on site",
                    "lines": [
                        {"label": "electricity over-read, port P0001-port1", "amount": "-12.60"}
                    ],
                }
            ]
        }
    }


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
    responses={409: {"description": "No tariff version is valid at a time to be priced"}},
)
async def generate_bills(
    ctx: Context, _: Managers, audit: Audit, body: GenerateBills
) -> list[Generated]:
    store = _store(ctx)
    try:
        results = await store.generate(body.month, body.tenant)
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


@router.get(
    "/bills/{bill_id}/invoice.html",
    summary="A bill as a printable HTML invoice, with the operator's and tenant's details",
    response_class=HTMLResponse,
    responses={404: {"description": "No such bill (or not the tenant's)"}},
)
async def bill_html(ctx: Context, principal: AnyUser, bill_id: int) -> HTMLResponse:
    row = await _visible(ctx, principal, bill_id)
    store = _store(ctx)
    tenant = await store.tenant(row["tenant_id"])
    party = invoice.Party(
        tenant["name"] if tenant else row["tenant_id"], (("Tenant id", row["tenant_id"]),)
    )
    page = invoice.invoice_html(row, issuer=issuer(ctx.settings), tenant=party, tz=store.tz)
    return HTMLResponse(page)


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
