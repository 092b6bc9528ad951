"""Queries behind the read API. Plain SQL through a psycopg pool, rows as dicts."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

Row = dict[str, Any]

# The poles a tenant (%(tenant)s) leases on: any lease not yet ended.
TENANT_POLES = (
    "SELECT l.pole_id FROM leases l WHERE l.tenant_id = %(tenant)s"
    " AND l.state NOT IN ('terminated', 'removed')"
)


# The operation archive's columns of poles and devices (migration 0004).
ARCHIVE_COLUMNS = (
    "model",
    "vendor",
    "serial",
    "installed_on",
    "taken_over_on",
    "taken_over_from",
    "warranty_until",
    "mounting_position",
    "status",
    "notes",
)
_POLE_ARCHIVE = ", ".join(f"p.{c}" for c in ARCHIVE_COLUMNS)
_DEVICE_ARCHIVE = ", ".join(f"d.{c}" for c in ARCHIVE_COLUMNS)


class ReadModel:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def _all(self, sql: str, args: tuple[object, ...] | dict[str, object] = ()) -> list[Row]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, args)
            return await cur.fetchall()

    async def _one(self, sql: str, args: tuple[object, ...] | dict[str, object] = ()) -> Row | None:
        rows = await self._all(sql, args)
        return rows[0] if rows else None

    async def ping(self) -> None:
        await self._all("SELECT 1")

    async def poles(
        self,
        *,
        after: str | None,
        limit: int,
        tenant: str | None = None,
        status: str | None = None,
    ) -> list[Row]:
        return await self._all(
            """
            SELECT p.id, p.name, p.road, p.lat, p.lon, p.height_m, {ARCHIVE},
                   pr.state AS presence, pr.since AS presence_since,
                   (SELECT count(*) FROM devices d WHERE d.pole_id = p.id) AS device_count
            FROM poles p LEFT JOIN pole_presence pr ON pr.pole_id = p.id
            WHERE (%(after)s::text IS NULL OR p.id > %(after)s)
              AND (%(tenant)s::text IS NULL OR p.id IN ({TENANT_POLES}))
              AND (%(status)s::text IS NULL OR p.status = %(status)s)
            ORDER BY p.id LIMIT %(limit)s
            """.replace("{TENANT_POLES}", TENANT_POLES).replace("{ARCHIVE}", _POLE_ARCHIVE),
            {"after": after, "limit": limit, "tenant": tenant, "status": status},
        )

    async def pole_events(self, pole_id: str, *, before: datetime | None, limit: int) -> list[Row]:
        """A pole's device events, newest first (keyset paging on the event time)."""
        return await self._all(
            """
            SELECT ts, device_id, type, data FROM device_events
            WHERE pole_id = %(pole)s AND (%(before)s::timestamptz IS NULL OR ts < %(before)s)
            ORDER BY ts DESC LIMIT %(limit)s
            """,
            {"pole": pole_id, "before": before, "limit": limit},
        )

    async def pole(self, pole_id: str, tenant: str | None = None) -> Row | None:
        return await self._one(
            """
            SELECT p.id, p.name, p.road, p.lat, p.lon, p.height_m, {ARCHIVE},
                   pr.state AS presence, pr.since AS presence_since,
                   (SELECT count(*) FROM devices d WHERE d.pole_id = p.id) AS device_count
            FROM poles p LEFT JOIN pole_presence pr ON pr.pole_id = p.id
            WHERE p.id = %(pole)s
              AND (%(tenant)s::text IS NULL OR p.id IN ({TENANT_POLES}))
            """.replace("{TENANT_POLES}", TENANT_POLES).replace("{ARCHIVE}", _POLE_ARCHIVE),
            {"pole": pole_id, "tenant": tenant},
        )

    async def devices(
        self, *, pole: str | None, after: str | None, limit: int, status: str | None = None
    ) -> list[Row]:
        return await self._all(
            """
            SELECT d.id, d.pole_id, d.profile, d.transport, d.modbus, {ARCHIVE} FROM devices d
            WHERE (%(pole)s::text IS NULL OR d.pole_id = %(pole)s)
              AND (%(after)s::text IS NULL OR d.id > %(after)s)
              AND (%(status)s::text IS NULL OR d.status = %(status)s)
            ORDER BY d.id LIMIT %(limit)s
            """.replace("{ARCHIVE}", _DEVICE_ARCHIVE),
            {"pole": pole, "after": after, "limit": limit, "status": status},
        )

    async def device(self, device_id: str) -> Row | None:
        return await self._one(
            """
            SELECT d.id, d.pole_id, d.profile, d.transport, d.modbus, {ARCHIVE},
                   pr.state AS pole_presence, pr.since AS pole_presence_since,
                   st.online AS polled_online, st.since AS polled_since,
                   st.detail AS polled_detail
            FROM devices d
            LEFT JOIN pole_presence pr ON pr.pole_id = d.pole_id
            LEFT JOIN device_state st ON st.device_id = d.id
            WHERE d.id = %s
            """.replace("{ARCHIVE}", _DEVICE_ARCHIVE),
            (device_id,),
        )

    async def latest(self, device_id: str, metrics: list[str]) -> list[Row]:
        """The newest reading of each metric: one index probe per metric."""
        return await self._all(
            """
            SELECT m.metric, t.ts, t.value, t.quality
            FROM unnest(%s::text[]) AS m(metric)
            CROSS JOIN LATERAL (
                SELECT ts, value, quality FROM telemetry
                WHERE device_id = %s AND metric = m.metric
                ORDER BY ts DESC LIMIT 1
            ) t
            ORDER BY m.metric
            """,
            (metrics, device_id),
        )

    async def raw(
        self,
        device_id: str,
        metric: str,
        start: datetime,
        end: datetime,
        *,
        after: datetime | None,
        limit: int,
    ) -> list[Row]:
        return await self._all(
            """
            SELECT ts, value, quality FROM telemetry
            WHERE device_id = %s AND metric = %s AND ts >= %s AND ts < %s
              AND (%s::timestamptz IS NULL OR ts > %s)
            ORDER BY ts LIMIT %s
            """,
            (device_id, metric, start, end, after, after, limit),
        )

    async def buckets(
        self,
        device_id: str,
        metric: str,
        start: datetime,
        end: datetime,
        bucket: timedelta,
        *,
        after: datetime | None,
        limit: int,
    ) -> list[Row]:
        return await self._all(
            """
            SELECT date_bin(%(bucket)s, ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
                   min(value) AS min, avg(value) AS avg, max(value) AS max,
                   (array_agg(value ORDER BY ts DESC))[1] AS last,
                   count(*) AS samples
            FROM telemetry
            WHERE device_id = %(device)s AND metric = %(metric)s
              AND ts >= %(start)s AND ts < %(end)s
              AND (%(after)s::timestamptz IS NULL
                   OR ts >= %(after)s::timestamptz + %(bucket)s::interval)
            GROUP BY 1 ORDER BY 1 LIMIT %(limit)s
            """,
            {
                "bucket": bucket,
                "device": device_id,
                "metric": metric,
                "start": start,
                "end": end,
                "after": after,
                "limit": limit,
            },
        )
