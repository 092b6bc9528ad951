"""Tracked device commands in PostgreSQL (table device_commands)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.backoff import Backoff

log = logging.getLogger(__name__)

Row = dict[str, Any]

_COLUMNS = "id, device_id, command, args, state, error, result, created_at, sent_at, finished_at"

# A lease's port switch (leases.port_switch, written by the lease route with the
# command id) takes the outcome of its command when the command ends.
# mounting_store.lease_port_switch takes it if the command ended first.
_OUTCOME_TO_LEASES = (
    "UPDATE leases l SET port_switch = l.port_switch || jsonb_build_object("
    "'state', d.state, 'command_error', d.error, 'finished_at', d.finished_at)"
    " FROM device_commands d"
    " WHERE l.port_switch ->> 'command_id' = d.id::text AND d.finished_at IS NOT NULL"
    " AND l.port_switch ->> 'finished_at' IS NULL"
)


class CommandStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        # Commands this store recorded before `abandon_unfinished` ran (the database
        # may come back in between): they are this run's, not the last run's.
        self._mine: set[uuid.UUID] | None = set()

    async def create(self, device_id: str, command: str, args: dict[str, object]) -> Row:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"INSERT INTO device_commands (id, device_id, command, args, state)"
                f" VALUES (%s, %s, %s, %s::jsonb, 'pending') RETURNING {_COLUMNS}",
                (command_id := uuid.uuid4(), device_id, command, orjson.dumps(args).decode()),
            )
            row = await cur.fetchone()
            assert row is not None
            if self._mine is not None:
                self._mine.add(command_id)
            return row

    async def sent(self, command_id: uuid.UUID) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE device_commands SET state = 'sent', sent_at = now()"
                " WHERE id = %s AND state = 'pending'",
                (command_id,),
            )

    async def finished(
        self, command_id: uuid.UUID, state: str, *, error: str | None = None, result: object = None
    ) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE device_commands SET state = %s, error = %s, result = %s::jsonb,"
                " finished_at = now() WHERE id = %s",
                (
                    state,
                    error,
                    None if result is None else orjson.dumps(result).decode(),
                    command_id,
                ),
            )
            await conn.execute(_OUTCOME_TO_LEASES + " AND d.id = %s", (command_id,))

    async def get(self, device_id: str, command_id: uuid.UUID) -> Row | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM device_commands WHERE device_id = %s AND id = %s",
                (device_id, command_id),
            )
            return await cur.fetchone()

    async def list(self, device_id: str, *, before: int | None, limit: int) -> list[Row]:
        """Newest first; `before` is the `seq` cursor of the previous page."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS}, seq FROM device_commands WHERE device_id = %s"
                " AND (%s::bigint IS NULL OR seq < %s) ORDER BY seq DESC LIMIT %s",
                (device_id, before, before, limit),
            )
            return await cur.fetchall()

    async def abandon_unfinished_when_reachable(self, stop: asyncio.Event) -> None:
        """At start-up, `abandon_unfinished` as soon as the database answers (the
        gateway starts while it is down too). Commands this run records once the
        database is back, before this has run, are left alone."""
        backoff = Backoff(first=0.5, cap=10.0)
        while not stop.is_set():
            try:
                abandoned = await self.abandon_unfinished()
            except (psycopg.OperationalError, PoolTimeout):
                try:
                    async with asyncio.timeout(backoff.next_delay()):
                        await stop.wait()
                except TimeoutError:
                    pass
                continue
            if abandoned:
                log.warning(
                    "%d commands left unfinished by the last run are marked failed", abandoned
                )
            return

    async def abandon_unfinished(self) -> int:
        """At start-up: commands a previous process did not finish are failed, with why."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE device_commands SET state = 'failed', finished_at = now(),"
                " error = 'the gateway restarted before the command finished'"
                " WHERE state IN ('pending', 'sent') AND NOT id = ANY(%s)",
                (list(self._mine or ()),),
            )
            await conn.execute(_OUTCOME_TO_LEASES)
            self._mine = None
            return cur.rowcount
