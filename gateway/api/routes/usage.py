"""Metering (计量): meter replacements of a port, and the energy of ports by
interval and by tariff period, with their gaps and flags."""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gateway.adapters import ledger_sums as ls
from gateway.adapters.billing_store import dumps
from gateway.adapters.db import tenant_scope
from gateway.adapters.ledger_store import LedgerStore
from gateway.adapters.tariff_store import TariffStore
from gateway.adapters.usage_store import MAX_GAP, PortUsage, Span, UsageStore, utcnow
from gateway.api.deps import ApiContext, Context
from gateway.api.errors import bad_param, not_found
from gateway.api.schemas import RequestBody
from gateway.api.security import AnyUser, Audit, Managers
from gateway.core import ledger as lg
from gateway.core import metering as mt
from gateway.core import tariffs as tf

router = APIRouter(tags=["billing"])

BUCKETS = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "1d": timedelta(days=1)}
MAX_USAGE_RANGE = timedelta(days=93)


def _store(ctx: ApiContext) -> UsageStore:
    return UsageStore(ctx.pool, ctx.catalog)


# ---------------------------------------------------------------------- meter replacements


class NewReplacement(RequestBody):
    replaced_at: AwareDatetime
    old_final_kwh: Decimal = Field(ge=0, max_digits=16, decimal_places=4)
    new_first_kwh: Decimal = Field(ge=0, max_digits=16, decimal_places=4)
    note: str | None = Field(None, max_length=1000)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "replaced_at": "2026-11-20T10:30:00+08:00",
                    "old_final_kwh": "1234.56",
                    "new_first_kwh": "0.00",
                    "note": "meter failed calibration",
                }
            ]
        }
    )


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
    store = _store(ctx)
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
    flags: list[mt.Flag] = Field(description=mt.FLAGS_DOC)
    excess_kwh: Decimal = Field(description="Above rated power x time: not billed, for review")


class HeldReading(BaseModel):
    ts: datetime = Field(description="As the meter stamped it")
    value: float
    quality: int = Field(description="The clock flags: 1 stamped in the future, 2 too old")
    seen_at: datetime = Field(description="When the ledger first held it out")


class PortUsageOut(BaseModel):
    port_id: str
    tenant_id: str | None = Field(description="The tenant whose leases the usage is limited to")
    kwh: Decimal
    periods: dict[str, Decimal]
    buckets: list[UsageBucket]
    gaps: list[UsageGap]
    flags: list[UsageFlag]
    held_out: list[HeldReading] = Field(
        default_factory=list,
        description="Clock-suspect readings (stamped or seen in the range) held out of"
        " metering: the energy across them is measured from the readings around them",
    )


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
    instants = bounds + tf.hour_bounds(start, end, tz) + [t.valid_from for t in tariffs]
    cuts = mt.Cuts(instants)
    buckets: dict[datetime, dict[str, Decimal]] = {}
    estimated: dict[datetime, Decimal] = defaultdict(lambda: mt.ZERO)
    totals: dict[str, Decimal] = defaultdict(lambda: mt.ZERO)
    clock = tf.Clock(tariffs, tz, start, end)
    bounds_utc = [mt.utc(b) for b in bounds]

    def where(at: datetime) -> tuple[str, datetime]:
        """The period and the bucket of a part starting at `at`."""
        _, period = clock.at(at)
        # The last bucket bound at or before the part (bounds are ascending).
        key = bounds[bisect_right(bounds_utc, mt.utc(at)) - 1] if bounds else start
        return (period.value if period is not None else "none"), key

    # Both change only at the cuts and where a version ends (no cut there: a part
    # takes the version at its start).
    pieces = mt.Pieces(start, end, instants + [t.valid_to for t in tariffs if t.valid_to], where)
    for iv in intervals:
        i = pieces.find(iv.start, iv.end)
        if i >= 0:  # inside one piece (nearly all): one part, the interval itself
            parts = [(iv.kwh, pieces.values[i])]
        else:
            parts = [(p.kwh, where(p.start)) for p in mt.split_interval(iv, cuts)]
        is_estimated = mt.Flag.ESTIMATED in iv.flags
        for kwh, (period, key) in parts:
            slot = buckets.setdefault(key, defaultdict(lambda: mt.ZERO))
            slot[period] += kwh
            totals[period] += kwh
            if is_estimated:
                estimated[key] += kwh
    q = mt.KWH
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
    store = _store(ctx)
    tariff_store = TariffStore(ctx.pool)
    tz = ZoneInfo(ctx.settings.site_timezone)
    if port is not None:
        if await store.port(port) is None:
            raise not_found("port", port)
        if tenant is not None and port not in await store.tenant_port_ids(tenant):
            raise not_found("port", port)
    spans = await store.spans(start, end, tenant_id=tenant, port_id=port)
    port_ids = sorted({s.port_id for s in spans if s.port_id} | ({port} if port else set()))
    # The ledger as of now: what is queued for these ports is metered first
    # (by the gateway: a tenant's connection may not write the ledger).
    with tenant_scope(None):
        await LedgerStore(ctx.pool, ctx.catalog).catch_up(port_ids)
    bounds = _bucket_bounds(start, end, bucket, tz)
    keys: list[ls.SpanKey] = []
    segs = []
    named: set[str] = set()
    looked_up: dict[frozenset[str], tuple[bool, list[tf.Tariff]]] = {}
    for pid in port_ids:
        names = {s.tariff for s in spans if s.port_id == pid} or {"default"}
        name = sorted(names)[0]
        key = frozenset(names)
        if key not in looked_up:  # most ports share their tariffs
            looked_up[key] = (
                await tariff_store.estimate_gaps(names, start, end),
                await tariff_store.tariffs_named(name),
            )
        estimate, tariffs = looked_up[key]
        # One tariff per port (its first name); ports of one name share its segments.
        if name not in named:
            named.add(name)
            segs += ls.segments(name, tariffs, tz, start, end, bounds)
        if tenant is None:
            keys.append(ls.SpanKey(0, pid, name, start, end, estimate))
        else:
            keys += [
                ls.SpanKey(s.lease_id, pid, name, mt.utc(s.start), mt.utc(s.end or end), estimate)
                for s in spans
                if s.port_id == pid
            ]
    async with ctx.pool.connection() as conn:
        sums = await ls.sums(conn, keys, segs)
        flagged = await ls.flagged(conn, keys)
        extents = await ls.extents(conn, port_ids, start, end)
        held = await ls.held(conn, port_ids, start, end)
    sums_of: dict[str, list[ls.Sum]] = defaultdict(list)
    for x in sums:
        sums_of[x.port_id].append(x)
    out = [
        _ledger_usage_out(
            pid,
            tenant,
            sums_of[pid],
            [f for f in flagged if f.port_id == pid],
            extents[pid],
            [h for h in held if h[0] == pid],
            start,
            end,
            bounds,
        )
        for pid in port_ids
    ]
    return Usage(start=start, end=end, bucket=bucket, ports=out)


Q = Decimal("0.000001")


def _ledger_usage_out(
    port_id: str,
    tenant_id: str | None,
    sums: list[ls.Sum],
    flagged: list[ls.FlaggedInterval],
    extent: tuple[datetime | None, datetime | None, list[tuple[datetime, datetime]]],
    held: list[tuple[str, datetime, float, int, datetime]],
    start: datetime,
    end: datetime,
    bounds: list[datetime],
) -> PortUsageOut:
    """One port's usage from the ledger's sums (as `_usage_out` from intervals)."""
    local = {mt.utc(b): b for b in bounds}
    buckets: dict[datetime, dict[str, Decimal]] = {}
    estimated: dict[datetime, Decimal] = defaultdict(lambda: mt.ZERO)
    totals: dict[str, Decimal] = defaultdict(lambda: mt.ZERO)
    for x in sums:
        key = local.get(mt.utc(x.bucket), x.bucket) if x.bucket is not None else start
        period = x.period or "none"
        slot = buckets.setdefault(key, defaultdict(lambda: mt.ZERO))
        slot[period] += x.total
        totals[period] += x.total
        if x.estimated:
            estimated[key] += x.total
    first, last, ledger_gaps = extent
    gaps = [mt.Gap(a, b) for a, b in ledger_gaps]
    horizon = min(end, utcnow())
    if first is None or last is None:
        if start < horizon:
            gaps.append(mt.Gap(start, horizon))
    else:
        if first > start + MAX_GAP and start < min(first, horizon):
            gaps.insert(0, mt.Gap(start, min(first, horizon)))
        if last < horizon - MAX_GAP:
            gaps.append(mt.Gap(max(last, start), horizon))
    return PortUsageOut(
        port_id=port_id,
        tenant_id=tenant_id,
        kwh=sum(totals.values(), mt.ZERO).quantize(Q),
        periods={k: v.quantize(Q) for k, v in sorted(totals.items())},
        buckets=[
            UsageBucket(
                start=k,
                kwh=sum(v.values(), mt.ZERO).quantize(Q),
                periods={p: x.quantize(Q) for p, x in sorted(v.items())},
                estimated_kwh=estimated[k].quantize(Q),
            )
            for k, v in sorted(buckets.items())
        ],
        gaps=[
            UsageGap(start=g.start, end=g.end, duration_s=g.duration.total_seconds()) for g in gaps
        ],
        flags=[
            UsageFlag(
                start=f.start,
                end=f.end,
                kwh=f.kwh.quantize(Q),
                flags=sorted(lg.flag_names(f.flags)),
                excess_kwh=f.excess_kwh.quantize(Q),
            )
            for f in flagged
        ],
        held_out=[
            HeldReading(ts=ts, value=value, quality=quality, seen_at=seen)
            for _, ts, value, quality, seen in held
        ],
    )


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
    """The usage of one port, limited to the tenant's spans on it if a tenant is given,
    from intervals metered at read time: the path before the ledger, kept as the
    reference bench/billing.py measures the ledger against."""
    if tenant is None:
        intervals = usage.intervals
    else:
        intervals = [
            p
            for s in mine
            for p in mt.clip_all(usage.intervals, mt.utc(s.start), mt.utc(s.end or end))
        ]
    return _usage_out(usage, intervals, tariffs, tenant, start, end, bucket, tz)
