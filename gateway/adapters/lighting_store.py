"""Lighting groups, schedules, overrides and dispatched steps in PostgreSQL
(migration 0008). Plain SQL through a psycopg pool, rows as dicts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

Row = dict[str, Any]
Conn = psycopg.AsyncConnection[Any]

_GROUP = """
SELECT g.id, g.name, g.road, g.created_at, g.updated_at,
       coalesce((SELECT array_agg(m.member_id ORDER BY m.member_id) FROM lighting_group_members m
                 WHERE m.group_id = g.id AND m.kind = 'pole'), '{}') AS poles,
       coalesce((SELECT array_agg(m.member_id ORDER BY m.member_id) FROM lighting_group_members m
                 WHERE m.group_id = g.id AND m.kind = 'device'), '{}') AS devices
FROM lighting_groups g
"""

# The devices of a group: on a pole of its road, on a member pole, or members themselves.
_MEMBER_DEVICES = """
SELECT d.id, d.pole_id, d.profile, p.lat, p.lon
FROM devices d JOIN poles p ON p.id = d.pole_id JOIN lighting_groups g ON g.id = %(group)s
WHERE (g.road IS NOT NULL AND p.road = g.road)
   OR EXISTS (SELECT 1 FROM lighting_group_members m WHERE m.group_id = g.id
              AND ((m.kind = 'device' AND m.member_id = d.id)
                   OR (m.kind = 'pole' AND m.member_id = d.pole_id)))
ORDER BY d.id
"""

_OVERRIDE = "id, group_id, level, starts_at, until, ended_early_at, reason, created_by, created_at"
_SCHEDULE = "id, group_id, definition, valid_from, active, created_by, created_at"


class LightingStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def _all(self, sql: str, args: dict[str, object] | tuple[object, ...] = ()) -> list[Row]:
        async with self._pool.connection() as conn:
            return await self.all_in(conn, sql, args)

    @staticmethod
    async def all_in(
        conn: Conn, sql: str, args: dict[str, object] | tuple[object, ...] = ()
    ) -> list[Row]:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, args)
            return await cur.fetchall()

    # ------------------------------------------------------------------ groups

    async def groups(self, *, after: str | None, limit: int) -> list[Row]:
        return await self._all(
            _GROUP + " WHERE (%(after)s::text IS NULL OR g.id > %(after)s) ORDER BY g.id"
            " LIMIT %(limit)s",
            {"after": after, "limit": limit},
        )

    async def group(self, group_id: str, conn: Conn | None = None) -> Row | None:
        sql = _GROUP + " WHERE g.id = %(id)s"
        if conn is not None:
            rows = await self.all_in(conn, sql + " FOR UPDATE OF g", {"id": group_id})
        else:
            rows = await self._all(sql, {"id": group_id})
        return rows[0] if rows else None

    async def unknown_members(
        self, poles: Sequence[str], devices: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        rows = await self._all(
            "SELECT 'pole' AS kind, x AS id FROM unnest(%(poles)s::text[]) x"
            " WHERE NOT EXISTS (SELECT 1 FROM poles WHERE id = x)"
            " UNION ALL SELECT 'device', x FROM unnest(%(devices)s::text[]) x"
            " WHERE NOT EXISTS (SELECT 1 FROM devices WHERE id = x)",
            {"poles": list(poles), "devices": list(devices)},
        )
        return (
            [r["id"] for r in rows if r["kind"] == "pole"],
            [r["id"] for r in rows if r["kind"] == "device"],
        )

    async def save_group(
        self,
        conn: Conn,
        group_id: str,
        name: str,
        road: str | None,
        poles: Sequence[str],
        devices: Sequence[str],
        *,
        create: bool,
    ) -> Row | None:
        """Create (None if the id exists) or replace a group and its members."""
        if create:
            cur = await conn.execute(
                "INSERT INTO lighting_groups (id, name, road) VALUES (%s, %s, %s)"
                " ON CONFLICT (id) DO NOTHING",
                (group_id, name, road),
            )
        else:
            cur = await conn.execute(
                "UPDATE lighting_groups SET name = %s, road = %s, updated_at = now() WHERE id = %s",
                (name, road, group_id),
            )
        if cur.rowcount != 1:
            return None
        await conn.execute("DELETE FROM lighting_group_members WHERE group_id = %s", (group_id,))
        await conn.execute(
            "INSERT INTO lighting_group_members (group_id, kind, member_id)"
            " SELECT %(g)s, 'pole', unnest(%(poles)s::text[])"
            " UNION SELECT %(g)s, 'device', unnest(%(devices)s::text[])",
            {"g": group_id, "poles": list(poles), "devices": list(devices)},
        )
        return await self.group(group_id, conn)

    async def delete_group(self, conn: Conn, group_id: str) -> None:
        await conn.execute("DELETE FROM lighting_groups WHERE id = %s", (group_id,))

    async def member_devices(self, group_id: str) -> list[Row]:
        return await self._all(_MEMBER_DEVICES, {"group": group_id})

    # ------------------------------------------------------------------ schedules

    async def schedule(self, group_id: str) -> Row | None:
        rows = await self._all(
            f"SELECT {_SCHEDULE} FROM lighting_schedules WHERE group_id = %s AND active",
            (group_id,),
        )
        return rows[0] if rows else None

    async def schedules(self, *, after: str | None, limit: int) -> list[Row]:
        return await self._all(
            f"SELECT {_SCHEDULE} FROM lighting_schedules WHERE active"
            " AND (%(after)s::text IS NULL OR group_id > %(after)s)"
            " ORDER BY group_id LIMIT %(limit)s",
            {"after": after, "limit": limit},
        )

    async def put_schedule(
        self, conn: Conn, group_id: str, definition: object, valid_from: datetime, by: str
    ) -> Row:
        """The new active schedule; the previous one is kept, inactive, as history."""
        await conn.execute(
            "UPDATE lighting_schedules SET active = false WHERE group_id = %s AND active",
            (group_id,),
        )
        rows = await self.all_in(
            conn,
            "INSERT INTO lighting_schedules (group_id, definition, valid_from, created_by)"
            f" VALUES (%s, %s::jsonb, %s, %s) RETURNING {_SCHEDULE}",
            (group_id, orjson.dumps(definition).decode(), valid_from, by),
        )
        return rows[0]

    async def delete_schedule(self, conn: Conn, group_id: str) -> Row | None:
        rows = await self.all_in(
            conn,
            "UPDATE lighting_schedules SET active = false WHERE group_id = %s AND active"
            f" RETURNING {_SCHEDULE}",
            (group_id,),
        )
        return rows[0] if rows else None

    # ------------------------------------------------------------------ overrides

    async def overrides(
        self, group_id: str, *, since: datetime | None, after: int | None, limit: int
    ) -> list[Row]:
        """Overrides still in force at or after `since` (all when None), newest first."""
        return await self._all(
            f"SELECT {_OVERRIDE} FROM lighting_overrides WHERE group_id = %(g)s"
            " AND (%(since)s::timestamptz IS NULL OR until > %(since)s)"
            " AND (%(after)s::bigint IS NULL OR id < %(after)s)"
            " ORDER BY id DESC LIMIT %(limit)s",
            {"g": group_id, "since": since, "after": after, "limit": limit},
        )

    async def add_override(
        self,
        conn: Conn,
        group_id: str,
        level: int,
        starts_at: datetime,
        until: datetime,
        reason: str,
        by: str,
    ) -> Row:
        rows = await self.all_in(
            conn,
            "INSERT INTO lighting_overrides (group_id, level, starts_at, until, reason, created_by)"
            f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_OVERRIDE}",
            (group_id, level, starts_at, until, reason, by),
        )
        return rows[0]

    async def override(self, conn: Conn, group_id: str, override_id: int) -> Row | None:
        rows = await self.all_in(
            conn,
            f"SELECT {_OVERRIDE} FROM lighting_overrides WHERE group_id = %s AND id = %s"
            " FOR UPDATE",
            (group_id, override_id),
        )
        return rows[0] if rows else None

    async def end_override(self, conn: Conn, override_id: int, at: datetime) -> Row:
        """End it at `at` (kept as history; its end is a step back to the schedule)."""
        rows = await self.all_in(
            conn,
            "UPDATE lighting_overrides SET until = greatest(starts_at, %(at)s),"
            " ended_early_at = %(at)s WHERE id = %(id)s AND until > %(at)s"
            f" RETURNING {_OVERRIDE}",
            {"at": at, "id": override_id},
        )
        return rows[0]

    # ------------------------------------------------------------------ dispatcher

    async def plan_rows(self, since: datetime, group_id: str | None = None) -> list[Row]:
        """Every group with its active schedule, overrides ending after `since`,
        and the mean location of its member poles."""
        return await self._all(
            """
            SELECT g.id,
                   s.definition, s.valid_from,
                   coalesce((SELECT jsonb_agg(jsonb_build_object(
                                'level', o.level, 'start', o.starts_at, 'until', o.until))
                             FROM lighting_overrides o
                             WHERE o.group_id = g.id AND o.until > %(since)s), '[]') AS overrides,
                   loc.lat, loc.lon
            FROM lighting_groups g
            LEFT JOIN lighting_schedules s ON s.group_id = g.id AND s.active
            LEFT JOIN LATERAL (
                SELECT avg(p.lat) AS lat, avg(p.lon) AS lon FROM poles p
                WHERE p.lat IS NOT NULL AND p.lon IS NOT NULL
                  AND ((g.road IS NOT NULL AND p.road = g.road)
                       OR p.id IN (SELECT m.member_id FROM lighting_group_members m
                                   WHERE m.group_id = g.id AND m.kind = 'pole')
                       OR p.id IN (SELECT d.pole_id FROM lighting_group_members m
                                   JOIN devices d ON d.id = m.member_id
                                   WHERE m.group_id = g.id AND m.kind = 'device'))
            ) loc ON true
            WHERE (%(group)s::text IS NULL OR g.id = %(group)s)
            ORDER BY g.id
            """,
            {"since": since, "group": group_id},
        )

    async def last_dispatches(self, group_id: str, n: int = 2) -> list[Row]:
        return await self._all(
            "SELECT group_id, instant, level, source, dispatched_at, issued_at, commands"
            " FROM lighting_dispatches WHERE group_id = %s ORDER BY instant DESC LIMIT %s",
            (group_id, n),
        )

    async def dispatches(self, group_id: str, *, before: datetime | None, limit: int) -> list[Row]:
        return await self._all(
            "SELECT group_id, instant, level, source, dispatched_at, issued_at, commands"
            " FROM lighting_dispatches WHERE group_id = %(g)s"
            " AND (%(before)s::timestamptz IS NULL OR instant < %(before)s)"
            " ORDER BY instant DESC LIMIT %(limit)s",
            {"g": group_id, "before": before, "limit": limit},
        )

    async def claim(self, group_id: str, instant: datetime, level: int, source: str) -> bool:
        """Record the step as dispatched, unless this or a newer step already is.

        The group row is locked for the check and insert, so two gateways (or a
        tick racing an old one) cannot both claim steps of one group."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT 1 FROM lighting_groups WHERE id = %s FOR UPDATE", (group_id,)
            )
            if await cur.fetchone() is None:
                return False
            cur = await conn.execute(
                "INSERT INTO lighting_dispatches (group_id, instant, level, source)"
                " SELECT %(g)s, %(t)s, %(level)s, %(source)s"
                " WHERE NOT EXISTS (SELECT 1 FROM lighting_dispatches"
                "                   WHERE group_id = %(g)s AND instant >= %(t)s)"
                " ON CONFLICT (group_id, instant) DO NOTHING",
                {"g": group_id, "t": instant, "level": level, "source": source},
            )
            return cur.rowcount == 1

    async def issued(self, group_id: str, instant: datetime, commands: list[str]) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE lighting_dispatches SET issued_at = now(), commands = %s::jsonb"
                " WHERE group_id = %s AND instant = %s",
                (orjson.dumps(commands).decode(), group_id, instant),
            )

    async def lamps_to_reconcile(self, command_ids: Sequence[str], max_tries: int) -> list[str]:
        """Of the lamps a step's commands went to: those whose newest command of
        some name failed or timed out, none is still under way, that name was
        tried at most `max_tries` times for the step, and that are online now
        (polled: their polls; publishing: their recorded state, else their
        pole's presence)."""
        if not command_ids:
            return []
        rows = await self._all(
            """
            WITH cmds AS (
                SELECT c.device_id, c.command, c.state,
                       row_number() OVER w AS newest,
                       count(*) OVER (PARTITION BY c.device_id, c.command) AS tries
                FROM device_commands c WHERE c.id = ANY(%(ids)s::uuid[])
                WINDOW w AS (PARTITION BY c.device_id, c.command ORDER BY c.seq DESC)
            ),
            lamps AS (
                SELECT device_id,
                       bool_or(state IN ('failed', 'timed_out') AND tries <= %(max)s) AS failed,
                       bool_or(state IN ('pending', 'sent')) AS under_way
                FROM cmds WHERE newest = 1 GROUP BY device_id
            )
            SELECT l.device_id FROM lamps l
            JOIN devices d ON d.id = l.device_id
            LEFT JOIN device_state st ON st.device_id = d.id
            LEFT JOIN pole_presence pr ON pr.pole_id = d.pole_id
            WHERE l.failed AND NOT l.under_way
              AND CASE WHEN d.transport = 'modbus' THEN st.online
                       ELSE coalesce(st.online, pr.state = 'online') END
            ORDER BY l.device_id
            """,
            {"ids": list(command_ids), "max": max_tries},
        )
        return [str(r["device_id"]) for r in rows]

    async def add_commands(self, group_id: str, instant: datetime, commands: list[str]) -> None:
        """More commands for a step (a lamp that came back got the step's level)."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE lighting_dispatches SET commands = coalesce(commands, '[]'::jsonb)"
                " || %s::jsonb WHERE group_id = %s AND instant = %s",
                (orjson.dumps(commands).decode(), group_id, instant),
            )

    # ------------------------------------------------------------------ energy

    async def energy(
        self, devices: Sequence[str], start: datetime, end: datetime, max_gap: timedelta
    ) -> list[Row]:
        """Per device: kWh used (counter rises), hours lit (lamp_on held until the
        next sample, at most max_gap), and the highest power seen in the 90 days
        before `end` (the full-power estimate)."""
        return await self._all(
            """
            WITH dev AS (SELECT unnest(%(devices)s::text[]) AS id),
            used AS (
                SELECT device_id, sum(greatest(d, 0)) AS kwh FROM (
                    SELECT device_id,
                           value - lag(value) OVER (PARTITION BY device_id ORDER BY ts) AS d
                    FROM telemetry
                    WHERE device_id = ANY(%(devices)s) AND metric = 'energy_kwh'
                      AND ts >= %(start)s AND ts <= %(end)s
                ) x GROUP BY device_id
            ),
            lit AS (
                SELECT device_id,
                       sum(CASE WHEN value >= 0.5 THEN least(
                           extract(epoch FROM coalesce(nxt, %(end)s) - ts), %(gap)s) ELSE 0 END
                       ) / 3600.0 AS hours
                FROM (
                    SELECT device_id, ts, value,
                           lead(ts) OVER (PARTITION BY device_id ORDER BY ts) AS nxt
                    FROM telemetry
                    WHERE device_id = ANY(%(devices)s) AND metric = 'lamp_on'
                      AND ts >= %(start)s AND ts < %(end)s
                ) y GROUP BY device_id
            ),
            peak AS (
                SELECT device_id, max(value) AS w FROM telemetry
                WHERE device_id = ANY(%(devices)s) AND metric = 'power_w'
                  AND ts > %(end)s - interval '90 days' AND ts <= %(end)s
                GROUP BY device_id
            )
            SELECT dev.id AS device_id, coalesce(used.kwh, 0) AS used_kwh,
                   coalesce(lit.hours, 0) AS lit_hours, peak.w AS peak_w
            FROM dev LEFT JOIN used ON used.device_id = dev.id
            LEFT JOIN lit ON lit.device_id = dev.id
            LEFT JOIN peak ON peak.device_id = dev.id
            ORDER BY dev.id
            """,
            {
                "devices": list(devices),
                "start": start,
                "end": end,
                "gap": max_gap.total_seconds(),
            },
        )
