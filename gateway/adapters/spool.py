"""The on-disk spool: committed batches that could not reach the database yet.

A SQLite database in WAL mode with `synchronous=FULL`, so an `append` has reached
the disk (fsync) when it returns: only then may the messages it holds be
acknowledged to the broker. Batches come out in the order they went in. The
bound is on the stored bodies' bytes; what the bound forces out is counted.

Every call blocks on disk I/O; `AsyncSpool` runs them on one worker thread so
the event loop never waits on an fsync, and SQLite sees one thread.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.core.readings import (
    Batch,
    DeadLetter,
    DeadLetterReason,
    DeviceEvent,
    Presence,
    Reading,
)

T = TypeVar("T")

FORMAT = 1  # the body encoding below; a spool written by another format is refused, not misread


class FullPolicy(StrEnum):
    BLOCK = "block"  # stop acknowledging: the broker keeps the messages
    DROP_OLDEST = "drop_oldest"  # make room by deleting the oldest batches (counted)


class SpoolError(Exception):
    """The spool file cannot be used (unreadable, another format, disk error)."""


@dataclass(frozen=True, slots=True)
class Depth:
    batches: int
    readings: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Dropped:
    """What `append` deleted to make room (policy drop_oldest)."""

    batches: int = 0
    readings: int = 0
    bytes: int = 0


def encode(batch: Batch) -> bytes:
    """A stable, versioned encoding (not pickle: a spool must survive an upgrade)."""
    body: dict[str, Any] = {
        "v": FORMAT,
        "r": [(r.ts, r.device_id, r.metric, r.value, r.quality) for r in batch.readings],
    }
    if batch.events:
        body["e"] = [(e.ts, e.pole_id, e.device_id, e.type, e.data) for e in batch.events]
    if batch.presence:
        body["p"] = [(p.pole_id, p.state, p.ts) for p in batch.presence]
    if batch.dead_letters:
        body["d"] = [
            (
                d.topic,
                d.reason.value,
                d.detail,
                base64.b64encode(d.payload).decode("ascii"),
                d.pole_id,
                d.device_id,
                d.metric,
            )
            for d in batch.dead_letters
        ]
    return orjson.dumps(body)


def decode(raw: bytes) -> Batch:
    body = orjson.loads(raw)
    if body.get("v") != FORMAT:
        raise SpoolError(f"spooled batch has format {body.get('v')!r}, this polegw reads {FORMAT}")
    ts = datetime.fromisoformat
    return Batch(
        readings=[Reading(ts(t), d, m, float(v), q) for t, d, m, v, q in body["r"]],
        events=[DeviceEvent(ts(t), p, d, k, data) for t, p, d, k, data in body.get("e", ())],
        presence=[Presence(p, s, None if t is None else ts(t)) for p, s, t in body.get("p", ())],
        dead_letters=[
            DeadLetter(
                topic=topic,
                reason=DeadLetterReason(reason),
                detail=detail,
                payload=base64.b64decode(payload),
                pole_id=pole,
                device_id=device,
                metric=metric,
            )
            for topic, reason, detail, payload, pole, device, metric in body.get("d", ())
        ],
    )


class Spool:
    """Synchronous; one thread at a time (see AsyncSpool)."""

    def __init__(self, folder: Path, *, max_bytes: int, policy: FullPolicy) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "spool.sqlite3"
        self.max_bytes = max_bytes
        self.policy = policy
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db = self._db
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")  # fsync the WAL on every commit
            # Batches that could not be read back (a damaged row): kept for a
            # person to look at, out of the drain's way.
            db.execute(
                "CREATE TABLE IF NOT EXISTS unreadable ("
                " seq INTEGER PRIMARY KEY, readings INTEGER NOT NULL, body BLOB NOT NULL,"
                " error TEXT NOT NULL, at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS batches ("
                " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                " readings INTEGER NOT NULL,"
                " bytes INTEGER NOT NULL,"
                " body BLOB NOT NULL)"
            )
            n, readings, size = db.execute(
                "SELECT count(*), coalesce(sum(readings), 0), coalesce(sum(bytes), 0) FROM batches"
            ).fetchone()
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open the spool {self.path}: {exc}") from exc
        self._depth = Depth(n, readings, size)

    @property
    def depth(self) -> Depth:
        return self._depth

    def close(self) -> None:
        self._db.close()

    def has_room(self, size: int) -> bool:
        return self._depth.batches == 0 or self._depth.bytes + size <= self.max_bytes

    def append(self, body: bytes, readings: int) -> Dropped | None:
        """Store one encoded batch durably. None when it does not fit and the
        policy is to block (nothing was written); otherwise what was dropped.

        A batch larger than the whole bound is still taken into an empty spool:
        refusing it would stop ingestion for good."""
        size = len(body)
        dropped = Dropped()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if not self.has_room(size):
                if self.policy is FullPolicy.BLOCK:
                    db.execute("ROLLBACK")
                    return None
                dropped = self._drop_oldest_for(size)
            db.execute(
                "INSERT INTO batches (readings, bytes, body) VALUES (?, ?, ?)",
                (readings, size, body),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        d = self._depth
        self._depth = Depth(
            d.batches + 1 - dropped.batches,
            d.readings + readings - dropped.readings,
            d.bytes + size - dropped.bytes,
        )
        return dropped

    def _drop_oldest_for(self, size: int) -> Dropped:
        freed = batches = readings = 0
        need = self._depth.bytes + size - self.max_bytes
        for seq, n, nbytes in self._db.execute(
            "SELECT seq, readings, bytes FROM batches ORDER BY seq"
        ).fetchall():
            if freed >= need:
                break
            self._db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            freed += nbytes
            batches += 1
            readings += n
        return Dropped(batches, readings, freed)

    def oldest(self) -> tuple[int, bytes] | None:
        row = self._db.execute("SELECT seq, body FROM batches ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else (row[0], row[1])

    def set_aside(self, seq: int, error: str) -> None:
        """Move a batch that cannot be decoded to the `unreadable` table."""
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute(
            "INSERT INTO unreadable (seq, readings, body, error)"
            " SELECT seq, readings, body, ? FROM batches WHERE seq = ?",
            (error, seq),
        )
        self._forget(seq)
        self._db.execute("COMMIT")

    def remove(self, seq: int) -> None:
        """Delete a batch once the database has committed it."""
        self._forget(seq)

    def _forget(self, seq: int) -> None:
        row = self._db.execute(
            "DELETE FROM batches WHERE seq = ? RETURNING readings, bytes", (seq,)
        ).fetchone()
        if row is None:
            return
        d = self._depth
        self._depth = Depth(d.batches - 1, d.readings - row[0], d.bytes - row[1])
        if self._depth.batches == 0:
            # Give the pages back and empty the WAL: a drained spool costs no disk.
            self._db.execute("VACUUM")  # cheap: the spool is empty
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class AsyncSpool:
    """The spool for the event loop: every call runs on one dedicated thread."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        # One worker: calls run one at a time, in the order they were made.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polegw-spool")

    @classmethod
    def open(cls, folder: Path, *, max_bytes: int, policy: FullPolicy) -> AsyncSpool:
        return cls(Spool(folder, max_bytes=max_bytes, policy=policy))

    @property
    def depth(self) -> Depth:
        return self._spool.depth

    @property
    def path(self) -> Path:
        return self._spool.path

    @property
    def max_bytes(self) -> int:
        return self._spool.max_bytes

    @property
    def policy(self) -> FullPolicy:
        return self._spool.policy

    def __bool__(self) -> bool:
        return self._spool.depth.batches > 0

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def append(self, batch: Batch) -> Dropped | None:
        body = encode(batch)  # on the loop: CPU only, and it keeps the batch off the thread
        return await self._call(lambda: self._spool.append(body, len(batch.readings)))

    async def oldest(self) -> tuple[int, bytes] | None:
        """The oldest batch's sequence number and encoded body (see `decode`)."""
        return await self._call(self._spool.oldest)

    async def set_aside(self, seq: int, error: str) -> None:
        await self._call(lambda: self._spool.set_aside(seq, error))

    async def remove(self, seq: int) -> None:
        await self._call(lambda: self._spool.remove(seq))

    async def close(self) -> None:
        await self._call(self._spool.close)
        self._pool.shutdown(wait=True)
