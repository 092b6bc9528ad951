"""Alarms in PostgreSQL (tables alarms, alarm_rule_overrides; migration 0005) and
the alarm engine's position in the device events (alarm_progress; migration 0014).

`apply` records the engine's transitions in one transaction and calls the
registered AlarmListeners (work orders, emergencies) inside it, so an alarm and
what it caused commit together. At most one alarm per (rule, device) is not yet
cleared (a partial unique index): a repeat raise updates that one. The position
(`events_seq`: the last device event whose transitions are recorded) moves in
that same transaction, so after a crash the events past it are evaluated again
and the ones before it never are.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from gateway.core.alarms import Clear, Raise, Transition, Update
from gateway.core.readings import DeviceEvent
from gateway.ops_events import AlarmEvent, AlarmListener

log = logging.getLogger(__name__)

Row = dict[str, Any]
Conn = psycopg.AsyncConnection[Any]
# Whether an alarm of a rule marked unless_work_order is expected on this pole.
Suppress = Callable[[Conn, str], Awaitable[bool]]

COLUMNS = (
    "id, rule_key, fault, severity, pole_id, device_id, metric, state, first_seen, last_seen,"
    " count, value, message, acknowledged_by, acknowledged_at, ack_note, cleared_at"
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
        # Replicas: checks inside each transaction that this replica still leads
        # the alarms (LeaseKeeper.fence; raises LeaseLost), so a leader that lost
        # its lease while a write was under way cannot commit it.
        self.fence: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None

    # ------------------------------------------------------------------ engine side

    async def apply(
        self, transitions: Sequence[Transition], *, events_seq: int | None = None
    ) -> None:
        """Record transitions in order, in one transaction with their listeners,
        and move the events position to `events_seq` (when given) in it."""
        async with self._pool.connection() as conn, conn.transaction():
            if self.fence is not None:
                await self.fence(conn)
            for t in transitions:
                await self.apply_one(conn, t)
            if events_seq is not None:
                await self._advance(conn, events_seq)

    async def apply_each(
        self, transitions: Sequence[Transition], *, events_seq: int | None = None
    ) -> list[Transition]:
        """Like `apply`, but each transition in a savepoint of its own: one that
        fails is left out (and returned) and the rest still commit, with the
        position. For a list `apply` refused for its content."""
        failed: list[Transition] = []
        async with self._pool.connection() as conn, conn.transaction():
            if self.fence is not None:
                await self.fence(conn)
            for t in transitions:
                try:
                    async with conn.transaction():
                        await self.apply_one(conn, t)
                except psycopg.OperationalError:
                    raise  # the connection is gone: the whole transaction is lost
                except Exception:
                    log.exception(
                        "alarm transition %s for %s not recorded", t.rule.key, t.device_id
                    )
                    failed.append(t)
            if events_seq is not None:
                await self._advance(conn, events_seq)
        return failed

    # ------------------------------------------------------------------ events position

    @staticmethod
    async def _advance(conn: Conn, events_seq: int) -> None:
        await conn.execute(
            "UPDATE alarm_progress SET events_seq = GREATEST(events_seq, %s), updated_at = now()",
            (events_seq,),
        )

    async def save_position(self, events_seq: int) -> None:
        """Move the events position on (events that caused no transition)."""
        async with self._pool.connection() as conn, conn.transaction():
            await self._advance(conn, events_seq)

    async def position(self) -> int:
        """The last device event (`device_events.seq`) the engine has processed."""
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT events_seq FROM alarm_progress")
            row = await cur.fetchone()
            return int(row[0]) if row is not None else 0

    async def events_after(self, seq: int, limit: int) -> list[tuple[int, DeviceEvent]]:
        """Device events committed after `seq`, in commit order."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT seq, ts, pole_id, device_id, type, data FROM device_events"
                " WHERE seq > %s ORDER BY seq LIMIT %s",
                (seq, limit),
            )
            return [
                (int(r[0]), DeviceEvent(r[1], r[2], r[3], r[4], dict(r[5] or {})))
                for r in await cur.fetchall()
            ]

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
        return [(rule, device) for rule, device, _ in await self.open_alarms()]

    async def open_alarms(self) -> list[tuple[str, str, datetime]]:
        """(rule, device, last seen) of every alarm not yet cleared."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT rule_key, device_id, last_seen FROM alarms WHERE state <> 'cleared'"
            )
            return [(r[0], r[1], r[2]) for r in await cur.fetchall()]

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
    async def acknowledge(
        conn: Conn, alarm_id: int, by: str, note: str | None = None
    ) -> Row | None:
        """active -> acknowledged; None when the alarm is not active."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE alarms SET state = 'acknowledged', acknowledged_by = %s,"
                " acknowledged_at = now(), ack_note = %s"
                f" WHERE id = %s AND state = 'active' RETURNING {COLUMNS}",
                (by, note, alarm_id),
            )
            return await cur.fetchone()
