"""The meter-data ledger against the database (migration 0019): a port's step
of metering, written in one transaction with its watermark, and the queue of
counters to meter.

Triggers on `telemetry` queue every energy counter reading inserted, changed or
deleted (`meter_queue`). A step claims a port's queued rows, re-meters its
window from the raw readings with the metering core (`gateway.core.ledger`),
writes the pieces that differ, records the changes to pieces the ledger had
counted as complete (`meter_ledger_changes`), moves the watermark
(`meter_ports.metered_to`) and deletes the claimed queue rows, all in one
transaction under a lock on the port's watermark row: a crash at any moment
leaves either the step done or the queue rows in place to do it again, and a
step done twice writes nothing the second time (the pieces are values, not
increments). Readings flagged by the clock check (quality <> 0) are held out
of metering and listed in `meter_held`.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.usage_store import PortMeta, UsageStore, _utc0
from gateway.core import ledger as lg
from gateway.core import metering as mt
from gateway.core.profiles import ProfileCatalog

# A step meters at most this much of a port's history per transaction (a rebuild
# of a year is many short transactions, not one long one).
CHUNK = timedelta(days=2)

READINGS = """
SELECT (array_agg(ts ORDER BY ts))[1], (array_agg(value ORDER BY ts))[1],
       max(ts), (array_agg(value ORDER BY ts DESC))[1]
FROM telemetry
WHERE device_id = %(device)s AND metric = %(metric)s AND quality = 0
  AND ts >= %(start)s AND ts < %(end)s
GROUP BY date_bin(INTERVAL '15 minutes', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00')
ORDER BY 1
"""

UPSERT = """
INSERT INTO meter_ledger (port_id, start, "end", iv_start, iv_end, kwh, est_kwh, excess_kwh, flags)
SELECT %(port)s, * FROM unnest(%(start)s::timestamptz[], %(end)s::timestamptz[],
    %(iv_start)s::timestamptz[], %(iv_end)s::timestamptz[], %(kwh)s::numeric[],
    %(est)s::numeric[], %(excess)s::numeric[], %(flags)s::smallint[])
ON CONFLICT (port_id, start) DO UPDATE SET "end" = excluded."end",
    iv_start = excluded.iv_start, iv_end = excluded.iv_end, kwh = excluded.kwh,
    est_kwh = excluded.est_kwh, excess_kwh = excluded.excess_kwh, flags = excluded.flags
"""


# The slot sums of the pieces of [a, b), written again from them.
SLOTS_GONE = "DELETE FROM meter_slots WHERE port_id = %(port)s AND slot >= %(a)s AND slot < %(b)s"
SLOTS = """
INSERT INTO meter_slots (port_id, slot, kwh, gap_kwh, est_kwh, flags, gap_flags, est_flags)
SELECT %(port)s, date_bin(INTERVAL '15 minutes', start, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
       coalesce(sum(kwh) FILTER (WHERE est_kwh IS NULL), 0),
       coalesce(sum(kwh) FILTER (WHERE est_kwh IS NOT NULL), 0),
       coalesce(sum(est_kwh) FILTER (WHERE est_kwh IS NOT NULL), 0),
       coalesce(bit_or(flags) FILTER (WHERE est_kwh IS NULL AND kwh > 0), 0),
       coalesce(bit_or(flags) FILTER (WHERE est_kwh IS NOT NULL AND kwh > 0), 0),
       coalesce(bit_or(flags) FILTER (WHERE est_kwh > 0), 0)
FROM meter_ledger WHERE port_id = %(port)s AND start >= %(a)s AND start < %(b)s
GROUP BY 2
"""


@dataclass(frozen=True, slots=True)
class Queued:
    """A port's queued rows: the earliest reading changed, their ids, why."""

    port: PortMeta
    since: datetime
    ids: list[int]
    queued_at: datetime
    reason: str | None


@dataclass(frozen=True, slots=True)
class StepResult:
    port_id: str
    written: int
    deleted: int
    changes: int


class LedgerStore:
    def __init__(self, pool: AsyncConnectionPool, catalog: ProfileCatalog) -> None:
        self._pool = pool
        self._usage = UsageStore(pool, catalog)

    # ------------------------------------------------------------------ the queue

    async def queued(self, port_ids: Sequence[str] | None = None) -> list[Queued]:
        """The ports with queued rows (or just those of `port_ids`), oldest first.
        Rows of counters that are no port's are dropped."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT p.id, min(q.ts), array_agg(q.id), min(q.queued_at),"
                " min(q.reason) FROM meter_queue q JOIN ports p"
                " ON p.meter_device_id = q.device_id"
                " AND q.metric = 'port' || p.port_no || '_energy_kwh'"
                " WHERE %(ports)s::text[] IS NULL OR p.id = ANY(%(ports)s)"
                " GROUP BY p.id ORDER BY min(q.queued_at), p.id",
                {"ports": None if port_ids is None else list(port_ids)},
            )
            rows = await cur.fetchall()
            if port_ids is None:
                await conn.execute(
                    "DELETE FROM meter_queue q WHERE NOT EXISTS (SELECT 1 FROM ports p"
                    " WHERE p.meter_device_id = q.device_id"
                    " AND q.metric = 'port' || p.port_no || '_energy_kwh')"
                )
        out = []
        for port_id, since, ids, queued_at, reason in rows:
            port = await self._usage.port(port_id)
            if port is not None:
                out.append(Queued(port, _utc0(since), list(ids), queued_at, reason))
        return out

    async def enqueue(
        self,
        conn: psycopg.AsyncConnection[Any],
        since: datetime,
        *,
        reason: str,
        port_ids: Sequence[str] | None = None,
    ) -> int:
        """Queue ports (all, or `port_ids`) to be metered again from `since`."""
        cur = await conn.execute(
            "INSERT INTO meter_queue (device_id, metric, ts, reason)"
            " SELECT meter_device_id, 'port' || port_no || '_energy_kwh', %(since)s, %(reason)s"
            " FROM ports WHERE %(ports)s::text[] IS NULL OR id = ANY(%(ports)s)",
            {"since": since, "reason": reason, "ports": port_ids},
        )
        return cur.rowcount

    # ------------------------------------------------------------------ a step

    async def step(
        self, job: Queued, *, progress: Callable[[datetime, datetime], None] | None = None
    ) -> StepResult:
        """Meter the port's window for its queued rows, chunk by chunk; the last
        chunk's transaction deletes the claimed rows."""
        port = job.port
        key = {"device": port.meter_device_id, "metric": port.metric}
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT (SELECT max(ts) FROM telemetry WHERE device_id = %(device)s"
                " AND metric = %(metric)s AND quality = 0),"
                ' (SELECT max("end") FROM meter_ledger WHERE port_id = %(port)s),'
                " (SELECT min(ts) FROM telemetry WHERE device_id = %(device)s"
                " AND metric = %(metric)s AND quality = 0 AND ts >= %(since)s)",
                key | {"port": port.id, "since": job.since},
            )
            row = await cur.fetchone()
            await conn.rollback()
        assert row is not None
        newest, ledger_end, first = (None if v is None else _utc0(v) for v in row)
        ends = [t for t in (newest, ledger_end) if t is not None]
        final_to = max(ends) if ends else job.since
        # Nothing before the first reading changed needs metering (a rebuild
        # "from 2000" starts at the port's first reading).
        pos = job.since if first is None else max(job.since, min(first, final_to))
        pos = min(pos, final_to)
        total = StepResult(port.id, 0, 0, 0)
        # Clock-suspect readings are looked for chunk by chunk: from the queued
        # rows' earliest on in the first, to the end of all (a reading stamped
        # in the future) in the last.
        held_from = min(job.since, pos)
        while True:
            until = min(final_to, pos + CHUNK)
            last = until >= final_to
            done = await self._chunk(
                job, pos, until, newest, last, (held_from, None if last else until)
            )
            held_from = until
            total = StepResult(
                port.id,
                total.written + done.written,
                total.deleted + done.deleted,
                total.changes + done.changes,
            )
            if progress is not None:
                progress(until, final_to)
            if last:
                return total
            pos = until

    async def _chunk(
        self,
        job: Queued,
        since: datetime,
        until: datetime,
        newest: datetime | None,
        last: bool,
        held_range: tuple[datetime, datetime | None],
    ) -> StepResult:
        port = job.port
        key = {"device": port.meter_device_id, "metric": port.metric, "port": port.id}
        async with self._pool.connection() as conn, conn.transaction():
            # The watermark row, made if new, locked either way (DO UPDATE locks it).
            cur = await conn.execute(
                "INSERT INTO meter_ports (port_id) VALUES (%s) ON CONFLICT (port_id)"
                " DO UPDATE SET port_id = excluded.port_id RETURNING metered_to",
                (port.id,),
            )
            wm = await cur.fetchone()
            metered_to = None if wm is None or wm[0] is None else _utc0(wm[0])
            before_since = await _before(conn, key, since)
            first_w = lg.window(since, until, before_since=before_since, before_write=None)
            before_write = await _before(conn, key, first_w.write_from - lg.CONTEXT)
            w = lg.window(since, until, before_since=before_since, before_write=before_write)
            cur = await conn.execute(
                "SELECT replaced_at, old_final_kwh, new_first_kwh FROM meter_replacements"
                " WHERE port_id = %s ORDER BY replaced_at",
                (port.id,),
            )
            swaps = [mt.Replacement(a, Decimal(o), Decimal(n)) for a, o, n in await cur.fetchall()]
            # A piece the ledger has of an interval across the write start goes
            # whole too: new readings can change where an interval begins far
            # before them (a glitch run is a count of readings, not a time).
            cur = await conn.execute(
                "SELECT min(iv_start) FROM meter_ledger WHERE port_id = %s"
                " AND start < %s AND iv_end > %s",
                (port.id, w.write_from, w.write_from),
            )
            crossing = await cur.fetchone()
            old_from = None if crossing is None or crossing[0] is None else _utc0(crossing[0])
            read_from = w.read_from
            if old_from is not None:
                read_from = min(read_from, lg.slot_of(old_from - lg.CONTEXT))
            read_to = w.read_to
            while True:
                readings = await _readings(conn, key, read_from, read_to)
                metered = lg.meter_pieces(
                    readings, rated_w=port.rated_w, modulus=port.modulus, replacements=swaps
                )
                # A gap's estimate looks at the nearest measured intervals on
                # each side, skipping other gaps: one before the write start
                # whose neighbours reach into it is rewritten too, read with
                # its neighbours before it (further back as needed).
                back, whole = lg.estimates_back(metered, w.write_from)
                short_before, short_after = lg.estimates_short(
                    metered, min(w.write_from, back or w.write_from), w.write_to
                )
                earlier = not (whole and not short_before) and (
                    await _before(conn, key, read_from) is not None
                )
                later = short_after and await _after(conn, key, read_to) is not None
                if not earlier and not later:
                    break
                if earlier:
                    read_from = lg.slot_of(read_from - lg.CONTEXT)
                if later:
                    read_to = read_to + lg.LOOKAHEAD
            write_from = w.write_from if back is None else min(w.write_from, lg.slot_of(back))
            if old_from is not None:
                write_from = min(write_from, lg.slot_of(old_from))
            # An interval across the write start is rewritten whole (an estimate
            # of a gap depends on readings after it).
            for p in metered:
                if p.end > write_from:
                    write_from = min(write_from, lg.slot_of(p.iv_start))
                    break
            new = [p for p in metered if write_from <= p.start < w.write_to]
            held = await _hold(conn, key, held_range, read_from, read_to)
            if held:
                new = _mark_suspect(new, held)
            cur = await conn.execute(
                'SELECT start, "end", iv_start, iv_end, kwh, est_kwh, excess_kwh, flags'
                " FROM meter_ledger WHERE port_id = %s AND start >= %s AND start < %s"
                " ORDER BY start",
                (port.id, write_from, w.write_to),
            )
            old = [
                lg.Piece(_utc0(a), _utc0(b), _utc0(c), _utc0(d), k, e, x, f)
                for a, b, c, d, k, e, x, f in await cur.fetchall()
            ]
            upserts, deletes, changes = lg.diff(old, new)
            if upserts:
                await conn.execute(UPSERT, _columns(port.id, upserts))
            if deletes:
                await conn.execute(
                    "DELETE FROM meter_ledger WHERE port_id = %s AND start = ANY(%s)",
                    (port.id, [p.start for p in deletes]),
                )
            if upserts or deletes:
                span = {"port": port.id, "a": write_from, "b": w.write_to}
                await conn.execute(SLOTS_GONE, span)
                await conn.execute(SLOTS, span)
            recorded = [c for c in changes if lg.complete(c, metered_to)]
            if recorded:
                reason = job.reason or (
                    "late reading"
                    if metered_to is not None and job.since < metered_to
                    else "later reading"
                )
                async with conn.cursor() as c:
                    await c.executemany(
                        'INSERT INTO meter_ledger_changes (port_id, start, "end", old_kwh,'
                        " new_kwh, old_flags, new_flags, reason) VALUES"
                        " (%s, %s, %s, %s, %s, %s, %s, %s)",
                        [
                            (
                                port.id,
                                ch.start,
                                ch.end,
                                None if ch.old is None else ch.old.kwh,
                                None if ch.new is None else ch.new.kwh,
                                None if ch.old is None else ch.old.flags,
                                None if ch.new is None else ch.new.flags,
                                reason,
                            )
                            for ch in recorded
                        ],
                    )
            reached = newest if last else min(until, newest) if newest is not None else None
            await conn.execute(
                "UPDATE meter_ports SET metered_to = %s, metered_at = now() WHERE port_id = %s",
                (reached, port.id),
            )
            if last:
                await conn.execute("DELETE FROM meter_queue WHERE id = ANY(%s)", (job.ids,))
        return StepResult(port.id, len(upserts), len(deletes), len(recorded))

    async def catch_up(
        self,
        port_ids: Sequence[str] | None = None,
        *,
        observe: Callable[[float], None] | None = None,
        concurrency: int = 1,
    ) -> list[StepResult]:
        """One step for every port with queued rows (or those of `port_ids`), up
        to `concurrency` ports at once (each on its own connection; ports never
        share a lock). `observe` gets each step's lag: seconds from its oldest
        queued row to done."""
        jobs = await self.queued(port_ids)
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(job: Queued) -> StepResult:
            async with gate:
                result = await self.step(job)
            if observe is not None:
                observe(max(0.0, (datetime.now(UTC) - job.queued_at).total_seconds()))
            return result

        if concurrency <= 1:
            return [await one(job) for job in jobs]
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(job), name=f"meter-{job.port.id}") for job in jobs]
        return [t.result() for t in tasks]

    async def pending_seconds(self) -> float:
        """How long the oldest queued row has waited (0: nothing queued)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT extract(epoch FROM now() - min(queued_at)) FROM meter_queue"
            )
            row = await cur.fetchone()
        return 0.0 if row is None or row[0] is None else max(0.0, float(row[0]))


async def _readings(
    conn: psycopg.AsyncConnection[Any], key: dict[str, str], start: datetime, end: datetime
) -> list[mt.Reading]:
    """The port's readings of [start, end) reduced to slot ends, as the rollup."""
    cur = await conn.execute(READINGS, key | {"start": start, "end": end})
    readings: list[mt.Reading] = []
    dec = mt.to_decimal
    for first_ts, first, last_ts, last_v in await cur.fetchall():
        readings.append(mt.Reading(_utc0(first_ts), dec(first)))
        if last_ts != first_ts:
            readings.append(mt.Reading(_utc0(last_ts), dec(last_v)))
    return readings


async def _after(
    conn: psycopg.AsyncConnection[Any], key: dict[str, str], ts: datetime
) -> datetime | None:
    cur = await conn.execute(
        "SELECT ts FROM telemetry WHERE device_id = %(device)s AND metric = %(metric)s"
        " AND quality = 0 AND ts >= %(ts)s ORDER BY ts LIMIT 1",
        key | {"ts": ts},
    )
    row = await cur.fetchone()
    return None if row is None else _utc0(row[0])


async def _before(
    conn: psycopg.AsyncConnection[Any], key: dict[str, str], ts: datetime
) -> datetime | None:
    cur = await conn.execute(
        "SELECT ts FROM telemetry WHERE device_id = %(device)s AND metric = %(metric)s"
        " AND quality = 0 AND ts < %(ts)s ORDER BY ts DESC LIMIT 1",
        key | {"ts": ts},
    )
    row = await cur.fetchone()
    return None if row is None else _utc0(row[0])


async def _hold(
    conn: psycopg.AsyncConnection[Any],
    key: dict[str, str],
    scan: tuple[datetime, datetime | None],
    lo: datetime,
    hi: datetime,
) -> list[datetime]:
    """List the port's clock-suspect readings of `scan` ([from, to), to None: no
    end) in `meter_held`; the ts of those it holds in [lo, hi)."""
    # One statement: the SELECT does not see the CTE's rows, so they are added.
    cur = await conn.execute(
        "WITH new AS (INSERT INTO meter_held (port_id, ts, value, quality)"
        " SELECT %(port)s, ts, value, quality FROM telemetry WHERE device_id = %(device)s"
        " AND metric = %(metric)s AND quality <> 0 AND ts >= %(since)s"
        " AND (%(until)s::timestamptz IS NULL OR ts < %(until)s) ON CONFLICT DO NOTHING"
        " RETURNING ts)"
        " SELECT ts FROM meter_held WHERE port_id = %(port)s AND ts >= %(lo)s AND ts < %(hi)s"
        " UNION SELECT ts FROM new WHERE ts >= %(lo)s AND ts < %(hi)s ORDER BY 1",
        key | {"since": scan[0], "until": scan[1], "lo": lo, "hi": hi},
    )
    return [_utc0(r[0]) for r in await cur.fetchall()]


def _mark_suspect(new: list[lg.Piece], held: list[datetime]) -> list[lg.Piece]:
    """Pieces of an interval across a held-out reading carry CLOCK_SUSPECT."""
    bit = lg.BITS[lg.CLOCK_SUSPECT]
    out = []
    for p in new:
        i = bisect_left(held, p.iv_start)
        if i < len(held) and held[i] < p.iv_end:
            p = lg.Piece(
                p.start, p.end, p.iv_start, p.iv_end, p.kwh, p.est_kwh, p.excess_kwh, p.flags | bit
            )
        out.append(p)
    return out


def _columns(port_id: str, pieces: Sequence[lg.Piece]) -> dict[str, Any]:
    return {
        "port": port_id,
        "start": [p.start for p in pieces],
        "end": [p.end for p in pieces],
        "iv_start": [p.iv_start for p in pieces],
        "iv_end": [p.iv_end for p in pieces],
        "kwh": [p.kwh for p in pieces],
        "est": [p.est_kwh for p in pieces],
        "excess": [p.excess_kwh for p in pieces],
        "flags": [p.flags for p in pieces],
    }
