"""Bills against the database: a month's draft bills from the leases in
service, their usage and tariffs, with credits for unusable time, and their
settlement: issued, paid, void, credit notes (migrations 0011, 0012).

Tariff versions are read through `tariff_store`, ports, spans and a port's
usage through `usage_store`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from gateway.adapters import ledger_sums as ls
from gateway.adapters.db import tenant_scope
from gateway.adapters.ledger_store import LedgerStore
from gateway.adapters.tariff_store import TariffStore
from gateway.adapters.usage_store import PortUsage, Span, UsageStore, utcnow
from gateway.core import billing_credits as bc
from gateway.core import ledger as lg
from gateway.core import metering as mt
from gateway.core import tariffs as tf
from gateway.core.profiles import ProfileCatalog

Row = dict[str, Any]

HOURS = Decimal("0.000001")
PERIOD_ORDER = {p: i for i, p in enumerate(tf.Period)}


class BillConflict(Exception):
    """A move the bill's state (or its credit notes) does not allow; `data` names it."""

    def __init__(self, msg: str, **data: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.data = data


class MonthNotEnded(Exception):
    """A bill for a month that has not ended, not asked for as provisional."""

    def __init__(self, month: str, ends_at: datetime) -> None:
        super().__init__(
            f"{month} has not ended (it ends at {ends_at.isoformat()}):"
            " ask for a provisional draft to bill it now"
        )
        self.month = month
        self.ends_at = ends_at


class BillRunBusy(Exception):
    """Another bill run for the month is in progress (on this or another gateway)."""

    def __init__(self, month: str) -> None:
        super().__init__(
            f"a bill run for {month} is in progress (on this or another gateway):"
            " try again when it has finished"
        )
        self.month = month


# Every line has these keys; energy and rent lines leave them empty.
LINE_REFERENCES: Row = {"emergency_id": None, "outage_id": None, "corrects_bill_id": None}


class BillingStore:
    def __init__(self, pool: AsyncConnectionPool, catalog: ProfileCatalog, tz: ZoneInfo) -> None:
        self._pool = pool
        self._tariffs = TariffStore(pool)
        self._usage = UsageStore(pool, catalog)
        self._ledger = LedgerStore(pool, catalog)
        self.tz = tz

    # ------------------------------------------------------------------ bills

    async def generate(
        self,
        month: str,
        tenant_id: str | None = None,
        *,
        provisional: bool = False,
        source: str = "ledger",
    ) -> list[tuple[Row, str]]:
        """Draft bills of the month for each tenant with a lease in service in it
        (or just `tenant_id`): (bill, "created" | "replaced" | "issued, unchanged").
        Energy is summed from the meter-data ledger (brought up to date for the
        month's ports first); `source="readings"` meters the raw readings instead
        (the reference the ledger is measured against). Corrections of issued
        bills that the ledger has seen since are carried as adjustment lines.
        Raises tf.NoTariff when a time to price has no valid tariff version, and
        MonthNotEnded for a month not yet over unless `provisional`."""
        start, end = tf.month_bounds(month, self.tz)
        is_provisional = end > utcnow()
        if is_provisional and not provisional:
            raise MonthNotEnded(month, end)
        # One run of a month at a time across every gateway (replicas): a session
        # lock on a connection held for the run, let go when it ends (or its
        # process dies). Runs one after the other replace the drafts, as before.
        async with self._pool.connection() as lock:
            cur = await lock.execute(
                "SELECT pg_try_advisory_lock(hashtext('polegw bill run ' || %s))", (month,)
            )
            row = await cur.fetchone()
            if row is None or not row[0]:
                raise BillRunBusy(month)
            try:
                return await self._generate(
                    month, tenant_id, start, end, is_provisional, source=source
                )
            finally:
                await lock.execute(
                    "SELECT pg_advisory_unlock(hashtext('polegw bill run ' || %s))", (month,)
                )

    async def _generate(
        self,
        month: str,
        tenant_id: str | None,
        start: datetime,
        end: datetime,
        is_provisional: bool,
        *,
        source: str,
    ) -> list[tuple[Row, str]]:
        spans = await self._usage.spans(start, end, tenant_id=tenant_id)
        by_tenant: dict[str, list[Span]] = defaultdict(list)
        for s in spans:
            by_tenant[s.tenant_id].append(s)
        if tenant_id is not None:
            by_tenant.setdefault(tenant_id, [])
        events = await self.unusable(start, end) if spans else []
        if source == "ledger":
            await self.catch_up(sorted({s.port_id for s in spans if s.port_id}))
            computed = await self._ledger_bills(month, start, end, by_tenant, events)
            for tenant in computed:
                lines, excess = computed[tenant]
                computed[tenant] = (lines + await self._adjustments(tenant, month), excess)
        else:
            computed = {
                t: await self._bill_lines(month, start, end, ss, events)
                for t, ss in by_tenant.items()
            }
        out: list[tuple[Row, str]] = []
        async with self._pool.connection() as conn, conn.transaction():
            for tenant, (lines, excess) in sorted(computed.items()):
                out.append(
                    await self._write_bill(conn, tenant, month, lines, excess, is_provisional)
                )
        return out

    async def catch_up(self, port_ids: Sequence[str]) -> None:
        """Meter what is queued for these ports now (the worker may be behind or
        not running), as the gateway (not a tenant: it writes the ledger)."""
        if port_ids:
            with tenant_scope(None):
                await self._ledger.catch_up(port_ids)

    async def _ledger_bills(
        self,
        month: str,
        start: datetime,
        end: datetime,
        by_tenant: dict[str, list[Span]],
        events: Sequence[bc.Unusable],
    ) -> dict[str, tuple[list[Row], list[Row]]]:
        """Every tenant's lines from one sum over the ledger."""
        tariff_cache: dict[str, list[tf.Tariff]] = {}
        for spans in by_tenant.values():
            for s in spans:
                if s.tariff not in tariff_cache:
                    tariff_cache[s.tariff] = await self._tariffs.tariffs_named(s.tariff)
        keys = [
            ls.SpanKey(
                s.lease_id,
                s.port_id,
                s.tariff,
                mt.utc(s.start),
                mt.utc(s.end or end),
                any(t.estimate_gaps for t in tariff_cache[s.tariff]),
            )
            for spans in by_tenant.values()
            for s in spans
            if s.port_id is not None
        ]
        energy, excess = await self._ledger_energy(keys, tariff_cache, start, end)
        out: dict[str, tuple[list[Row], list[Row]]] = {}
        for tenant, spans in by_tenant.items():
            by_lease: dict[int, list[Span]] = defaultdict(list)
            for s in spans:
                by_lease[s.lease_id].append(s)
            lines: list[Row] = []
            for lease_id, lease_spans in sorted(by_lease.items()):
                first = lease_spans[0]
                tariffs = tariff_cache[first.tariff]
                if first.port_id is not None:
                    lines += self._lines_of_sums(first, energy.get(lease_id, []))
                lines += self._space_lines(month, first, lease_spans, tariffs, end)
                lines += self._credit_lines(month, first, lease_spans, tariffs, events, end)
            flags = [x for x in excess if x["lease_id"] in by_lease]
            out[tenant] = ([LINE_REFERENCES | ln for ln in lines], flags)
        return out

    async def _ledger_energy(
        self,
        keys: Sequence[ls.SpanKey],
        tariff_cache: dict[str, list[tf.Tariff]],
        start: datetime,
        end: datetime,
    ) -> tuple[dict[int, list[tf.PeriodEnergy]], list[Row]]:
        """kWh by lease, version, period and estimated (as `tf.energy_by_period`
        sums them), and the intervals with excess, from the ledger."""
        segs = [
            seg
            for name in sorted({k.tariff for k in keys})
            for seg in ls.segments(name, tariff_cache[name], self.tz, start, end)
        ]
        by_id = {t.id: t for ts in tariff_cache.values() for t in ts}
        name_of = {k.lease_id: k.tariff for k in keys}
        async with self._pool.connection() as conn:
            sums = await ls.sums(conn, keys, segs)
            capped = await ls.flagged(conn, keys, excess_only=True)
        missing = [x for x in sums if x.tariff_id is None]
        if missing:
            first = min(missing, key=lambda x: x.first)
            raise tf.NoTariff(name_of[first.lease_id], first.first)
        energy: dict[int, list[tf.PeriodEnergy]] = defaultdict(list)
        for x in sums:
            if x.positive == 0:
                continue
            assert x.tariff_id is not None
            assert x.period is not None
            names = set(lg.flag_names(x.flags)) | ({"estimated"} if x.estimated else set())
            energy[x.lease_id].append(
                tf.PeriodEnergy(by_id[x.tariff_id], tf.Period(x.period), x.estimated, x.kwh, names)
            )
        excess = [
            {
                "port_id": f.port_id,
                "lease_id": f.lease_id,
                "start": f.start,
                "end": f.end,
                "excess_kwh": f.excess_kwh,
                "flags": sorted(lg.flag_names(f.flags)),
            }
            for f in capped
            if f.excess_kwh > 0
        ]
        return energy, excess

    async def _adjustments(self, tenant_id: str, month: str) -> list[Row]:
        """Lines carrying into this month's bill what the ledger changed in the
        energy of the tenant's earlier issued (or paid) invoices since each was
        generated, less what later bills carried already (docs/decisions.md,
        "The meter-data ledger"): per lease, version, period and estimated, the
        amount a bill made now would charge less what was billed."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT b.id, b.month FROM bills b WHERE b.tenant_id = %s"
                " AND b.kind = 'invoice' AND b.state IN ('issued', 'paid') AND b.month < %s"
                " AND EXISTS (SELECT 1 FROM meter_ledger_changes c WHERE c.changed_at >"
                " b.generated_at AND c.port_id IN (SELECT port_id FROM bill_lines l"
                " WHERE l.bill_id = b.id AND l.kind = 'energy')) ORDER BY b.month, b.id",
                (tenant_id, month),
            )
            invoices = await cur.fetchall()
        lines: list[Row] = []
        for bill_id, bill_month in invoices:
            lines += await self._adjust(tenant_id, bill_id, bill_month)
        return lines

    async def _adjust(self, tenant_id: str, bill_id: int, bill_month: str) -> list[Row]:
        start, end = tf.month_bounds(bill_month, self.tz)
        spans = await self._usage.spans(start, end, tenant_id=tenant_id)
        await self.catch_up(sorted({s.port_id for s in spans if s.port_id}))
        tariff_cache: dict[str, list[tf.Tariff]] = {}
        for s in spans:
            if s.tariff not in tariff_cache:
                tariff_cache[s.tariff] = await self._tariffs.tariffs_named(s.tariff)
        keys = [
            ls.SpanKey(
                s.lease_id,
                s.port_id,
                s.tariff,
                mt.utc(s.start),
                mt.utc(s.end or end),
                any(t.estimate_gaps for t in tariff_cache[s.tariff]),
            )
            for s in spans
            if s.port_id is not None
        ]
        energy, _ = await self._ledger_energy(keys, tariff_cache, start, end)
        port_of = {k.lease_id: k.port_id for k in keys}
        now: dict[tuple[int, int, str, bool], tuple[Decimal, tf.Tariff]] = {}
        for lease_id, sums in energy.items():
            for e in sums:
                now[(lease_id, e.tariff.id, e.period.value, e.estimated)] = (e.kwh, e.tariff)
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT l.lease_id, l.tariff_id, l.period, l.estimated, l.port_id,"
                " sum(l.quantity), sum(l.amount), min(l.unit_price) FROM bill_lines l"
                " JOIN bills b ON b.id = l.bill_id WHERE (l.bill_id = %(bill)s AND"
                " l.kind = 'energy') OR (l.corrects_bill_id = %(bill)s AND l.kind = 'adjustment'"
                " AND b.state IN ('issued', 'paid')) GROUP BY 1, 2, 3, 4, 5",
                {"bill": bill_id},
            )
            billed = {(r[0], r[1], r[2], r[3]): r[4:] for r in await cur.fetchall()}
            cur = await conn.execute(
                "SELECT id, name, version FROM tariffs WHERE id = ANY(%s)",
                ([k[1] for k in billed],),
            )
            named = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
        lines = []
        for key in sorted(set(now) | set(billed), key=lambda k: (k[0], k[1], k[2], k[3])):
            lease_id, tariff_id, period, estimated = key
            kwh, tariff = now.get(key, (mt.ZERO, None))
            port, qty, amount, unit_price = billed.get(
                key, (port_of.get(lease_id), mt.ZERO, Decimal("0.00"), None)
            )
            price = tariff.definition.energy.prices[tf.Period(period)] if tariff else unit_price
            if price is None:
                continue
            delta_kwh = mt.shown_kwh(kwh) - qty
            delta = tf.money(kwh * price) - amount
            if delta_kwh == 0 and delta == 0:
                continue
            name, version = (tariff.name, tariff.version) if tariff else named[tariff_id]
            lines.append(
                LINE_REFERENCES
                | {
                    "kind": "adjustment",
                    "lease_id": lease_id,
                    "port_id": port,
                    "slot_id": None,
                    "compartment_id": None,
                    "tariff_id": tariff_id,
                    "period": period,
                    "label": f"correction of bill {bill_id} ({bill_month}): electricity,"
                    f" port {port}, {period} ({name} v{version})"
                    + (", estimated" if estimated else "")
                    + f", {delta_kwh:+f} kWh metered after it was issued",
                    "quantity": delta_kwh,
                    "unit": "kWh",
                    "unit_price": price,
                    "amount": delta,
                    "estimated": estimated,
                    "flags": [],
                    "corrects_bill_id": bill_id,
                }
            )
        return lines

    async def unusable(self, start: datetime, end: datetime) -> list[bc.Unusable]:
        """Emergencies on a pole (from opening to resolution, else closing) and
        outages overlapping [start, end); one still going on lasts up to now."""
        horizon = max(start, min(end, utcnow()))
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT 'emergency', id, type, pole_id, NULL, NULL, opened_at,"
                " coalesce(resolved_at, closed_at, %(horizon)s) FROM emergencies"
                " WHERE pole_id IS NOT NULL AND opened_at < %(end)s"
                " AND coalesce(resolved_at, closed_at, %(horizon)s) > %(start)s"
                " UNION ALL"
                " SELECT 'outage', id, cause, pole_id, port_id, slot_id, start,"
                ' coalesce("end", %(horizon)s) FROM outages WHERE start < %(end)s'
                ' AND coalesce("end", %(horizon)s) > %(start)s',
                {"start": start, "end": end, "horizon": horizon},
            )
            rows = await cur.fetchall()
        return [
            bc.Unusable(src, eid, cause, pole, port, slot, a, b)
            for src, eid, cause, pole, port, slot, a, b in rows
            if a < b
        ]

    async def _bill_lines(
        self,
        month: str,
        start: datetime,
        end: datetime,
        spans: Sequence[Span],
        events: Sequence[bc.Unusable] = (),
    ) -> tuple[list[Row], list[Row]]:
        by_lease: dict[int, list[Span]] = defaultdict(list)
        for s in spans:
            by_lease[s.lease_id].append(s)
        tariff_cache: dict[str, list[tf.Tariff]] = {}
        leases = sorted(by_lease.items())
        keys: dict[int, tuple[str, bool]] = {}  # lease -> (port, estimate gaps)
        for lease_id, lease_spans in leases:
            first = lease_spans[0]
            if first.tariff not in tariff_cache:
                tariff_cache[first.tariff] = await self._tariffs.tariffs_named(first.tariff)
            if first.port_id is not None:
                estimate = any(t.estimate_gaps for t in tariff_cache[first.tariff])
                keys[lease_id] = (first.port_id, estimate)
        # Each port's usage once, the next one read while this one is worked on
        # (the database aggregates on its own core meanwhile).
        order = list(dict.fromkeys(keys.values()))
        tasks: dict[tuple[str, bool], asyncio.Task[PortUsage]] = {}

        def start_task(i: int) -> None:
            if i < len(order) and order[i] not in tasks:
                tasks[order[i]] = asyncio.create_task(self._usage_of(order[i], start, end))

        try:
            return await self._lines_of(
                month, start, end, leases, keys, order, tasks, start_task, tariff_cache, events
            )
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def _usage_of(self, key: tuple[str, bool], start: datetime, end: datetime) -> PortUsage:
        port = await self._usage.port(key[0])
        assert port is not None
        return await self._usage.port_usage(port, start, end, estimate_gaps=key[1])

    async def _lines_of(
        self,
        month: str,
        start: datetime,
        end: datetime,
        leases: Sequence[tuple[int, list[Span]]],
        keys: dict[int, tuple[str, bool]],
        order: Sequence[tuple[str, bool]],
        tasks: dict[tuple[str, bool], asyncio.Task[PortUsage]],
        start_task: Callable[[int], None],
        tariff_cache: dict[str, list[tf.Tariff]],
        events: Sequence[bc.Unusable],
    ) -> tuple[list[Row], list[Row]]:
        lines: list[Row] = []
        excess: list[Row] = []
        position = {key: i for i, key in enumerate(order)}
        for lease_id, lease_spans in leases:
            first = lease_spans[0]
            tariffs = tariff_cache[first.tariff]
            if first.port_id is not None:
                key = keys[lease_id]
                start_task(position[key])
                start_task(position[key] + 1)
                usage = await tasks[key]
                mine = [
                    p
                    for s in lease_spans
                    for p in mt.clip_all(usage.intervals, mt.utc(s.start), mt.utc(s.end or end))
                ]
                lines += self._energy_lines(first, tariffs, mine)
                excess += [
                    {
                        "port_id": first.port_id,
                        "lease_id": lease_id,
                        "start": iv.start,
                        "end": iv.end,
                        "excess_kwh": iv.excess_kwh,
                        "flags": sorted(iv.flags),
                    }
                    for iv in mine
                    if iv.excess_kwh > 0
                ]
            lines += self._space_lines(month, first, lease_spans, tariffs, end)
            lines += self._credit_lines(month, first, lease_spans, tariffs, events, end)
        return [LINE_REFERENCES | ln for ln in lines], excess

    def _credit_lines(
        self,
        month: str,
        lease: Span,
        spans: Sequence[Span],
        tariffs: Sequence[tf.Tariff],
        events: Sequence[bc.Unusable],
        end: datetime,
    ) -> list[Row]:
        scope = bc.LeaseScope(
            lease.lease_id,
            lease.pole_id,
            lease.port_id,
            lease.slot_id,
            lease.slot_position,
            lease.slot_type,
            lease.compartment_id,
            tuple((s.start, s.end or end) for s in spans),
        )
        lines = []
        for c in bc.credits(scope, events, tariffs, month, lease.tariff):
            ev = c.event
            where = f"{ev.source} {ev.id} ({ev.cause}) on {ev.pole_id}"
            hours = c.hours.quantize(HOURS).normalize()
            percent = (c.share * 100).normalize()
            if ev.port_id or ev.slot_id:
                where += ", " + ", ".join(x for x in (ev.port_id, ev.slot_id) if x)
            lines.append(
                {
                    "kind": "credit",
                    "lease_id": lease.lease_id,
                    "port_id": ev.port_id,
                    "slot_id": ev.slot_id,
                    "compartment_id": None,
                    "tariff_id": c.tariff.id,
                    "period": None,
                    "label": f"credit, {where}, lease {lease.lease_id}, {hours:f} h"
                    f" at {percent:f}% ({c.tariff.name} v{c.tariff.version})",
                    "quantity": c.hours.quantize(HOURS),
                    "unit": "h",
                    "unit_price": c.hourly,
                    "amount": c.amount,
                    "estimated": False,
                    "flags": [],
                    "emergency_id": ev.id if ev.source == "emergency" else None,
                    "outage_id": ev.id if ev.source == "outage" else None,
                }
            )
        return lines

    def _energy_lines(
        self, lease: Span, tariffs: Sequence[tf.Tariff], intervals: Sequence[mt.Interval]
    ) -> list[Row]:
        # The kWh of the priced parts (`tf.price_intervals`) above 0 by version,
        # period and estimated, summed without making the parts.
        return self._lines_of_sums(
            lease, tf.energy_by_period(intervals, tariffs, self.tz, lease.tariff)
        )

    def _lines_of_sums(self, lease: Span, sums: Sequence[tf.PeriodEnergy]) -> list[Row]:
        lines = []
        for e in sorted(
            sums, key=lambda e: (e.tariff.valid_from, PERIOD_ORDER[e.period], e.estimated)
        ):
            tariff, period, estimated, kwh, flags = e.tariff, e.period, e.estimated, e.kwh, e.flags
            price = e.price
            lines.append(
                {
                    "kind": "energy",
                    "lease_id": lease.lease_id,
                    "port_id": lease.port_id,
                    "slot_id": None,
                    "compartment_id": None,
                    "tariff_id": tariff.id,
                    "period": period.value,
                    "label": f"electricity, port {lease.port_id}, {period.value}"
                    f" ({tariff.name} v{tariff.version})" + (", estimated" if estimated else ""),
                    "quantity": mt.shown_kwh(kwh),
                    "unit": "kWh",
                    "unit_price": price,
                    "amount": tf.money(kwh * price),
                    "estimated": estimated,
                    "flags": sorted(flags - {mt.Flag.ESTIMATED}),
                }
            )
        return lines

    def _space_lines(
        self,
        month: str,
        lease: Span,
        spans: Sequence[Span],
        tariffs: Sequence[tf.Tariff],
        end: datetime,
    ) -> list[Row]:
        days = tf.service_days([(s.start, s.end or end) for s in spans], month, self.tz)
        lines = []
        for part in tf.rent_parts(days, tariffs, self.tz, lease.tariff):
            d = part.tariff.definition
            items: list[tuple[str, Decimal, str, dict[str, Any]]] = []
            if lease.slot_id is not None:
                rent = tf.slot_rent(d, lease.slot_position, lease.slot_type)
                items.append(("rent", rent, f"slot {lease.slot_id}", {"slot_id": lease.slot_id}))
            if lease.compartment_id is not None:
                items.append(
                    (
                        "rent",
                        d.rent.compartment,
                        f"compartment {lease.compartment_id}",
                        {"compartment_id": lease.compartment_id},
                    )
                )
            items.append(("maintenance", d.maintenance_fee, "maintenance fee", {}))
            for kind, monthly, what, where in items:
                if monthly == 0:
                    continue
                lines.append(
                    {
                        "kind": kind,
                        "lease_id": lease.lease_id,
                        "port_id": None,
                        "slot_id": None,
                        "compartment_id": None,
                        "tariff_id": part.tariff.id,
                        "period": None,
                        "label": f"{what}, lease {lease.lease_id}, {part.days}/"
                        f"{part.days_in_month} days ({part.tariff.name} v{part.tariff.version})",
                        "quantity": Decimal(part.days),
                        "unit": "day",
                        "unit_price": monthly / part.days_in_month,
                        "amount": tf.money(part.prorate(monthly)),
                        "estimated": False,
                        "flags": [],
                    }
                    | where
                )
        return lines

    async def _write_bill(
        self,
        conn: psycopg.AsyncConnection[Any],
        tenant_id: str,
        month: str,
        lines: list[Row],
        excess: list[Row],
        provisional: bool = False,
    ) -> tuple[Row, str]:
        for flag in excess:
            await conn.execute(
                'INSERT INTO usage_flags (port_id, lease_id, start, "end", excess_kwh, flags)'
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (port_id, start) DO UPDATE SET"
                ' "end" = excluded."end", excess_kwh = excluded.excess_kwh,'
                " flags = excluded.flags, lease_id = excluded.lease_id",
                (
                    flag["port_id"],
                    flag["lease_id"],
                    flag["start"],
                    flag["end"],
                    flag["excess_kwh"],
                    Jsonb(flag["flags"]),
                ),
            )
        totals = {
            "energy_kwh": sum((ln["quantity"] for ln in lines if ln["kind"] == "energy"), mt.ZERO),
            "energy_amount": _sum(lines, "energy"),
            "rent_amount": _sum(lines, "rent"),
            "maintenance_amount": _sum(lines, "maintenance"),
            "credit_amount": _sum(lines, "credit"),
            "total_amount": sum((ln["amount"] for ln in lines), Decimal("0.00")),
            "provisional": provisional,
        }
        async with conn.cursor(row_factory=dict_row) as cur:
            # The month's invoice: a void one is history, a new one replaces it.
            await cur.execute(
                "SELECT * FROM bills WHERE tenant_id = %s AND month = %s AND kind = 'invoice'"
                " AND state <> 'void' FOR UPDATE",
                (tenant_id, month),
            )
            bill = await cur.fetchone()
            if bill is not None and bill["state"] != "draft":
                return bill, "issued, unchanged"
            if bill is None:
                outcome = "created"
                await cur.execute(
                    "INSERT INTO bills (tenant_id, month, energy_kwh, energy_amount, rent_amount,"
                    " maintenance_amount, credit_amount, total_amount, provisional) VALUES"
                    " (%(tenant)s, %(month)s, %(energy_kwh)s, %(energy_amount)s,"
                    " %(rent_amount)s, %(maintenance_amount)s, %(credit_amount)s,"
                    " %(total_amount)s, %(provisional)s) RETURNING *",
                    {"tenant": tenant_id, "month": month} | totals,
                )
            else:
                outcome = "replaced"
                await cur.execute("DELETE FROM bill_lines WHERE bill_id = %s", (bill["id"],))
                await cur.execute(
                    "UPDATE bills SET energy_kwh = %(energy_kwh)s,"
                    " energy_amount = %(energy_amount)s, rent_amount = %(rent_amount)s,"
                    " maintenance_amount = %(maintenance_amount)s,"
                    " credit_amount = %(credit_amount)s,"
                    " total_amount = %(total_amount)s, provisional = %(provisional)s,"
                    " generated_at = now()"
                    " WHERE id = %(id)s RETURNING *",
                    {"id": bill["id"]} | totals,
                )
            bill = await cur.fetchone()
            assert bill is not None
            await _insert_lines(cur, bill["id"], lines)
        return bill, outcome

    async def bill_page(
        self,
        *,
        tenant_id: str | None,
        month: str | None,
        state: str | None,
        kind: str | None = None,
        after: int | None,
        limit: int,
    ) -> list[Row]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT * FROM bills WHERE (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)"
                " AND (%(month)s::text IS NULL OR month = %(month)s)"
                " AND (%(state)s::text IS NULL OR state = %(state)s)"
                " AND (%(kind)s::text IS NULL OR kind = %(kind)s)"
                " AND id > %(after)s ORDER BY id LIMIT %(limit)s",
                {
                    "tenant": tenant_id,
                    "month": month,
                    "state": state,
                    "kind": kind,
                    "after": after or 0,
                    "limit": limit,
                },
            )
            return await cur.fetchall()

    async def bill(
        self, bill_id: int, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> Row | None:
        """The bill with its lines (key `lines`) and the ids of the credit notes
        that correct it (key `credit_notes`)."""
        if conn is None:
            async with self._pool.connection() as c:
                return await self.bill(bill_id, c)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT * FROM bills WHERE id = %s", (bill_id,))
            bill = await cur.fetchone()
            if bill is None:
                return None
            await cur.execute("SELECT * FROM bill_lines WHERE bill_id = %s ORDER BY id", (bill_id,))
            bill["lines"] = await cur.fetchall()
            await cur.execute(
                "SELECT id FROM bills WHERE corrects_bill_id = %s ORDER BY id", (bill_id,)
            )
            bill["credit_notes"] = [r["id"] for r in await cur.fetchall()]
            return bill

    async def tenant(self, tenant_id: str) -> Row | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT id, name FROM tenants WHERE id = %s", (tenant_id,))
            return await cur.fetchone()

    # ------------------------------------------------------------------ settlement

    async def lock_bill(self, conn: psycopg.AsyncConnection[Any], bill_id: int) -> Row:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT * FROM bills WHERE id = %s FOR UPDATE", (bill_id,))
            row = await cur.fetchone()
        if row is None:
            raise LookupError(bill_id)
        return row

    async def _moved(self, conn: psycopg.AsyncConnection[Any], bill_id: int) -> Row:
        bill = await self.bill(bill_id, conn)
        assert bill is not None
        return bill

    async def issue(self, conn: psycopg.AsyncConnection[Any], bill_id: int, *, by: str) -> Row:
        """draft -> issued. LookupError: no such bill; BillConflict: not a draft."""
        bill = await self.lock_bill(conn, bill_id)
        if bill["state"] != "draft":
            raise BillConflict(f"the bill is {bill['state']}, not a draft", state=bill["state"])
        if bill["provisional"]:
            raise BillConflict(
                "the bill is a provisional draft of a month that had not ended:"
                " generate it again once the month is over, then issue it",
                state=bill["state"],
                provisional=True,
            )
        await conn.execute(
            "UPDATE bills SET state = 'issued', issued_at = now(), issued_by = %s WHERE id = %s",
            (by, bill_id),
        )
        return await self._moved(conn, bill_id)

    async def pay(
        self,
        conn: psycopg.AsyncConnection[Any],
        bill_id: int,
        *,
        paid_on: date,
        reference: str,
        by: str,
    ) -> Row:
        """issued -> paid (a credit note: settled, refunded or set off)."""
        bill = await self.lock_bill(conn, bill_id)
        if bill["state"] != "issued":
            raise BillConflict(
                f"only an issued bill can be marked paid; this one is {bill['state']}",
                state=bill["state"],
            )
        await conn.execute(
            "UPDATE bills SET state = 'paid', paid_on = %s, payment_reference = %s,"
            " paid_at = now(), paid_by = %s WHERE id = %s",
            (paid_on, reference, by, bill_id),
        )
        return await self._moved(conn, bill_id)

    async def void(
        self, conn: psycopg.AsyncConnection[Any], bill_id: int, *, reason: str, by: str
    ) -> Row:
        """issued -> void. A draft is regenerated, not voided; a paid bill is
        corrected by a credit note; an invoice with live credit notes keeps them
        consistent only if they are voided first."""
        bill = await self.lock_bill(conn, bill_id)
        state = bill["state"]
        if state == "draft":
            raise BillConflict(
                "a draft is not issued: regenerate it instead of voiding it", state=state
            )
        if state == "paid":
            raise BillConflict(
                "the bill is paid: correct it with a credit note instead of voiding it",
                state=state,
            )
        if state == "void":
            raise BillConflict("the bill is void already", state=state)
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT id FROM bills WHERE corrects_bill_id = %s AND state <> 'void' ORDER BY id",
                (bill_id,),
            )
            live = [r[0] for r in await cur.fetchall()]
        if live:
            raise BillConflict(
                "the invoice has credit notes that are not void: void them first",
                state=state,
                credit_notes=live,
            )
        await conn.execute(
            "UPDATE bills SET state = 'void', void_reason = %s, voided_at = now(),"
            " voided_by = %s WHERE id = %s",
            (reason, by, bill_id),
        )
        return await self._moved(conn, bill_id)

    async def credit_note(
        self,
        conn: psycopg.AsyncConnection[Any],
        invoice_id: int,
        *,
        reason: str,
        lines: Sequence[Row],
        by: str,
    ) -> Row:
        """An issued credit note correcting an issued or paid invoice: lines of
        kind `correction` (label, amount < 0, optional lease_id). Together the
        credit notes of an invoice never exceed its total.
        LookupError: no such invoice; BillConflict: it cannot be corrected;
        ValueError(lease_id): a line names a lease the invoice does not bill."""
        invoice = await self.lock_bill(conn, invoice_id)
        if invoice["kind"] != "invoice":
            raise BillConflict(
                "a credit note corrects an invoice, not another credit note", kind=invoice["kind"]
            )
        if invoice["state"] not in ("issued", "paid"):
            hint = "regenerate the draft" if invoice["state"] == "draft" else "it is void"
            raise BillConflict(
                f"only an issued or paid invoice can be corrected ({hint})",
                state=invoice["state"],
            )
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT DISTINCT lease_id FROM bill_lines WHERE bill_id = %s"
                " AND lease_id IS NOT NULL",
                (invoice_id,),
            )
            leases = {r["lease_id"] for r in await cur.fetchall()}
            for ln in lines:
                if ln["lease_id"] is not None and ln["lease_id"] not in leases:
                    raise ValueError(ln["lease_id"])
            await cur.execute(
                "SELECT coalesce(sum(total_amount), 0) AS credited FROM bills"
                " WHERE corrects_bill_id = %s AND state <> 'void'",
                (invoice_id,),
            )
            row = await cur.fetchone()
            assert row is not None
            credited: Decimal = row["credited"]
            total = sum((Decimal(ln["amount"]) for ln in lines), Decimal("0.00"))
            remaining = invoice["total_amount"] + credited
            if remaining + total < 0:
                raise BillConflict(
                    "the credit notes of an invoice may not exceed its total",
                    invoice_total=str(invoice["total_amount"]),
                    credited_already=str(-credited),
                    at_most=str(remaining),
                )
            await cur.execute(
                "INSERT INTO bills (tenant_id, month, kind, corrects_bill_id, reason,"
                " total_amount, currency) VALUES (%s, %s, 'credit_note', %s, %s, %s, %s)"
                " RETURNING id",
                (
                    invoice["tenant_id"],
                    invoice["month"],
                    invoice_id,
                    reason,
                    total,
                    invoice["currency"],
                ),
            )
            created = await cur.fetchone()
            assert created is not None
            note_id: int = created["id"]
            await _insert_lines(
                cur,
                note_id,
                [
                    LINE_REFERENCES
                    | {
                        "kind": "correction",
                        "lease_id": ln["lease_id"],
                        "port_id": None,
                        "slot_id": None,
                        "compartment_id": None,
                        "tariff_id": None,
                        "period": None,
                        "label": ln["label"],
                        "quantity": Decimal(1),
                        "unit": "item",
                        "unit_price": ln["amount"],
                        "amount": ln["amount"],
                        "estimated": False,
                        "flags": [],
                    }
                    for ln in lines
                ],
            )
            await cur.execute(
                "UPDATE bills SET state = 'issued', issued_at = now(), issued_by = %s"
                " WHERE id = %s",
                (by, note_id),
            )
        return await self._moved(conn, note_id)


async def _insert_lines(cur: psycopg.AsyncCursor[Row], bill_id: int, lines: Iterable[Row]) -> None:
    # One round trip for all the lines (a bill of 100 ports has hundreds).
    await cur.executemany(
        "INSERT INTO bill_lines (bill_id, kind, lease_id, port_id, slot_id,"
        " compartment_id, tariff_id, period, label, quantity, unit, unit_price,"
        " amount, estimated, flags, emergency_id, outage_id, corrects_bill_id) VALUES"
        " (%(bill_id)s, %(kind)s, %(lease_id)s, %(port_id)s, %(slot_id)s,"
        " %(compartment_id)s, %(tariff_id)s, %(period)s, %(label)s, %(quantity)s,"
        " %(unit)s, %(unit_price)s, %(amount)s, %(estimated)s, %(flags_json)s,"
        " %(emergency_id)s, %(outage_id)s, %(corrects_bill_id)s)",
        [ln | {"bill_id": bill_id, "flags_json": Jsonb(ln["flags"])} for ln in lines],
    )


def _sum(lines: Iterable[Row], kind: str) -> Decimal:
    return sum((ln["amount"] for ln in lines if ln["kind"] == kind), Decimal("0.00"))


def dumps(row: Row) -> Any:
    """A row as JSON-able data (for the audit log)."""
    return orjson.loads(orjson.dumps(row, default=str))
