"""Outages the operator recorded (migration 0012): a pole, or one port or slot on
it, unusable on [start, end). Every function takes the caller's connection."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

Row = dict[str, Any]
Conn = psycopg.AsyncConnection[Any]

COLUMNS = (
    'id, pole_id, port_id, slot_id, cause, start, "end", description, created_by, created_at,'
    " updated_by, updated_at"
)


async def _one(conn: Conn, sql: str, params: Any) -> Row | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchone()


async def problems(
    conn: Conn, *, pole_id: str, port_id: str | None, slot_id: str | None
) -> list[tuple[str, str]]:
    """(field, message) for a pole, port or slot that does not exist or is not
    on the pole."""
    row = await _one(
        conn,
        "SELECT (SELECT count(*) FROM poles WHERE id = %(pole)s) AS pole,"
        " (SELECT pole_id FROM ports WHERE id = %(port)s) AS port_pole,"
        " (SELECT pole_id FROM slots WHERE id = %(slot)s) AS slot_pole",
        {"pole": pole_id, "port": port_id, "slot": slot_id},
    )
    assert row is not None
    out = []
    if not row["pole"]:
        out.append(("pole_id", "no such pole"))
    if port_id is not None and row["port_pole"] != pole_id:
        out.append(("port_id", f"no port {port_id!r} on pole {pole_id!r}"))
    if slot_id is not None and row["slot_pole"] != pole_id:
        out.append(("slot_id", f"no slot {slot_id!r} on pole {pole_id!r}"))
    return out


async def create(
    conn: Conn,
    *,
    pole_id: str,
    port_id: str | None,
    slot_id: str | None,
    cause: str,
    start: datetime,
    end: datetime | None,
    description: str,
    by: str,
) -> Row:
    row = await _one(
        conn,
        'INSERT INTO outages (pole_id, port_id, slot_id, cause, start, "end", description,'
        f" created_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING {COLUMNS}",
        (pole_id, port_id, slot_id, cause, start, end, description, by),
    )
    assert row is not None
    return row


async def get(conn: Conn, outage_id: int, *, lock: bool = False) -> Row | None:
    return await _one(
        conn,
        f"SELECT {COLUMNS} FROM outages WHERE id = %s" + (" FOR UPDATE" if lock else ""),
        (outage_id,),
    )


async def update(conn: Conn, outage_id: int, changes: dict[str, Any], *, by: str) -> Row:
    """Set the given columns (of end, cause, description)."""
    allowed = {"end": '"end"', "cause": "cause", "description": "description"}
    sets = ", ".join(f"{allowed[k]} = %({k})s" for k in changes)
    row = await _one(
        conn,
        f"UPDATE outages SET {sets}{', ' if sets else ''}updated_by = %(by)s,"
        f" updated_at = now() WHERE id = %(id)s RETURNING {COLUMNS}",
        changes | {"by": by, "id": outage_id},
    )
    assert row is not None
    return row


async def page(
    conn: Conn,
    *,
    pole: str | None,
    since: datetime | None,
    until: datetime | None,
    before_id: int | None,
    limit: int,
) -> list[Row]:
    """Newest first; since/until select outages overlapping [since, until)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {COLUMNS} FROM outages"
            " WHERE (%(pole)s::text IS NULL OR pole_id = %(pole)s)"
            ' AND (%(since)s::timestamptz IS NULL OR "end" IS NULL OR "end" > %(since)s)'
            " AND (%(until)s::timestamptz IS NULL OR start < %(until)s)"
            " AND (%(before)s::bigint IS NULL OR id < %(before)s)"
            " ORDER BY id DESC LIMIT %(limit)s",
            {
                "pole": pole,
                "since": since,
                "until": until,
                "before": before_id,
                "limit": limit,
            },
        )
        return await cur.fetchall()
