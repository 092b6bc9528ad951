"""The operation archive's writes (poles, devices) and its history (table archive_history).

History is written by the database (trigger of migration 0004) on every insert
or update of a pole or device; the API names the person through the
transaction-local setting `polegw.actor`, set with `set_actor` before writing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.read_model import ARCHIVE_COLUMNS

Row = dict[str, Any]
Table = Literal["poles", "devices"]

POLE_COLUMNS = ("id", "name", "road", "lat", "lon", "height_m", *ARCHIVE_COLUMNS)
# What a write may set per table: columns named by the API's bodies only.
WRITABLE: dict[Table, frozenset[str]] = {
    "poles": frozenset(POLE_COLUMNS) - {"id"},
    "devices": frozenset(ARCHIVE_COLUMNS),
}


class Duplicate(Exception):
    """A row with that id exists already."""


async def set_actor(conn: psycopg.AsyncConnection[Any], actor: str) -> None:
    """Name the person behind this transaction's writes in archive_history."""
    await conn.execute("SELECT set_config('polegw.actor', %s, true)", (actor,))


async def create_pole(conn: psycopg.AsyncConnection[Any], values: Mapping[str, object]) -> Row:
    unknown = set(values) - set(POLE_COLUMNS)
    if unknown:
        raise ValueError(f"not pole columns: {sorted(unknown)}")
    names = list(values)
    query = sql.SQL(
        "INSERT INTO poles ({cols}) VALUES ({vals}) ON CONFLICT (id) DO NOTHING RETURNING *"
    ).format(
        cols=sql.SQL(", ").join(map(sql.Identifier, names)),
        vals=sql.SQL(", ").join(sql.Placeholder() * len(names)),
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, [values[n] for n in names])
        row = await cur.fetchone()
    if row is None:
        raise Duplicate(str(values.get("id")))
    return row


async def locked(conn: psycopg.AsyncConnection[Any], table: Table, ident: str) -> Row | None:
    """The row, locked until the transaction ends (the `before` of an update)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL("SELECT * FROM {} WHERE id = %s FOR UPDATE").format(sql.Identifier(table)),
            (ident,),
        )
        return await cur.fetchone()


async def update(
    conn: psycopg.AsyncConnection[Any], table: Table, ident: str, values: Mapping[str, object]
) -> Row | None:
    """Set `values` on the row; None when there is no such row. Touches
    updated_at only when something changed (history records only real changes)."""
    unknown = set(values) - WRITABLE[table]
    if unknown:
        raise ValueError(f"not writable {table} columns: {sorted(unknown)}")
    if not values:
        return await locked(conn, table, ident)
    names = list(values)
    query = sql.SQL(
        "UPDATE {table} SET {sets}, updated_at = now() WHERE id = %s"
        " AND ({cols}) IS DISTINCT FROM ({vals}) RETURNING *"
    ).format(
        table=sql.Identifier(table),
        sets=sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(n), sql.Placeholder()) for n in names
        ),
        cols=sql.SQL(", ").join(map(sql.Identifier, names)) + sql.SQL(", NULL"),
        vals=sql.SQL(", ").join(sql.Placeholder() * len(names)) + sql.SQL(", NULL"),
    )
    args = [values[n] for n in names]
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, [*args, ident, *args])
        row = await cur.fetchone()
    return row if row is not None else await locked(conn, table, ident)


class ArchiveHistory:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def entries(
        self, resource: Table, resource_id: str, *, before_id: int | None, limit: int
    ) -> list[Row]:
        """Newest first; `before_id` pages backwards."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT id, resource, resource_id, action, changed_at, changed_by, changes"
                " FROM archive_history WHERE resource = %s AND resource_id = %s"
                " AND (%s::bigint IS NULL OR id < %s) ORDER BY id DESC LIMIT %s",
                (resource, resource_id, before_id, before_id, limit),
            )
            return await cur.fetchall()

    async def exists(self, resource: Table, resource_id: str) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                sql.SQL("SELECT 1 FROM {} WHERE id = %s").format(sql.Identifier(resource)),
                (resource_id,),
            )
            return await cur.fetchone() is not None
