"""Metering against the database: ports and their meters, meter replacements,
the leases in service on a window (their spans), and a port's counter series
read back as intervals and gaps (migration 0011).

The counter series of a port is read from the `telemetry_15m` rollup (a
TimescaleDB continuous aggregate, or a plain view with the same columns): the
first and last reading of each 15-minute bucket, through
`telemetry_15m_between` (migration 0015), which reads only the window's raw rows
when the rollup is the plain view. Replays never change it (a
reading stored twice is one row), so a bill regenerated after a replay is the
same bill.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.tariff_store import DEFAULT_TARIFF
from gateway.core import metering as mt
from gateway.core.profiles import ProfileCatalog

Row = dict[str, Any]

# Readings this far before and after a window give its edges their context
# (a glitch, wrap or reset right at the edge).
MARGIN = timedelta(days=1)
# Readings further apart than this make a gap (readings come every 1-15 min).
MAX_GAP = timedelta(hours=1)
NO_OFFSET = timedelta(0)
# Zones that are UTC at every instant (psycopg gives ZoneInfo(TimeZone setting)).
UTC_KEYS = frozenset({"UTC", "Etc/UTC", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu"})


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PortMeta:
    id: str
    meter_device_id: str
    port_no: int
    rated_w: Decimal
    modulus: Decimal | None

    @property
    def metric(self) -> str:
        return f"port{self.port_no}_energy_kwh"


@dataclass(frozen=True, slots=True)
class Span:
    """A lease in service on [start, end) (end None: still in service)."""

    lease_id: int
    tenant_id: str
    pole_id: str
    port_id: str | None
    slot_id: str | None
    slot_position: str | None
    slot_type: str | None
    compartment_id: str | None
    tariff: str
    start: datetime
    end: datetime | None


@dataclass(frozen=True, slots=True)
class PortUsage:
    port: PortMeta
    intervals: list[mt.Interval]
    gaps: list[mt.Gap]


def _utc0(ts: datetime) -> datetime:
    """A time the database gave in a zone at UTC+0 (its TimeZone setting; usually
    ZoneInfo('Etc/UTC')) in datetime.UTC: the same instant, written the same in
    JSON, and the metering and pricing compare it with the UTC bounds they cut at
    without a utcoffset call each time. Other zones are left as they are."""
    tz = ts.tzinfo
    if tz is UTC:
        return ts
    if getattr(tz, "key", None) in UTC_KEYS or ts.utcoffset() == NO_OFFSET:
        return ts.replace(tzinfo=UTC)
    return ts


def _clip_gap(gap: mt.Gap, start: datetime, end: datetime) -> mt.Gap | None:
    a, b = max(gap.start, start), min(gap.end, end)
    return mt.Gap(a, b) if a < b else None


class UsageStore:
    def __init__(self, pool: AsyncConnectionPool, catalog: ProfileCatalog) -> None:
        self._pool = pool
        self._catalog = catalog

    # ------------------------------------------------------------------ ports

    async def port(self, port_id: str) -> PortMeta | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT p.id, p.meter_device_id, p.port_no, p.rated_w, d.profile"
                " FROM ports p JOIN devices d ON d.id = p.meter_device_id WHERE p.id = %s",
                (port_id,),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        metric = f"port{row['port_no']}_energy_kwh"
        modulus = None
        profile = self._catalog.get(row["profile"])
        if profile is not None and profile.modbus is not None:
            point = profile.modbus.points.get(metric)
            if point is not None:
                modulus = mt.counter_modulus(point.type, point.scale)
        return PortMeta(
            row["id"],
            row["meter_device_id"],
            row["port_no"],
            mt.to_decimal(row["rated_w"]),
            modulus,
        )

    async def add_replacement(
        self,
        conn: psycopg.AsyncConnection[Any],
        port_id: str,
        *,
        replaced_at: datetime,
        old_final_kwh: Decimal,
        new_first_kwh: Decimal,
        note: str | None,
    ) -> Row:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO meter_replacements (port_id, replaced_at, old_final_kwh,"
                " new_first_kwh, note) VALUES (%s, %s, %s, %s, %s) RETURNING *",
                (port_id, replaced_at, old_final_kwh, new_first_kwh, note),
            )
            row = await cur.fetchone()
            assert row is not None
            # The ledger meters the port again around the swap (migration 0019).
            await cur.execute(
                "INSERT INTO meter_queue (device_id, metric, ts, reason) SELECT"
                " meter_device_id, 'port' || port_no || '_energy_kwh', %s, 'meter replacement'"
                " FROM ports WHERE id = %s",
                (replaced_at, port_id),
            )
            return row

    async def tenant_port_ids(self, tenant_id: str) -> set[str]:
        """Ports the tenant has ever leased."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT port_id FROM leases WHERE tenant_id = %s AND port_id IS NOT NULL",
                (tenant_id,),
            )
            return {r[0] for r in await cur.fetchall()}

    # ------------------------------------------------------------------ metering

    async def _readings(
        self, conn: psycopg.AsyncConnection[Any], port: PortMeta, start: datetime, end: datetime
    ) -> list[mt.Reading]:
        # The rollup's rows with start <= bucket < end (migration 0015: on the
        # continuous aggregate a filter on it; on plain PostgreSQL the view's
        # aggregate over just the raw rows of [start, end + 15 min)).
        cur = await conn.execute(
            "SELECT first_ts, first, last_ts, last FROM telemetry_15m_between(%s, %s, %s, %s)"
            " ORDER BY bucket",
            (port.meter_device_id, port.metric, start, end),
        )
        out: list[mt.Reading] = []
        decimal = mt.to_decimal
        for first_ts, first, last_ts, last in await cur.fetchall():
            out.append(mt.Reading(_utc0(first_ts), decimal(first)))
            if last_ts != first_ts:
                out.append(mt.Reading(_utc0(last_ts), decimal(last)))
        return out

    async def _replacements(
        self, conn: psycopg.AsyncConnection[Any], port_id: str
    ) -> list[mt.Replacement]:
        cur = await conn.execute(
            "SELECT replaced_at, old_final_kwh, new_first_kwh FROM meter_replacements"
            " WHERE port_id = %s ORDER BY replaced_at",
            (port_id,),
        )
        return [mt.Replacement(a, Decimal(o), Decimal(n)) for a, o, n in await cur.fetchall()]

    async def port_usage(
        self, port: PortMeta, start: datetime, end: datetime, *, estimate_gaps: bool
    ) -> PortUsage:
        """The port's intervals and gaps inside [start, end)."""
        async with self._pool.connection() as conn:
            readings = await self._readings(conn, port, start - MARGIN, end + MARGIN)
            swaps = await self._replacements(conn, port.id)
        metered = mt.meter(
            readings,
            rated_w=port.rated_w,
            modulus=port.modulus,
            replacements=swaps,
            max_gap=MAX_GAP,
            estimate_gaps=estimate_gaps,
        )
        intervals = mt.clip_all(metered.intervals, start, end)
        gaps = [g for gap in metered.gaps if (g := _clip_gap(gap, start, end)) is not None]
        # No data at all at the window's edges (up to now) is a gap too.
        horizon = min(end, utcnow())
        first = readings[0].ts if readings else None
        last = readings[-1].ts if readings else None
        if first is None or last is None:
            if start < horizon:
                gaps.append(mt.Gap(start, horizon))
        else:
            if first > start + MAX_GAP and start < min(first, horizon):
                gaps.insert(0, mt.Gap(start, min(first, horizon)))
            if last < horizon - MAX_GAP:
                gaps.append(mt.Gap(max(last, start), horizon))
        return PortUsage(port, intervals, gaps)

    async def spans(
        self,
        start: datetime,
        end: datetime,
        *,
        tenant_id: str | None = None,
        port_id: str | None = None,
    ) -> list[Span]:
        """Leases in service at some time in [start, end), each period clipped to it.
        A lease is in service from the `since` of an in_service history row to the
        `since` of its next row."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                """
                WITH h AS (
                    SELECT lease_id, state, since,
                           lead(since) OVER (PARTITION BY lease_id ORDER BY since, id) AS until
                    FROM lease_history
                )
                SELECT h.lease_id, h.since, h.until, l.tenant_id, l.pole_id, l.port_id, l.slot_id,
                       s.position, s.slot_type, l.compartment_id,
                       coalesce(l.rates ->> 'tariff', %(default)s) AS tariff
                FROM h JOIN leases l ON l.id = h.lease_id
                LEFT JOIN slots s ON s.id = l.slot_id
                WHERE h.state = 'in_service' AND h.since < %(end)s
                  AND (h.until IS NULL OR h.until > %(start)s)
                  AND (%(tenant)s::text IS NULL OR l.tenant_id = %(tenant)s)
                  AND (%(port)s::text IS NULL OR l.port_id = %(port)s)
                ORDER BY l.tenant_id, h.lease_id, h.since
                """,
                {
                    "default": DEFAULT_TARIFF,
                    "start": start,
                    "end": end,
                    "tenant": tenant_id,
                    "port": port_id,
                },
            )
            rows = await cur.fetchall()
            start, end = await _handover_bounds(conn, start, end)
        return [
            Span(
                r["lease_id"],
                r["tenant_id"],
                r["pole_id"],
                r["port_id"],
                r["slot_id"],
                r["position"],
                r["slot_type"],
                r["compartment_id"],
                r["tariff"],
                max(r["since"], start),
                end if r["until"] is None else min(r["until"], end),
            )
            for r in rows
            if r["since"] < end and (r["until"] is None or r["until"] > start)
        ]


async def _handover_bounds(
    conn: psycopg.AsyncConnection[Any], start: datetime, end: datetime
) -> tuple[datetime, datetime]:
    """[start, end) narrowed to this installation's service: from the cut-over of
    the last handover it imported, up to the cut-over of one it exported after
    that (migration 0025; docs/decisions.md, "Change of operator")."""
    cur = await conn.execute(
        "SELECT max(cutover) FILTER (WHERE direction = 'import'),"
        " max(cutover) FILTER (WHERE direction = 'export') FROM handovers"
    )
    row = await cur.fetchone()
    came, left = (None, None) if row is None else row
    if came is not None and came > start:
        start = came
    if left is not None and (came is None or left > came) and left < end:
        end = left
    return start, end
