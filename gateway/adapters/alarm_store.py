"""Alarms in PostgreSQL (tables alarms, alarm_rule_overrides; migration 0005).

`apply` records the engine's transitions in one transaction and calls the
registered AlarmListeners (work orders, emergencies) inside it, so an alarm and
what it caused commit together. At most one alarm per (rule, device) is not yet
cleared (a partial unique index): a repeat raise updates that one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from gateway.core.alarms import Clear, Raise, Transition, Update
from gateway.ops_events import AlarmEvent, AlarmListener

Row = dict[str, Any]
Conn = psycopg.AsyncConnection[Any]
# Whether an alarm of a rule marked unless_work_order is expected on this pole.
Suppress = Callable[[Conn, str], Awaitable[bool]]

COLUMNS = (
    "id, rule_key, fault, severity, pole_id, device_id, metric, state, first_seen, last_seen,"
    " count, value, message, acknowledged_by, acknowledged_at, cleared_at"
)


def _event(row: Row, state: str, at: datetime) -> AlarmEvent:
    return AlarmEvent(
        alarm_id=int(row["id"]),
        rule=row["rule_key"],
        fault=row["fault"],
        severity=row["severity"],
        pole_id=row["pole_id"],
        device_id=row["device_id"],
        message=row["message"],
        at=at,
        state=state,
    )


class AlarmStore:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        listeners: Sequence[AlarmListener] = (),
        suppress: Suppress | None = None,
    ) -> None:
        self._pool = pool
        self.listeners: list[AlarmListener] = list(listeners)
        self._suppress = suppress

    # ------------------------------------------------------------------ engine side

    async def apply(self, transitions: Sequence[Transition]) -> None:
        """Record transitions in order, in one transaction with their listeners."""
        async with self._pool.connection() as conn, conn.transaction():
            for t in transitions:
                await self.apply_one(conn, t)

    async def apply_one(self, conn: Conn, t: Transition) -> None:
        async with conn.cursor(row_factory=dict_row) as cur:
            if isinstance(t, Raise):
                if (
                    t.rule.unless_work_order
                    and self._suppress is not None
                    and await self._suppress(conn, t.pole_id)
                ):
                    return
                await cur.execute(
                    "INSERT INTO alarms (rule_key, fault, severity, pole_id, device_id, metric,"
                    " first_seen, last_seen, value, message)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (rule_key, device_id) WHERE state <> 'cleared' DO UPDATE"
                    " SET count = alarms.count + 1,"
                    " last_seen = GREATEST(alarms.last_seen, EXCLUDED.last_seen),"
                    " value = COALESCE(EXCLUDED.value, alarms.value)"
                    f" RETURNING {COLUMNS}, (xmax = 0) AS inserted",
                    (
                        t.rule.key,
                        t.rule.fault,
                        t.rule.severity,
                        t.pole_id,
                        t.device_id,
                        t.rule.metric,
                        t.at,
                        t.at,
                        t.value,
                        t.message,
                    ),
                )
                row = await cur.fetchone()
                assert row is not None
                if row["inserted"]:
                    for listener in self.listeners:
                        await listener.alarm_raised(conn, _event(row, "active", t.at))
            elif isinstance(t, Update):
                await cur.execute(
                    "UPDATE alarms SET count = count + %s, last_seen = GREATEST(last_seen, %s),"
                    " value = COALESCE(%s, value)"
                    " WHERE rule_key = %s AND device_id = %s AND state <> 'cleared'",
                    (t.count, t.at, t.value, t.rule.key, t.device_id),
                )
            elif isinstance(t, Clear):
                await cur.execute(
                    "UPDATE alarms SET state = 'cleared', cleared_at = now(),"
                    " value = COALESCE(%s, value)"
                    f" WHERE rule_key = %s AND device_id = %s AND state <> 'cleared'"
                    f" RETURNING {COLUMNS}",
                    (t.value, t.rule.key, t.device_id),
                )
                row = await cur.fetchone()
                if row is not None:
                    for listener in self.listeners:
                        await listener.alarm_cleared(conn, _event(row, "cleared", t.at))

    async def open_keys(self) -> list[tuple[str, str]]:
        """(rule, device) of every alarm not yet cleared."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT rule_key, device_id FROM alarms WHERE state <> 'cleared'"
            )
            return [(r[0], r[1]) for r in await cur.fetchall()]

    # ------------------------------------------------------------------ overrides

    async def overrides(self) -> dict[str, dict[str, Any]]:
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT rule_key, settings FROM alarm_rule_overrides")
            return {r[0]: dict(r[1]) for r in await cur.fetchall()}

    async def override_rows(self) -> dict[str, Row]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT rule_key, settings, updated_by, updated_at FROM alarm_rule_overrides"
            )
            return {r["rule_key"]: r for r in await cur.fetchall()}

    @staticmethod
    async def set_override(conn: Conn, key: str, settings: dict[str, Any], by: str) -> None:
        await conn.execute(
            "INSERT INTO alarm_rule_overrides (rule_key, settings, updated_by)"
            " VALUES (%s, %s::jsonb, %s) ON CONFLICT (rule_key) DO UPDATE"
            " SET settings = EXCLUDED.settings, updated_by = EXCLUDED.updated_by,"
            " updated_at = now()",
            (key, orjson.dumps(settings).decode(), by),
        )

    @staticmethod
    async def delete_override(conn: Conn, key: str) -> bool:
        cur = await conn.execute("DELETE FROM alarm_rule_overrides WHERE rule_key = %s", (key,))
        return cur.rowcount > 0

    # ------------------------------------------------------------------ reads, ack

    async def page(
        self,
        *,
        state: str | None = None,
        severity: str | None = None,
        pole: str | None = None,
        device: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[Row]:
        """Newest first; `since`/`until` bound last_seen / first_seen (overlap)."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {COLUMNS} FROM alarms"
                " WHERE (%(state)s::text IS NULL OR state = %(state)s)"
                " AND (%(sev)s::text IS NULL OR severity = %(sev)s)"
                " AND (%(pole)s::text IS NULL OR pole_id = %(pole)s)"
                " AND (%(device)s::text IS NULL OR device_id = %(device)s)"
                " AND (%(since)s::timestamptz IS NULL OR last_seen >= %(since)s)"
                " AND (%(until)s::timestamptz IS NULL OR first_seen < %(until)s)"
                " AND (%(before)s::bigint IS NULL OR id < %(before)s)"
                " ORDER BY id DESC LIMIT %(limit)s",
                {
                    "state": state,
                    "sev": severity,
                    "pole": pole,
                    "device": device,
                    "since": since,
                    "until": until,
                    "before": before_id,
                    "limit": limit,
                },
            )
            return await cur.fetchall()

    @staticmethod
    async def get(conn: Conn, alarm_id: int, *, lock: bool = False) -> Row | None:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {COLUMNS} FROM alarms WHERE id = %s" + (" FOR UPDATE" if lock else ""),
                (alarm_id,),
            )
            return await cur.fetchone()

    @staticmethod
    async def acknowledge(conn: Conn, alarm_id: int, by: str) -> Row | None:
        """active -> acknowledged; None when the alarm is not active."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE alarms SET state = 'acknowledged', acknowledged_by = %s,"
                f" acknowledged_at = now() WHERE id = %s AND state = 'active' RETURNING {COLUMNS}",
                (by, alarm_id),
            )
            return await cur.fetchone()
