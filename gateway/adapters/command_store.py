"""Tracked device commands in PostgreSQL (table device_commands).

With replicas (`replica` set: POLEGW_MQTT_SHARE_GROUP) a command is executed by
the replica that claimed it (`claimed_by`): the one that received it when it
can execute it itself, else the one that owns the device's Modbus bus, told on
the channel `polegw_commands` (gateway/command_routing.py). Every change of
state a replica makes is announced there too, so that a replica waiting for a
reply another replica received learns the outcome at once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.backoff import Backoff

log = logging.getLogger(__name__)

Row = dict[str, Any]

_COLUMNS = "id, device_id, command, args, state, error, result, created_at, sent_at, finished_at"

# Replicas tell each other about commands here: {"id", "device", "kind"} with kind
# "new" (waits for a claim) or "done" (finished; a waiting replica stops waiting).
CHANNEL = "polegw_commands"

# A replica counts as gone when its heartbeat lease (gateway/adapters/leases.py) is
# missing or expired and it claimed the command longer than a TTL ago (a replica
# that has just started may claim before its first heartbeat is written).
_GONE = (
    "claimed_by IS NOT NULL AND claimed_by <> %(me)s"
    " AND claimed_at < now() - make_interval(secs => %(ttl)s)"
    " AND NOT EXISTS (SELECT 1 FROM gateway_leases g"
    " WHERE g.name = 'replica/' || device_commands.claimed_by AND g.expires_at > now())"
)


def _notice(command_id: uuid.UUID, device_id: str, kind: str) -> str:
    return orjson.dumps({"id": str(command_id), "device": device_id, "kind": kind}).decode()


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
    def __init__(
        self, pool: AsyncConnectionPool, *, replica: str | None = None, lease_ttl_s: float = 6.0
    ) -> None:
        self._pool = pool
        # This replica's id (None: a single gateway, which executes every command
        # it records and claims nothing).
        self.replica = replica
        self._ttl_s = lease_ttl_s
        # Commands this store recorded before `abandon_unfinished` ran (the database
        # may come back in between): they are this run's, not the last run's.
        self._mine: set[uuid.UUID] | None = set()

    async def create(
        self, device_id: str, command: str, args: dict[str, object], *, claim: bool = True
    ) -> Row:
        """Record a pending command. With replicas: claimed by this replica
        (`claim`), or left for the owner of the device's bus, who is told."""
        claimed_by = self.replica if claim else None
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"INSERT INTO device_commands (id, device_id, command, args, state,"
                f" claimed_by, claimed_at) VALUES (%s, %s, %s, %s::jsonb, 'pending', %s,"
                f" CASE WHEN %s::text IS NULL THEN NULL ELSE now() END) RETURNING {_COLUMNS}",
                (
                    command_id := uuid.uuid4(),
                    device_id,
                    command,
                    orjson.dumps(args).decode(),
                    claimed_by,
                    claimed_by,
                ),
            )
            row = await cur.fetchone()
            assert row is not None
            if self.replica is not None and not claim:
                await cur.execute(
                    "SELECT pg_notify(%s, %s)", (CHANNEL, _notice(command_id, device_id, "new"))
                )
            if self._mine is not None:
                self._mine.add(command_id)
            return row

    async def claim(
        self,
        command_id: uuid.UUID,
        *,
        within_s: float,
        fence: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
    ) -> Row | None:
        """Claim a pending command nobody claimed (None: another replica was
        first, or it is finished). `fence` runs first in the same transaction (the
        bus lease still ours). A command older than `within_s` is not claimed but
        timed out: it is not carried out later than its sender may expect."""
        assert self.replica is not None
        async with self._pool.connection() as conn, conn.transaction():
            if fence is not None:
                await fence(conn)
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"UPDATE device_commands SET claimed_by = %(me)s, claimed_at = now()"
                f" WHERE id = %(id)s AND state = 'pending' AND claimed_by IS NULL"
                f" AND created_at > now() - make_interval(secs => %(within)s)"
                f" RETURNING {_COLUMNS}",
                {"me": self.replica, "id": command_id, "within": within_s},
            )
            row = await cur.fetchone()
            if row is not None and self._mine is not None:
                self._mine.add(command_id)
            return row

    async def unclaim(self, command_id: uuid.UUID, device_id: str) -> None:
        """Hand a claimed command on to the bus's new owner: one that was not
        started, or whose write was refused before anything was sent (the bus
        stopped under it), so it is pending again."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE device_commands SET claimed_by = NULL, claimed_at = NULL,"
                " state = 'pending', sent_at = NULL"
                " WHERE id = %s AND claimed_by = %s AND state IN ('pending', 'sent')",
                (command_id, self.replica),
            )
            if cur.rowcount:
                await conn.execute(
                    "SELECT pg_notify(%s, %s)", (CHANNEL, _notice(command_id, device_id, "new"))
                )

    async def unclaimed(self, limit: int = 200) -> list[tuple[uuid.UUID, str]]:
        """Pending commands nobody claimed, oldest first: (id, device id)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id, device_id FROM device_commands WHERE state = 'pending'"
                " AND claimed_by IS NULL ORDER BY seq LIMIT %s",
                (limit,),
            )
            return [(cid, str(device)) for cid, device in await cur.fetchall()]

    async def outcomes(self, command_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Row]:
        """The finished ones among `command_ids`: id -> {state, error}."""
        ids = list(command_ids)
        if not ids:
            return {}
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT id, state, error FROM device_commands WHERE id = ANY(%s)"
                " AND state NOT IN ('pending', 'sent')",
                (ids,),
            )
            return {row["id"]: row for row in await cur.fetchall()}

    async def replied(
        self, command_id: uuid.UUID, *, pole_id: str, device_id: str, ok: bool, error: str | None
    ) -> bool:
        """A pole's reply that reached this replica for a command another replica
        sent: record its outcome if the command is still open and was sent to
        that device of that pole. True when recorded."""
        state = "succeeded" if ok else "failed"
        error = None if ok else (error or "the device refused")
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE device_commands c SET state = %s, error = %s, finished_at = now()"
                " FROM devices d WHERE c.id = %s AND c.device_id = %s AND d.id = c.device_id"
                " AND d.pole_id = %s AND c.state IN ('pending', 'sent')"
                " AND c.claimed_by IS NOT NULL",
                (state, error, command_id, device_id, pole_id),
            )
            if not cur.rowcount:
                return False
            await conn.execute(_OUTCOME_TO_LEASES + " AND d.id = %s", (command_id,))
            await conn.execute(
                "SELECT pg_notify(%s, %s)", (CHANNEL, _notice(command_id, device_id, "done"))
            )
            return True

    async def sweep_gone(self, *, within_s: float) -> tuple[int, int, int]:
        """Commands the replicas cannot leave as they are: those a replica that is
        gone had sent are failed (they may have been carried out: never twice);
        those it had claimed but not sent go back to be claimed again; those
        nobody claimed within `within_s` are timed out.
        Returns (failed, handed back, timed out)."""
        params = {
            "me": self.replica,
            "ttl": self._ttl_s,
            "within": within_s,
            "why": f"no gateway replica took the command within {within_s:g}s"
            " (nobody owned the device's bus)",
        }
        async with self._pool.connection() as conn, conn.transaction():
            failed = await conn.execute(
                "UPDATE device_commands SET state = 'failed', finished_at = now(),"
                " error = 'the gateway replica executing it ('"
                " || claimed_by || ') stopped before the command finished'"
                f" WHERE state = 'sent' AND {_GONE}",
                params,
            )
            back = await conn.execute(
                "UPDATE device_commands SET claimed_by = NULL, claimed_at = NULL"
                f" WHERE state = 'pending' AND {_GONE}",
                params,
            )
            late = await conn.execute(
                "UPDATE device_commands SET state = 'timed_out', finished_at = now(),"
                " error = %(why)s"
                " WHERE state = 'pending' AND claimed_by IS NULL"
                " AND created_at < now() - make_interval(secs => %(within)s)",
                params,
            )
            if failed.rowcount or late.rowcount:
                await conn.execute(_OUTCOME_TO_LEASES)
            return failed.rowcount, back.rowcount, late.rowcount

    async def sent(self, command_id: uuid.UUID) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE device_commands SET state = 'sent', sent_at = now()"
                " WHERE id = %s AND state = 'pending'",
                (command_id,),
            )

    async def finished(
        self, command_id: uuid.UUID, state: str, *, error: str | None = None, result: object = None
    ) -> bool:
        """Record the outcome of an open command (False: it had ended already,
        e.g. a reply received by another replica recorded it)."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE device_commands SET state = %s, error = %s, result = %s::jsonb,"
                " finished_at = now() WHERE id = %s AND state IN ('pending', 'sent')"
                " RETURNING device_id",
                (
                    state,
                    error,
                    None if result is None else orjson.dumps(result).decode(),
                    command_id,
                ),
            )
            row = await cur.fetchone()
            if row is None:
                return False
            await conn.execute(_OUTCOME_TO_LEASES + " AND d.id = %s", (command_id,))
            if self.replica is not None:
                await conn.execute(
                    "SELECT pg_notify(%s, %s)", (CHANNEL, _notice(command_id, row[0], "done"))
                )
            return True

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
        """At start-up: commands a previous process did not finish are failed, with why.

        With replicas, only those this replica's previous run had claimed: the
        others are other replicas' (alive) or waiting for a claim; those of a
        replica that is gone are the sweep's (`sweep_gone`)."""
        mine = self.replica is not None
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE device_commands SET state = 'failed', finished_at = now(),"
                " error = 'the gateway restarted before the command finished'"
                " WHERE state IN ('pending', 'sent') AND NOT id = ANY(%s)"
                + (" AND claimed_by = %s" if mine else ""),
                (list(self._mine or ()), *([self.replica] if mine else [])),
            )
            await conn.execute(_OUTCOME_TO_LEASES)
            self._mine = None
            return cur.rowcount
