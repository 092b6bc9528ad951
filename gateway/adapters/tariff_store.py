"""Tariff versions against the database (migration 0011): a name's versions,
each valid on [valid_from, valid_to), never overlapping; a new version is
numbered after the last, an open-ended one can be given its end.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from gateway.core import tariffs as tf

Row = dict[str, Any]

# The tariff of a lease whose rates name none.
DEFAULT_TARIFF = "default"


class TariffOverlap(Exception):
    def __init__(self, other: Row) -> None:
        super().__init__("overlaps the validity of another version of this tariff")
        self.other = other


class TariffEnded(Exception):
    """The version has an end already (only an open-ended one can be given one)."""

    def __init__(self, row: Row) -> None:
        super().__init__("the tariff version has an end already")
        self.row = row


def tariff_of(row: Row) -> tf.Tariff:
    return tf.Tariff(
        id=row["id"],
        name=row["name"],
        version=row["version"],
        valid_from=row["valid_from"],
        valid_to=row["valid_to"],
        definition=tf.TariffDefinition.model_validate(row["definition"]),
        estimate_gaps=row["estimate_gaps"],
    )


class TariffStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def tariff_page(self, name: str | None, *, after: int | None, limit: int) -> list[Row]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT * FROM tariffs WHERE (%(name)s::text IS NULL OR name = %(name)s)"
                " AND id > %(after)s ORDER BY id LIMIT %(limit)s",
                {"name": name, "after": after or 0, "limit": limit},
            )
            return await cur.fetchall()

    async def tariff(self, tariff_id: int) -> Row | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT * FROM tariffs WHERE id = %s", (tariff_id,))
            return await cur.fetchone()

    async def versions(self, conn: psycopg.AsyncConnection[Any], name: str) -> list[tf.Tariff]:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT * FROM tariffs WHERE name = %s ORDER BY valid_from", (name,))
            return [tariff_of(r) for r in await cur.fetchall()]

    async def create_tariff(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        name: str,
        valid_from: datetime,
        valid_to: datetime | None,
        definition: dict[str, Any],
        estimate_gaps: bool,
    ) -> Row:
        """A new version of `name` (numbered after the last); refuses an overlap."""
        # Serialise versions of one name: the overlap check and the insert are one step.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tariff:' || %s))", (name,))
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT id, version, valid_from, valid_to FROM tariffs WHERE name = %s"
                " AND (valid_to IS NULL OR %s < valid_to)"
                " AND (%s::timestamptz IS NULL OR valid_from < %s) ORDER BY valid_from LIMIT 1",
                (name, valid_from, valid_to, valid_to),
            )
            other = await cur.fetchone()
            if other is not None:
                raise TariffOverlap(other)
            await cur.execute(
                "INSERT INTO tariffs (name, version, valid_from, valid_to, definition,"
                " estimate_gaps) SELECT %s, coalesce(max(version), 0) + 1, %s, %s, %s, %s"
                " FROM tariffs WHERE name = %s RETURNING *",
                (name, valid_from, valid_to, Jsonb(definition), estimate_gaps, name),
            )
            row = await cur.fetchone()
            assert row is not None
            return row

    async def end_tariff(
        self, conn: psycopg.AsyncConnection[Any], tariff_id: int, valid_to: datetime
    ) -> tuple[Row, Row] | None:
        """Give an open-ended version its end (exclusive): (before, after), None if
        there is no such version. Raises TariffEnded if it has an end already."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT name FROM tariffs WHERE id = %s", (tariff_id,))
            found = await cur.fetchone()
            if found is None:
                return None
            # The same lock as a new version of the name takes.
            await cur.execute(
                "SELECT pg_advisory_xact_lock(hashtext('tariff:' || %s))", (found["name"],)
            )
            await cur.execute("SELECT * FROM tariffs WHERE id = %s FOR UPDATE", (tariff_id,))
            before = await cur.fetchone()
            assert before is not None
            if before["valid_to"] is not None:
                raise TariffEnded(before)
            await cur.execute(
                "UPDATE tariffs SET valid_to = %s WHERE id = %s RETURNING *", (valid_to, tariff_id)
            )
            after = await cur.fetchone()
            assert after is not None
            return before, after

    async def estimate_gaps(self, names: Iterable[str], start: datetime, end: datetime) -> bool:
        """Whether a tariff of these names valid in [start, end) asks for estimates."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT bool_or(estimate_gaps) FROM tariffs WHERE name = ANY(%s)"
                " AND valid_from < %s AND (valid_to IS NULL OR valid_to > %s)",
                (sorted(set(names)), end, start),
            )
            row = await cur.fetchone()
            return bool(row and row[0])

    async def tariffs_named(self, name: str) -> list[tf.Tariff]:
        async with self._pool.connection() as conn:
            return await self.versions(conn, name)
