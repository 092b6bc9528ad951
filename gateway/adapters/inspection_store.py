"""Inspection plans and records in PostgreSQL, and the generation of each
plan's inspection work order once per period."""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.work_orders import MaintenanceRules
from gateway.core import maintenance as mt

Row = dict[str, Any]

PLAN_COLUMNS = (
    "id, name, pole_ids, road, every_days, starts_on, checklist, priority, active,"
    " last_period, created_at, updated_at"
)
RECORD_COLUMNS = "id, plan_id, work_order_id, pole_id, results, passed, note, by, at"


def _params(values: dict[str, object]) -> tuple[dict[str, object], list[str]]:
    """Values with jsonb columns serialised, and the SQL placeholder for each."""
    out, marks = dict(values), []
    for k in values:
        if k in ("checklist", "results"):
            out[k] = orjson.dumps(values[k]).decode()
            marks.append(f"%({k})s::jsonb")
        else:
            marks.append(f"%({k})s")
    return out, marks


class InspectionStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def _all(self, sql: str, args: dict[str, object]) -> list[Row]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, args)
            return await cur.fetchall()

    async def plans(self, *, active: bool | None, after: int | None, limit: int) -> list[Row]:
        return await self._all(
            f"SELECT {PLAN_COLUMNS} FROM inspection_plans"
            " WHERE (%(active)s::boolean IS NULL OR active = %(active)s)"
            " AND (%(after)s::bigint IS NULL OR id > %(after)s) ORDER BY id LIMIT %(limit)s",
            {"active": active, "after": after, "limit": limit},
        )

    async def plan(
        self, plan_id: int, *, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> Row | None:
        sql = f"SELECT {PLAN_COLUMNS} FROM inspection_plans WHERE id = %(id)s"
        if conn is None:
            rows = await self._all(sql, {"id": plan_id})
            return rows[0] if rows else None
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql + " FOR UPDATE", {"id": plan_id})
            return await cur.fetchone()

    async def create_plan(
        self, conn: psycopg.AsyncConnection[Any], values: dict[str, object]
    ) -> Row:
        args, marks = _params(values)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"INSERT INTO inspection_plans ({', '.join(values)}) VALUES ({', '.join(marks)})"
                f" RETURNING {PLAN_COLUMNS}",
                args,
            )
            row = await cur.fetchone()
            assert row is not None
            return row

    async def update_plan(
        self, conn: psycopg.AsyncConnection[Any], plan_id: int, values: dict[str, object]
    ) -> Row:
        args, marks = _params(values)
        sets = ", ".join(f"{k} = {m}" for k, m in zip(values, marks, strict=True))
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"UPDATE inspection_plans SET {sets}, updated_at = now() WHERE id = %(id)s"
                f" RETURNING {PLAN_COLUMNS}",
                {**args, "id": plan_id},
            )
            row = await cur.fetchone()
            assert row is not None
            return row

    async def plan_poles(self, plan: Row) -> list[str]:
        """The poles a plan covers now: its list, or the poles on its road."""
        if plan["pole_ids"] is not None:
            return list(plan["pole_ids"])
        rows = await self._all(
            "SELECT id FROM poles WHERE road = %(road)s ORDER BY id", {"road": plan["road"]}
        )
        return [r["id"] for r in rows]

    async def unknown_poles(self, pole_ids: list[str]) -> list[str]:
        rows = await self._all(
            "SELECT p FROM unnest(%(ids)s::text[]) AS p"
            " WHERE NOT EXISTS (SELECT 1 FROM poles WHERE id = p)",
            {"ids": pole_ids},
        )
        return [r["p"] for r in rows]

    async def records(
        self,
        *,
        plan: int | None,
        pole: str | None,
        work_order: int | None,
        after: int | None,
        limit: int,
    ) -> list[Row]:
        return await self._all(
            f"SELECT {RECORD_COLUMNS} FROM inspection_records"
            " WHERE (%(plan)s::bigint IS NULL OR plan_id = %(plan)s)"
            " AND (%(pole)s::text IS NULL OR pole_id = %(pole)s)"
            " AND (%(wo)s::bigint IS NULL OR work_order_id = %(wo)s)"
            " AND (%(after)s::bigint IS NULL OR id > %(after)s) ORDER BY id LIMIT %(limit)s",
            {"plan": plan, "pole": pole, "wo": work_order, "after": after, "limit": limit},
        )

    async def add_record(
        self, conn: psycopg.AsyncConnection[Any], values: dict[str, object]
    ) -> Row | None:
        """The new record, or None when the pole already has one on this order."""
        args, marks = _params(values)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"INSERT INTO inspection_records ({', '.join(values)})"
                f" VALUES ({', '.join(marks)})"
                f" ON CONFLICT (work_order_id, pole_id) DO NOTHING RETURNING {RECORD_COLUMNS}",
                args,
            )
            return await cur.fetchone()

    async def generate_due(self, rules: MaintenanceRules, now: datetime) -> list[int]:
        """Open the inspection order of every active plan whose current period has
        none yet; returns the new orders' ids. Safe to run concurrently and
        after restarts: plans are locked while generating, each plan remembers
        its last generated period, and (plan, period) is unique in work_orders."""
        today = now.astimezone(rules.calendar.tz).date()
        created: list[int] = []
        async with self._pool.connection() as conn, conn.transaction():
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    f"SELECT {PLAN_COLUMNS} FROM inspection_plans WHERE active"
                    " ORDER BY id FOR UPDATE SKIP LOCKED"
                )
                plans = await cur.fetchall()
            for plan in plans:
                order_id = await self._generate(conn, plan, today, rules)
                if order_id is not None:
                    created.append(order_id)
        return created

    async def _generate(
        self, conn: psycopg.AsyncConnection[Any], plan: Row, today: date, rules: MaintenanceRules
    ) -> int | None:
        period = mt.due_period(
            starts_on=plan["starts_on"],
            every_days=plan["every_days"],
            last_period=plan["last_period"],
            today=today,
        )
        if period is None:
            return None
        due = datetime.combine(period.ends, time(0), rules.calendar.tz)
        cur = await conn.execute(
            "INSERT INTO work_orders (kind, source, title, description, plan_id, period,"
            " priority, resolution_due)"
            " VALUES ('inspection', 'schedule', %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (plan_id, period) DO NOTHING RETURNING id",
            (
                f"Inspection: {plan['name']} ({period.starts.isoformat()})",
                f"Period {period.starts.isoformat()} to {period.ends.isoformat()} (exclusive)",
                plan["id"],
                period.index,
                plan["priority"],
                due,
            ),
        )
        row = await cur.fetchone()
        await conn.execute(
            "UPDATE inspection_plans SET last_period = GREATEST(COALESCE(last_period, -1), %s)"
            " WHERE id = %s",
            (period.index, plan["id"]),
        )
        return None if row is None else int(row[0])
