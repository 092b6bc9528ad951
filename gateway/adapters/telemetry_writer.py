"""Commit decoded batches to PostgreSQL: readings by binary COPY, idempotently.

The fast path COPYs a batch straight into `telemetry`. If any reading is
already stored (a redelivery after a crash, a replay), the unique index refuses
the COPY and the transaction with it; the batch is then committed again, its
readings COPYed into a session temp table and moved across with INSERT … ON
CONFLICT DO NOTHING. Either way a reading stored twice leaves one row, and the
common case, a batch of readings only, costs one COPY statement, which is its own
transaction (the connection is in autocommit mode; a batch with more in it is
written in an explicit transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import orjson
import psycopg
from psycopg import errors as pg_errors

from gateway.adapters.db import libpq_url
from gateway.core.readings import (
    Batch,
    DeadLetter,
    DeadLetterReason,
    DeviceEvent,
    Presence,
    Reading,
    WriteResult,
)
from gateway.errors import StorageUnavailable

log = logging.getLogger(__name__)

COPY_COLUMNS = "ts, device_id, metric, value, quality"
# pg_advisory_xact_lock key serialising the commits of device events (see _events).
EVENTS_SEQ_LOCK = 0x706F_6C65_6777_0001
COPY_TYPES = ["timestamptz", "text", "text", "float8", "int2"]


def dead_letter_key(d: DeadLetter) -> bytes:
    h = hashlib.sha256()
    for part in (d.topic, d.reason.value, d.device_id or "", d.metric or ""):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    h.update(d.payload)
    return h.digest()


class TelemetryWriter:
    """One connection, one transaction per batch. Not safe for concurrent use."""

    def __init__(self, database_url: str) -> None:
        self._url = libpq_url(database_url)
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def _connection(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            # Autocommit: a batch of readings alone is one COPY, a transaction by
            # itself (two round trips); anything more takes conn.transaction().
            self._conn = await psycopg.AsyncConnection.connect(
                self._url, application_name="polegw-writer", connect_timeout=5, autocommit=True
            )
            async with self._conn.transaction():
                await self._conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS telemetry_incoming"
                    " (LIKE telemetry INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def write(self, batch: Batch) -> WriteResult:
        """Commit the batch, or raise StorageUnavailable with nothing committed.

        If PostgreSQL refuses the batch for its content rather than its
        availability (a value it cannot store), the batch is salvaged: each
        part is committed on its own and what is refused becomes a dead letter,
        so one bad message can never stop ingestion or crash the gateway.
        """
        try:
            conn = await self._connection()
            try:
                try:
                    inserted = await self._commit(conn, batch, self._copy_readings)
                except pg_errors.UniqueViolation:
                    # Some reading is stored already (a redelivery, a replay) or is in
                    # this batch twice: the whole batch again, readings deduplicated.
                    inserted = await self._commit(conn, batch, self._merge_readings)
            except _UNAVAILABLE:
                raise
            except psycopg.DatabaseError as exc:
                if _is_unavailable(exc):
                    raise
                log.error("database refused a batch (%s); committing its parts one by one", exc)
                inserted = await self._salvage(conn, batch)
        except _UNAVAILABLE as exc:
            await self._discard()
            raise StorageUnavailable(str(exc).strip()) from exc
        except psycopg.DatabaseError as exc:  # only the unavailable kinds get here
            await self._discard()
            raise StorageUnavailable(str(exc).strip()) from exc
        except asyncio.CancelledError:
            # Abandoned mid-transaction (too slow; shutdown): the connection's state
            # is unknown, so it goes. If the commit did land, a retry is idempotent.
            await self._discard()
            raise
        return WriteResult(inserted, len(batch.readings) - inserted)

    async def _commit(
        self,
        conn: psycopg.AsyncConnection[tuple[object, ...]],
        batch: Batch,
        readings: _StoreReadings,
    ) -> int:
        if readings == self._copy_readings and not (
            batch.events or batch.presence or batch.dead_letters
        ):
            # Readings only (every Modbus poll, most MQTT batches): one COPY
            # statement commits all of them or none, without BEGIN and COMMIT.
            return await readings(conn, batch.readings)
        async with conn.transaction():
            inserted = await readings(conn, batch.readings)
            await self._events(conn, batch.events)
            await self._presence(conn, batch.presence)
            await self._dead_letters(conn, batch.dead_letters)
        return inserted

    async def _salvage(
        self, conn: psycopg.AsyncConnection[tuple[object, ...]], batch: Batch
    ) -> int:
        """Commit each item in its own transaction; refused items become dead letters."""
        refused: list[DeadLetter] = []
        inserted = 0
        for reading in batch.readings:
            try:
                async with conn.transaction():
                    inserted += await self._merge_readings(conn, [reading])
            except psycopg.DataError as exc:
                refused.append(
                    _refused(
                        f"reading {reading.device_id}/{reading.metric}",
                        exc,
                        reading.device_id,
                        reading.metric,
                    )
                )
        for event in batch.events:
            try:
                async with conn.transaction():
                    await self._events(conn, [event])
            except psycopg.DataError as exc:
                refused.append(
                    _refused(f"event {event.type}", exc, event.device_id, None, event.pole_id)
                )
        for presence in batch.presence:
            try:
                async with conn.transaction():
                    await self._presence(conn, [presence])
            except psycopg.DataError as exc:
                refused.append(_refused("presence", exc, None, None, presence.pole_id))
        async with conn.transaction():
            await self._dead_letters(conn, [*batch.dead_letters, *refused])
        return inserted

    async def _discard(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None

    @staticmethod
    async def _copy(
        conn: psycopg.AsyncConnection[tuple[object, ...]], table: str, rows: Sequence[Reading]
    ) -> None:
        async with (
            conn.cursor() as cur,
            cur.copy(f"COPY {table} ({COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(COPY_TYPES)
            # AsyncCopy.write_row's own two steps, without a coroutine per row: the
            # formatter buffers rows and hands back a block when it is full.
            formatter, writer = copy.formatter, copy.writer
            for row in rows:
                if data := formatter.write_row(row):
                    await writer.write(data)

    async def _copy_readings(
        self, conn: psycopg.AsyncConnection[tuple[object, ...]], readings: list[Reading]
    ) -> int:
        """The fast path: one COPY into `telemetry`. A reading stored already makes the
        unique index refuse it (UniqueViolation), and with it the whole transaction:
        no savepoint around it, which would cost two round trips per batch."""
        if readings:
            await self._copy(conn, "telemetry", readings)
        return len(readings)

    async def _merge_readings(
        self, conn: psycopg.AsyncConnection[tuple[object, ...]], readings: list[Reading]
    ) -> int:
        """Store the readings not stored yet, skipping the others (and a reading
        that is in the batch twice); the number stored."""
        if not readings:
            return 0
        await self._copy(conn, "telemetry_incoming", readings)
        cur = await conn.execute(
            f"INSERT INTO telemetry ({COPY_COLUMNS}) SELECT {COPY_COLUMNS}"
            " FROM telemetry_incoming ON CONFLICT DO NOTHING"
        )
        return cur.rowcount

    @staticmethod
    async def _events(
        conn: psycopg.AsyncConnection[tuple[object, ...]], events: list[DeviceEvent]
    ) -> None:
        if not events:
            return
        # The alarm engine reads events by `seq` (alarm_progress). With several
        # writers (replicas) a seq taken before another's could commit after it and
        # be passed over; holding this lock from taking the seqs to the commit makes
        # the seqs commit in order. Events are few, and the lock is taken after the
        # readings' COPY, so it is held for the rest of the transaction only.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVENTS_SEQ_LOCK,))
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO device_events (ts, pole_id, device_id, type, data)"
                " VALUES (%s, %s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING",
                [
                    (e.ts, e.pole_id, e.device_id, e.type, orjson.dumps(e.data).decode())
                    for e in events
                ],
            )

    @staticmethod
    async def _presence(
        conn: psycopg.AsyncConnection[tuple[object, ...]], presence: list[Presence]
    ) -> None:
        for p in presence:
            await conn.execute(
                "INSERT INTO pole_presence (pole_id, state, since)"
                " VALUES (%s, %s, coalesce(%s, now()))"
                " ON CONFLICT (pole_id) DO UPDATE SET"
                "  since = CASE WHEN pole_presence.state = excluded.state"
                "   THEN pole_presence.since ELSE excluded.since END,"
                "  state = excluded.state, updated_at = now()",
                (p.pole_id, p.state, p.ts),
            )

    @staticmethod
    async def _dead_letters(
        conn: psycopg.AsyncConnection[tuple[object, ...]], dead: list[DeadLetter]
    ) -> None:
        if not dead:
            return
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO dead_letters"
                " (key, topic, reason, detail, pole_id, device_id, metric, payload)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING",
                [
                    (
                        dead_letter_key(d),
                        _text(d.topic),
                        d.reason.value,
                        _text(d.detail),
                        _opt_text(d.pole_id),
                        _opt_text(d.device_id),
                        _opt_text(d.metric),
                        d.payload,
                    )
                    for d in dead
                ],
            )


_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError)
_StoreReadings = Callable[
    [psycopg.AsyncConnection[tuple[object, ...]], list[Reading]], Awaitable[int]
]


def _is_unavailable(exc: psycopg.DatabaseError) -> bool:
    """Errors that say the database cannot take writes now, whatever the data:
    class 25 (e.g. read-only after a failover), 53 (resources), 57 (operator
    intervention), 08 (connection)."""
    state = exc.sqlstate or ""
    return state[:2] in ("08", "25", "53", "57")


def _refused(
    what: str, exc: psycopg.Error, device: str | None, metric: str | None, pole: str | None = None
) -> DeadLetter:
    return DeadLetter(
        topic="(database)",
        reason=DeadLetterReason.BAD_VALUE,
        detail=f"{what} refused by the database: {str(exc).strip()[:300]}",
        payload=b"",
        pole_id=pole,
        device_id=device,
        metric=metric,
    )


def _text(s: str) -> str:
    # PostgreSQL text cannot hold NUL or lone surrogates; keep the rest readable.
    return s.encode("utf-8", "replace").decode("utf-8").replace("\0", "\ufffd")


def _opt_text(s: str | None) -> str | None:
    return None if s is None else _text(s)
