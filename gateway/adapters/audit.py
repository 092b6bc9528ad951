"""The audit log (table audit_log): appended in the transaction of the write it
records; the table refuses UPDATE, DELETE and TRUNCATE (migration 0003)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from gateway.core.auth import Principal

Row = dict[str, Any]

_COLUMNS = "id, at, actor, actor_role, action, resource, resource_id, before, after"


def _json(value: object) -> str | None:
    if value is None:
        return None
    # default=str: dates, decimals and UUIDs in a row snapshot become strings
    return orjson.dumps(value, default=str).decode()


async def append(
    conn: psycopg.AsyncConnection[Any],
    actor: Principal,
    action: str,
    resource: str,
    resource_id: object,
    before: object = None,
    after: object = None,
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, actor_role, action, resource, resource_id, before, after)"
        " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb)",
        (
            actor.name if actor.via == "token" else f"{actor.name} ({actor.via})",
            actor.audit_role,
            action,
            resource,
            str(resource_id),
            _json(before),
            _json(after),
        ),
    )


class AuditLog:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def entries(
        self,
        *,
        resource: str | None,
        resource_id: str | None,
        actor: str | None,
        start: datetime | None,
        end: datetime | None,
        before_id: int | None,
        action: str | None = None,
        limit: int,
    ) -> list[Row]:
        """Newest first; `before_id` pages backwards."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM audit_log"
                " WHERE (%(resource)s::text IS NULL OR resource = %(resource)s)"
                " AND (%(rid)s::text IS NULL OR resource_id = %(rid)s)"
                " AND (%(actor)s::text IS NULL OR actor = %(actor)s)"
                " AND (%(action)s::text IS NULL OR action = %(action)s)"
                " AND (%(start)s::timestamptz IS NULL OR at >= %(start)s)"
                " AND (%(end)s::timestamptz IS NULL OR at < %(end)s)"
                " AND (%(before)s::bigint IS NULL OR id < %(before)s)"
                " ORDER BY id DESC LIMIT %(limit)s",
                {
                    "resource": resource,
                    "rid": resource_id,
                    "actor": actor,
                    "action": action,
                    "start": start,
                    "end": end,
                    "before": before_id,
                    "limit": limit,
                },
            )
            return await cur.fetchall()
