"""Work orders in PostgreSQL (tables work_orders, work_order_notes,
work_order_attachments), the alarm → work-order policy, and the question the
alarm engine asks before raising a door-open alarm."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from gateway.adapters import audit, emergency_store
from gateway.config import Settings
from gateway.core import maintenance as mt
from gateway.core.auth import SYSTEM
from gateway.ops_events import AlarmEvent

Row = dict[str, Any]

COLUMNS = (
    "id, kind, source, title, description, pole_id, device_id, alarm_id, fault, plan_id,"
    " period, priority, state, assignee, created_by, response_due, resolution_due,"
    " assigned_at, started_at, resolved_at, closed_at, resolution, spare_parts,"
    " created_at, updated_at"
)

# core.maintenance.overdue() in SQL (LEAST ignores NULLs), evaluated at %(now)s.
OVERDUE_SQL = (
    "(state <> 'cancelled' AND ("
    "(response_due IS NOT NULL AND COALESCE(LEAST(assigned_at, started_at), %(now)s)"
    " > response_due) OR "
    "(resolution_due IS NOT NULL AND COALESCE(resolved_at, %(now)s) > resolution_due)))"
)

_UNFINISHED = "state NOT IN ('closed', 'cancelled')"


@dataclass(frozen=True, slots=True)
class MaintenanceRules:
    """The configurable maintenance rules, parsed once from Settings."""

    deadlines: dict[mt.Priority, mt.Limits]
    calendar: mt.Calendar
    auto_open: dict[str, str] = field(default_factory=lambda: dict(mt.DEFAULT_AUTO_OPEN))
    attachment_max_bytes: int = 5 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> MaintenanceRules:
        mt.check_auto_open_policy(settings.workorder_auto_open)
        calendar = mt.Calendar(
            ZoneInfo(settings.site_timezone),
            frozenset(date.fromisoformat(d) for d in settings.workorder_holidays),
            frozenset(date.fromisoformat(d) for d in settings.workorder_workdays),
        )
        return cls(
            deadlines=mt.deadline_table(settings.workorder_deadlines),
            calendar=calendar,
            auto_open=dict(settings.workorder_auto_open),
            attachment_max_bytes=settings.workorder_attachment_max_bytes,
        )

    def deadlines_for(self, priority: mt.Priority, opened: datetime) -> mt.Deadlines:
        return mt.deadlines(priority, opened, self.deadlines, self.calendar)


def with_overdue(row: Row, now: datetime) -> Row:
    """The row with its computed `response_overdue`, `resolution_overdue`, `overdue`."""
    late = mt.overdue(
        state=mt.State(row["state"]),
        response_due=row["response_due"],
        resolution_due=row["resolution_due"],
        assigned_at=row["assigned_at"],
        started_at=row["started_at"],
        resolved_at=row["resolved_at"],
        now=now,
    )
    return {
        **row,
        "response_overdue": late.response,
        "resolution_overdue": late.resolution,
        "overdue": late.any,
    }


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderFilter:
    state: str | None = None
    priority: str | None = None
    pole: str | None = None
    assignee: int | None = None
    kind: str | None = None
    overdue: bool | None = None


class WorkOrderStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def page(
        self, flt: OrderFilter, *, after: int | None, limit: int, now: datetime
    ) -> list[Row]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {COLUMNS} FROM work_orders"
                " WHERE (%(state)s::text IS NULL OR state = %(state)s)"
                " AND (%(priority)s::text IS NULL OR priority = %(priority)s)"
                " AND (%(pole)s::text IS NULL OR pole_id = %(pole)s)"
                " AND (%(assignee)s::bigint IS NULL OR assignee = %(assignee)s)"
                " AND (%(kind)s::text IS NULL OR kind = %(kind)s)"
                f" AND (%(overdue)s::boolean IS NULL OR {OVERDUE_SQL} = %(overdue)s)"
                " AND (%(after)s::bigint IS NULL OR id > %(after)s)"
                " ORDER BY id LIMIT %(limit)s",
                {
                    "state": flt.state,
                    "priority": flt.priority,
                    "pole": flt.pole,
                    "assignee": flt.assignee,
                    "kind": flt.kind,
                    "overdue": flt.overdue,
                    "after": after,
                    "limit": limit,
                    "now": now,
                },
            )
            return [with_overdue(r, now) for r in await cur.fetchall()]

    async def get(
        self, order_id: int, *, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> Row | None:
        """One order; with `conn` (a transaction) the row is locked for update."""
        if conn is not None:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    f"SELECT {COLUMNS} FROM work_orders WHERE id = %s FOR UPDATE", (order_id,)
                )
                return await cur.fetchone()
        async with self._pool.connection() as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {COLUMNS} FROM work_orders WHERE id = %s", (order_id,))
            return await cur.fetchone()

    async def create(self, conn: psycopg.AsyncConnection[Any], values: dict[str, object]) -> Row:
        values = dict(values)
        if "spare_parts" in values:
            values["spare_parts"] = _json(values["spare_parts"])
        names = ", ".join(values)
        marks = ", ".join(f"%({k})s::jsonb" if k == "spare_parts" else f"%({k})s" for k in values)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"INSERT INTO work_orders ({names}) VALUES ({marks}) RETURNING {COLUMNS}", values
            )
            row = await cur.fetchone()
            assert row is not None
            return row

    async def update(
        self, conn: psycopg.AsyncConnection[Any], order_id: int, values: dict[str, object]
    ) -> Row:
        """Set the given columns (names come from code, never from a request) and
        updated_at; returns the new row."""
        values = dict(values)
        if "spare_parts" in values:
            values["spare_parts"] = _json(values["spare_parts"])
        sets = ", ".join(
            f"{k} = %({k})s::jsonb" if k == "spare_parts" else f"{k} = %({k})s" for k in values
        )
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"UPDATE work_orders SET {sets}, updated_at = now() WHERE id = %(id)s"
                f" RETURNING {COLUMNS}",
                {**values, "id": order_id},
            )
            row = await cur.fetchone()
            assert row is not None
            return row

    async def add_note(
        self,
        conn: psycopg.AsyncConnection[Any],
        order_id: int,
        *,
        author: int | None,
        text: str,
        kind: str = "note",
        from_state: str | None = None,
        to_state: str | None = None,
        alarm_id: int | None = None,
    ) -> Row:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO work_order_notes"
                " (work_order_id, author, kind, text, from_state, to_state, alarm_id)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " RETURNING id, work_order_id, at, author, kind, text, from_state, to_state,"
                " alarm_id",
                (order_id, author, kind, text, from_state, to_state, alarm_id),
            )
            row = await cur.fetchone()
            assert row is not None
            return row

    async def notes(self, order_id: int, *, after: int | None, limit: int) -> list[Row]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT id, work_order_id, at, author, kind, text, from_state, to_state, alarm_id"
                " FROM work_order_notes WHERE work_order_id = %s"
                " AND (%s::bigint IS NULL OR id > %s) ORDER BY id LIMIT %s",
                (order_id, after, after, limit),
            )
            return await cur.fetchall()

    async def add_attachment(
        self,
        conn: psycopg.AsyncConnection[Any],
        order_id: int,
        *,
        filename: str,
        content_type: str,
        data: bytes,
        sha256: bytes,
        by: int,
    ) -> Row:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO work_order_attachments"
                " (work_order_id, filename, content_type, size, sha256, data, uploaded_by)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)"
                f" RETURNING {_ATTACHMENT_COLUMNS}",
                (order_id, filename, content_type, len(data), sha256, data, by),
            )
            row = await cur.fetchone()
            assert row is not None
            return row

    async def attachments(self, order_id: int) -> list[Row]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_ATTACHMENT_COLUMNS} FROM work_order_attachments"
                " WHERE work_order_id = %s ORDER BY id",
                (order_id,),
            )
            return await cur.fetchall()

    async def attachment(self, order_id: int, attachment_id: int) -> Row | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_ATTACHMENT_COLUMNS}, data FROM work_order_attachments"
                " WHERE work_order_id = %s AND id = %s",
                (order_id, attachment_id),
            )
            return await cur.fetchone()

    async def staff_user(self, user_id: int) -> Row | None:
        """An enabled staff user (who may be assigned a work order), or None."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT id, name, role FROM users WHERE id = %s AND NOT disabled"
                " AND role IN ('admin', 'operator', 'maintainer')",
                (user_id,),
            )
            return await cur.fetchone()

    async def staff_users(self) -> list[Row]:
        """Every enabled staff user (who may be assigned a work order), by name."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT id, name, role FROM users WHERE NOT disabled"
                " AND role IN ('admin', 'operator', 'maintainer') ORDER BY name"
            )
            return await cur.fetchall()

    async def pole_exists(self, pole_id: str) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT 1 FROM poles WHERE id = %s", (pole_id,))
            return await cur.fetchone() is not None


_ATTACHMENT_COLUMNS = (
    "id, work_order_id, filename, content_type, size, encode(sha256, 'hex') AS sha256,"
    " uploaded_by, created_at"
)


class WorkOrderPolicy:
    """An AlarmListener: opens a repair order for an alarm the policy maps to a
    priority, at most one unfinished order per (pole, fault); later alarms of
    the same fault are noted on that order. Runs in the alarm's transaction."""

    def __init__(self, rules: MaintenanceRules) -> None:
        self._rules = rules

    async def alarm_raised(self, conn: psycopg.AsyncConnection[Any], alarm: AlarmEvent) -> None:
        priority = mt.auto_open_priority(
            self._rules.auto_open, severity=alarm.severity, fault=alarm.fault
        )
        if priority is None:
            return
        due = self._rules.deadlines_for(priority, alarm.at)
        cur = await conn.execute(
            "INSERT INTO work_orders (kind, source, title, description, pole_id, device_id,"
            " alarm_id, fault, priority, response_due, resolution_due, created_at, updated_at)"
            " VALUES ('repair', 'alarm', %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), now())"
            " ON CONFLICT (pole_id, fault)"
            f" WHERE fault IS NOT NULL AND {_UNFINISHED} DO NOTHING RETURNING id",
            (
                f"{alarm.fault} on {alarm.pole_id}",
                alarm.message,
                alarm.pole_id,
                alarm.device_id,
                alarm.alarm_id,
                alarm.fault,
                priority.value,
                due.response_due,
                due.resolution_due,
            ),
        )
        created = await cur.fetchone()
        if created is not None:
            order_id, text = int(created[0]), f"opened by alarm #{alarm.alarm_id}: {alarm.message}"
            await audit.append(
                conn,
                SYSTEM,
                "create",
                "work_order",
                order_id,
                after={
                    "alarm_id": alarm.alarm_id,
                    "fault": alarm.fault,
                    "priority": priority.value,
                },
            )
        else:
            order_id_ = await _unfinished_order(conn, alarm.pole_id, alarm.fault)
            if order_id_ is None:  # pragma: no cover - the conflicting row is locked for us
                return
            order_id, text = order_id_, f"alarm #{alarm.alarm_id} raised again: {alarm.message}"
        await _system_note(conn, order_id, text, alarm.alarm_id)
        # The emergency this alarm opened (if any, and if it was made first) links it.
        await emergency_store.link_alarm_work_order(conn, alarm.alarm_id, order_id)

    async def alarm_cleared(self, conn: psycopg.AsyncConnection[Any], alarm: AlarmEvent) -> None:
        order_id = await _unfinished_order(conn, alarm.pole_id, alarm.fault)
        if order_id is not None:
            await _system_note(conn, order_id, f"alarm #{alarm.alarm_id} cleared", alarm.alarm_id)


async def _unfinished_order(
    conn: psycopg.AsyncConnection[Any], pole_id: str, fault: str
) -> int | None:
    cur = await conn.execute(
        f"SELECT id FROM work_orders WHERE pole_id = %s AND fault = %s AND {_UNFINISHED}",
        (pole_id, fault),
    )
    row = await cur.fetchone()
    return None if row is None else int(row[0])


async def _system_note(
    conn: psycopg.AsyncConnection[Any], order_id: int, text: str, alarm_id: int
) -> None:
    await conn.execute(
        "INSERT INTO work_order_notes (work_order_id, author, kind, text, alarm_id)"
        " VALUES (%s, NULL, 'alarm', %s, %s)",
        (order_id, text, alarm_id),
    )


async def pole_has_open_work_order(conn: psycopg.AsyncConnection[Any], pole_id: str) -> bool:
    """Whether someone is dispatched to the pole: a repair order on it, or an
    inspection order whose plan covers it, is assigned or in progress. (An
    order still `open` has nobody on site yet, so it does not count.)"""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM work_orders w"
        " LEFT JOIN inspection_plans p ON p.id = w.plan_id"
        " WHERE w.state IN ('assigned', 'in_progress') AND ("
        "   w.pole_id = %(pole)s"
        "   OR %(pole)s = ANY (p.pole_ids)"
        "   OR p.road = (SELECT road FROM poles WHERE id = %(pole)s)))",
        {"pole": pole_id},
    )
    row = await cur.fetchone()
    return bool(row and row[0])


def utcnow() -> datetime:
    return datetime.now(UTC)
