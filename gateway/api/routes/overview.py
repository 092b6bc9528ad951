"""The dashboard's numbers in one call: GET /api/v1/overview."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from gateway.api.deps import Context
from gateway.api.security import Staff
from gateway.core.profiles import MetricKind, ProfileCatalog

log = logging.getLogger(__name__)

router = APIRouter(tags=["overview"])

# A counter's baseline for "today" is its last reading before midnight, if it
# is no older than this (an older one would bring yesterday's energy in).
BASELINE_MAX_AGE = timedelta(hours=24)


class DeviceCounts(BaseModel):
    total: int = Field(description="Devices not retired")
    online: int
    offline: int
    unknown: int = Field(description="No presence or poll result yet")


class LampCounts(BaseModel):
    total: int = Field(description="Lamp controllers not retired")
    lit: int = Field(description="Latest lamp_on reading is on, and the device is not offline")


class WorkOrderCounts(BaseModel):
    open: int
    overdue: int = Field(description="Open and past their due time")


class Energy(BaseModel):
    kwh_today: float = Field(
        description="Sum of positive deltas of every kWh counter (lamps, port meters) since"
        " local midnight; a counter's baseline is its last reading before midnight"
    )
    since: datetime = Field(description="Local midnight (POLEGW_SITE_TIMEZONE)")
    as_of: datetime = Field(
        description="When the figure was computed: it is recomputed at most every 30 s"
        " (a scan of the day's readings), in the background while the last one is served"
    )


class Overview(BaseModel):
    at: datetime
    poles: int = Field(description="Poles not retired")
    poles_by_status: dict[str, int]
    devices: DeviceCounts
    lamps: LampCounts
    alarms_active: dict[str, int] | None = Field(
        description="Active alarms by severity; null when alarms are not set up in this database"
    )
    work_orders: WorkOrderCounts | None = Field(
        description="null when work orders are not set up in this database"
    )
    emergencies_open: int | None = Field(
        description="null when emergencies are not set up in this database"
    )
    energy: Energy

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "at": "2026-11-22T10:00:00Z",
                    "poles": 20,
                    "poles_by_status": {"in_service": 19, "faulty": 1},
                    "devices": {"total": 100, "online": 97, "offline": 2, "unknown": 1},
                    "lamps": {"total": 20, "lit": 0},
                    "alarms_active": {"critical": 1, "major": 2},
                    "work_orders": {"open": 4, "overdue": 1},
                    "emergencies_open": 0,
                    "energy": {
                        "kwh_today": 123.4,
                        "since": "2026-11-21T16:00:00Z",
                        "as_of": "2026-11-22T09:59:50Z",
                    },
                }
            ]
        }
    }


def lamp_profiles(catalog: ProfileCatalog) -> list[str]:
    return sorted(name for name, p in catalog.items() if "lamp_on" in p.metrics)


def energy_counters(catalog: ProfileCatalog) -> tuple[list[str], list[str]]:
    """(profile, metric) pairs of every kWh counter, as two parallel lists."""
    pairs = sorted(
        (name, metric)
        for name, p in catalog.items()
        for metric, spec in p.metrics.items()
        if spec.kind == MetricKind.COUNTER and (spec.unit or "").lower() == "kwh"
    )
    return [p for p, _ in pairs], [m for _, m in pairs]


_POLES = "SELECT status, count(*) AS n FROM poles GROUP BY status"

# A polled (Modbus) device's state comes from its polls; an MQTT device's from
# the data it sends and its pole's status (gateway/core/presence.py), recorded
# in device_state, else (nothing recorded yet) from its pole's presence.
_DEVICES = """
SELECT count(*) AS total,
       count(*) FILTER (WHERE s.online) AS online,
       count(*) FILTER (WHERE s.online = false) AS offline
FROM (
    SELECT CASE WHEN d.transport = 'modbus' THEN st.online
                ELSE coalesce(st.online,
                              CASE pr.state WHEN 'online' THEN true WHEN 'offline' THEN false END)
           END AS online
    FROM devices d
    LEFT JOIN device_state st ON st.device_id = d.id
    LEFT JOIN pole_presence pr ON pr.pole_id = d.pole_id
    WHERE d.status <> 'retired'
) s
"""

_LAMPS = """
SELECT count(*) AS total,
       count(*) FILTER (WHERE last.value >= 0.5 AND coalesce(
           CASE WHEN d.transport = 'modbus' THEN st.online
                ELSE coalesce(st.online, pr.state <> 'offline') END,
           true)) AS lit
FROM devices d
LEFT JOIN device_state st ON st.device_id = d.id
LEFT JOIN pole_presence pr ON pr.pole_id = d.pole_id
LEFT JOIN LATERAL (
    SELECT value FROM telemetry t
    WHERE t.device_id = d.id AND t.metric = 'lamp_on' AND t.ts <= %(now)s
    ORDER BY t.ts DESC LIMIT 1
) last ON true
WHERE d.status <> 'retired' AND d.profile = ANY(%(profiles)s)
"""

# Positive deltas only: a counter that went backwards (reset, replacement)
# contributes from its next increase on. Billing has the exact rules; this is
# the dashboard's figure.
_ENERGY = """
WITH series AS (
    SELECT d.id AS device_id, c.metric
    FROM unnest(%(profiles)s::text[], %(metrics)s::text[]) AS c(profile, metric)
    JOIN devices d ON d.profile = c.profile
),
readings AS (
    SELECT s.device_id, s.metric, t.ts, t.value FROM series s
    JOIN telemetry t ON t.device_id = s.device_id AND t.metric = s.metric
     AND t.ts >= %(since)s AND t.ts <= %(now)s
    UNION ALL
    SELECT s.device_id, s.metric, b.ts, b.value FROM series s
    CROSS JOIN LATERAL (
        SELECT ts, value FROM telemetry t
        WHERE t.device_id = s.device_id AND t.metric = s.metric
          AND t.ts < %(since)s AND t.ts >= %(baseline)s
        ORDER BY ts DESC LIMIT 1
    ) b
),
deltas AS (
    SELECT value - lag(value) OVER (PARTITION BY device_id, metric ORDER BY ts) AS d
    FROM readings
)
SELECT coalesce(sum(d) FILTER (WHERE d > 0), 0) AS kwh FROM deltas
"""

# The tables below belong to the alarms (0005), maintenance (0006) and
# emergency (0007) work; their columns as those migrations define them. A
# database without them answers null for their numbers.
_ALARMS = """
SELECT severity, count(*) AS n FROM alarms
WHERE state IN ('active', 'acknowledged') GROUP BY severity
"""
# Open: not yet resolved (open, assigned, in_progress). Overdue: open and past
# the resolution deadline, or not started by the response deadline.
_WORK_ORDERS = """
SELECT count(*) AS open,
       count(*) FILTER (WHERE resolution_due < %(now)s
                           OR (started_at IS NULL AND response_due < %(now)s)) AS overdue
FROM work_orders WHERE state IN ('open', 'assigned', 'in_progress')
"""
_EMERGENCIES = "SELECT count(*) AS n FROM emergencies WHERE state = 'open'"


async def _optional(
    conn: psycopg.AsyncConnection[Any], query: str, args: dict[str, object]
) -> list[dict[str, Any]] | None:
    """The rows, or None when a table or column the query needs is not there."""
    try:
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, args)
            return await cur.fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
        log.debug("overview: %s", exc)
        return None


@router.get("/overview", summary="Dashboard numbers: poles, devices, lamps, alarms, work (staff)")
async def overview(ctx: Context, _: Staff) -> Overview:
    tz = ZoneInfo(ctx.settings.site_timezone)
    async with ctx.pool.connection() as conn, conn.transaction():
        cur = await conn.execute("SELECT now()")
        row = await cur.fetchone()
        assert row is not None
        now: datetime = row[0]
        since = now.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
        profiles, metrics = energy_counters(ctx.catalog)
        args: dict[str, object] = {
            "now": now,
            "since": since,
            "baseline": since - BASELINE_MAX_AGE,
            "profiles": profiles,
            "metrics": metrics,
        }
        async with conn.cursor(row_factory=dict_row) as c:
            await c.execute(_POLES)
            by_status = {str(r["status"]): int(r["n"]) for r in await c.fetchall()}
            await c.execute(_DEVICES)
            d = await c.fetchone()
            await c.execute(_LAMPS, {"now": now, "profiles": lamp_profiles(ctx.catalog)})
            lamps = await c.fetchone()
        assert d is not None
        assert lamps is not None
        alarms = await _optional(conn, _ALARMS, args)
        orders = await _optional(conn, _WORK_ORDERS, args)
        emergencies = await _optional(conn, _EMERGENCIES, args)

    async def energy_since_midnight() -> float:
        async with ctx.pool.connection() as conn, conn.cursor(row_factory=dict_row) as c:
            await c.execute(_ENERGY, args)
            row = await c.fetchone()
        assert row is not None
        return round(float(row["kwh"]), 3)

    kwh, age = await ctx.kwh_today.get(since, energy_since_midnight)
    return Overview(
        at=now,
        poles=sum(n for s, n in by_status.items() if s != "retired"),
        poles_by_status=by_status,
        devices=DeviceCounts(
            total=d["total"],
            online=d["online"],
            offline=d["offline"],
            unknown=d["total"] - d["online"] - d["offline"],
        ),
        lamps=LampCounts(total=lamps["total"], lit=lamps["lit"]),
        alarms_active=None if alarms is None else {str(r["severity"]): int(r["n"]) for r in alarms},
        work_orders=None if orders is None else WorkOrderCounts(**orders[0]),
        emergencies_open=None if emergencies is None else int(emergencies[0]["n"]),
        energy=Energy(kwh_today=kwh, since=since, as_of=now - timedelta(seconds=age)),
    )


# ------------------------------------------------------------------ the site map

# Worst first: the alarm engine's severities (migration 0005's check).
SEVERITIES = ("critical", "major", "minor", "warning")


class PoleOnMap(BaseModel):
    id: str
    name: str
    road: str
    lat: float | None
    lon: float | None
    status: str = Field(description="Archive status (in_service, faulty, under_repair, …)")
    worst_alarm: str | None = Field(
        description="Severity of the worst active (not cleared) alarm: critical, major,"
        " minor or warning; null when none"
    )
    alarms_active: int = Field(description="Alarms not cleared (active or acknowledged)")
    devices_total: int = Field(description="Devices not retired")
    devices_offline: int
    devices_unknown: int = Field(description="No presence or poll result yet")
    lamps_lit: int = Field(description="Lamps whose latest lamp_on is on and that are not offline")
    lamps_total: int


class SiteMap(BaseModel):
    poles: list[PoleOnMap] = Field(description="Every pole not retired, by id")
    roads: list[str] = Field(description="The roads of those poles, sorted")


# One pass per table, joined on the pole: devices with their state (as in
# _DEVICES) and, for lamps, their latest lamp_on; alarms not cleared.
_POLES_ON_MAP = """
WITH dev AS (
    SELECT d.pole_id,
           CASE WHEN d.transport = 'modbus' THEN st.online
                ELSE CASE pr.state WHEN 'online' THEN true WHEN 'offline' THEN false END
           END AS online,
           d.profile = ANY(%(lamps)s) AS lamp,
           last.value AS lamp_on
    FROM devices d
    LEFT JOIN device_state st ON st.device_id = d.id
    LEFT JOIN pole_presence pr ON pr.pole_id = d.pole_id
    LEFT JOIN LATERAL (
        SELECT value FROM telemetry t
        WHERE d.profile = ANY(%(lamps)s)
          AND t.device_id = d.id AND t.metric = 'lamp_on' AND t.ts <= now()
        ORDER BY t.ts DESC LIMIT 1
    ) last ON true
    WHERE d.status <> 'retired'
),
dev_by_pole AS (
    SELECT pole_id,
           count(*) AS devices_total,
           count(*) FILTER (WHERE online = false) AS devices_offline,
           count(*) FILTER (WHERE online IS NULL) AS devices_unknown,
           count(*) FILTER (WHERE lamp) AS lamps_total,
           count(*) FILTER (WHERE lamp AND lamp_on >= 0.5 AND coalesce(online, true))
               AS lamps_lit
    FROM dev GROUP BY pole_id
)
SELECT p.id, p.name, p.road, p.lat, p.lon, p.status,
       coalesce(d.devices_total, 0) AS devices_total,
       coalesce(d.devices_offline, 0) AS devices_offline,
       coalesce(d.devices_unknown, 0) AS devices_unknown,
       coalesce(d.lamps_total, 0) AS lamps_total,
       coalesce(d.lamps_lit, 0) AS lamps_lit
FROM poles p LEFT JOIN dev_by_pole d ON d.pole_id = p.id
WHERE p.status <> 'retired'
ORDER BY p.id
"""

# The rank of the worst severity per pole (1 = critical); unknown severities last.
_ALARMS_BY_POLE = """
SELECT pole_id, count(*) AS n,
       min(coalesce(array_position(%(severities)s::text[], severity), 99)) AS worst
FROM alarms WHERE state <> 'cleared' GROUP BY pole_id
"""


@router.get(
    "/overview/poles",
    summary="Every pole for the site map: location, worst alarm, device and lamp counts (staff)",
)
async def poles_on_map(ctx: Context, _: Staff) -> SiteMap:
    async with ctx.pool.connection() as conn, conn.transaction():
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_POLES_ON_MAP, {"lamps": lamp_profiles(ctx.catalog)})
            rows = await cur.fetchall()
        alarms = await _optional(conn, _ALARMS_BY_POLE, {"severities": list(SEVERITIES)}) or []
    by_pole = {str(a["pole_id"]): a for a in alarms}
    poles = []
    for r in rows:
        a = by_pole.get(str(r["id"]))
        worst = int(a["worst"]) if a else 0
        poles.append(
            PoleOnMap(
                **r,
                worst_alarm=SEVERITIES[worst - 1] if 1 <= worst <= len(SEVERITIES) else None,
                alarms_active=int(a["n"]) if a else 0,
            )
        )
    return SiteMap(poles=poles, roads=sorted({p.road for p in poles if p.road}))
