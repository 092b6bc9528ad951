"""The ingest pipeline: decode each message, batch, commit, then acknowledge.

One batch is collecting while the previous one commits. A message is
acknowledged only after everything it yielded (readings, events, presence,
dead letters) is committed, and acknowledgements go out in the order the
messages arrived.

Committed means: to the database, or durably to the on-disk spool. When a
batch cannot reach the database (unreachable, or slower than `spool_after_s`)
it is appended to the spool (fsynced) and acknowledged; from then on every
batch goes to the spool behind it, until the drainer has moved the spool into
the database, oldest first, so the database sees the batches in the order they
arrived. When the spool is full the policy applies: block (stop acknowledging;
the broker keeps the messages) or drop the oldest batches, counted. Without a
spool a batch is retried with back-off and nothing is acknowledged meanwhile.

Memory is bounded either way: messages offered from the MQTT callback are
bounded by the broker's in-flight window (Receive Maximum), since nothing is
acknowledged before commit; sources without such a window use `put`, which
waits while the collecting batch is full.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from gateway.adapters.mqtt import Ack, Inbound
from gateway.adapters.spool import AsyncSpool, Depth, FullPolicy, SpoolError, decode
from gateway.backoff import Backoff
from gateway.core.decode import decode_message, parse_topic
from gateway.core.rate_limit import TokenBuckets
from gateway.core.readings import (
    Batch,
    ClockCheck,
    DeadLetter,
    DeadLetterReason,
    Decoded,
    Quality,
    WriteResult,
)
from gateway.core.registry import Registry
from gateway.errors import StorageUnavailable
from gateway.metrics import Metrics

log = logging.getLogger(__name__)


class BatchWriter(Protocol):
    async def write(self, batch: Batch) -> WriteResult: ...


class _Collecting:
    """The batch being filled, with what is needed once it is committed."""

    __slots__ = ("acks", "batch", "dead", "flagged", "kinds", "opened_at", "stamps")

    def __init__(self) -> None:
        self.batch = Batch()
        self.acks: list[Ack] = []
        self.stamps: list[datetime] = []
        self.kinds: Counter[str] = Counter()
        self.dead: Counter[str] = Counter()
        self.flagged: Counter[str] = Counter()
        self.opened_at = 0.0


class IngestPipeline:
    def __init__(
        self,
        *,
        writer: BatchWriter,
        registry: Callable[[], Registry],
        metrics: Metrics,
        prefix: str,
        max_readings: int = 5000,
        max_messages: int = 2000,
        max_delay_s: float = 0.05,
        clock_max_ahead: timedelta = timedelta(minutes=5),
        clock_max_age: timedelta = timedelta(days=35),
        spool: AsyncSpool | None = None,
        spool_after_s: float = 5.0,
        pole_limit: TokenBuckets | None = None,
    ) -> None:
        """`pole_limit`: messages per pole beyond it are dead-lettered (rate_limited)."""
        self._pole_limit = pole_limit
        self._spool = spool
        self._spool_after_s = spool_after_s
        self._spooled = asyncio.Event()  # something was appended: wake the drainer
        self._unspooled = asyncio.Event()  # something was removed: a full spool has room
        self._write_lock = asyncio.Lock()  # the commit loop and the drainer share the writer
        self._drain_window: list[tuple[float, int]] = []
        self._max_ahead = clock_max_ahead
        self._max_age = clock_max_age
        self._writer = writer
        self._registry = registry
        self._metrics = metrics
        self._prefix = prefix
        self._max_readings = max_readings
        # A batch also closes at this many messages, so a stream of messages
        # that yield no readings (events, dead letters) stays bounded too.
        self._max_messages = max_messages
        self._max_delay_s = max_delay_s
        self._current = _Collecting()
        self._has_data = asyncio.Event()
        self._full = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0
        # Called with each batch once it is committed (the alarm engine): must be
        # quick and must not raise into the commit loop (errors are logged).
        self.on_committed: list[Callable[[Batch], None]] = []
        # Called with (pole, the message's stamp, when it arrived) for each MQTT
        # message with readings (clock sync); must be quick and must not raise.
        self.on_stamp: list[Callable[[str, datetime, datetime], None]] = []

    @property
    def pending_messages(self) -> int:
        return self._in_flight

    def _is_full(self) -> bool:
        c = self._current
        return len(c.batch.readings) >= self._max_readings or len(c.acks) >= self._max_messages

    def _over_limit(self, message: Inbound) -> Decoded | None:
        """The dead letter of a message beyond its pole's rate limit, else None."""
        if self._pole_limit is None:
            return None
        where = parse_topic(message.topic, self._prefix)
        if where is None or self._pole_limit.take(where.pole_id, time.monotonic()):
            return None
        dead = DeadLetter(
            message.topic,
            DeadLetterReason.RATE_LIMITED,
            f"pole {where.pole_id!r} sent more than {self._pole_limit.rate:g} messages/s"
            f" (burst {self._pole_limit.burst:g})",
            message.payload,
            pole_id=where.pole_id,
        )
        return Decoded(dead_letters=[dead], topic_kind=where.kind)

    def offer(self, message: Inbound) -> None:
        """Decode a message into the collecting batch, without waiting."""
        limited = self._over_limit(message)
        if limited is not None:
            self._add(limited, message.ack)
            return
        received = datetime.now(UTC)
        clock = ClockCheck(received, self._max_ahead, self._max_age)
        decoded = decode_message(
            message.topic, message.payload, self._registry(), prefix=self._prefix, clock=clock
        )
        if self.on_stamp and decoded.readings and decoded.message_ts is not None:
            topic = parse_topic(message.topic, self._prefix)
            if topic is not None:  # a registered pole's readings: its clock (clocks.py)
                for see in self.on_stamp:
                    see(topic.pole_id, decoded.message_ts, received)
        self._add(decoded, message.ack)

    async def put(self, message: Inbound) -> None:
        """Like `offer`, but first waits while the collecting batch is full."""
        await self._wait_for_room()
        self.offer(message)

    async def put_decoded(self, decoded: Decoded, ack: Ack) -> None:
        """Add what a poller decoded itself (Modbus); waits while the batch is full.
        `ack` runs after the batch is committed."""
        await self._wait_for_room()
        self._add(decoded, ack)

    async def _wait_for_room(self) -> None:
        while self._is_full():
            self._room.clear()
            await self._room.wait()

    def _add(self, decoded: Decoded, ack: Ack) -> None:
        c = self._current
        if not c.acks:
            c.opened_at = time.monotonic()
        b = c.batch
        c.kinds[decoded.topic_kind] += 1
        if decoded.readings:
            b.readings.extend(decoded.readings)
            if decoded.quality:
                flag = "ahead" if decoded.quality & Quality.CLOCK_AHEAD else "stale"
                c.flagged[flag] += len(decoded.readings)
        if decoded.events:
            b.events.extend(decoded.events)
        if decoded.presence:
            b.presence.extend(decoded.presence)
        if decoded.dead_letters:
            b.dead_letters.extend(decoded.dead_letters)
            for dead in decoded.dead_letters:
                c.dead[dead.reason.value] += 1
        if decoded.message_ts is not None:
            c.stamps.append(decoded.message_ts)
        c.acks.append(ack)
        self._in_flight += 1
        self._idle.clear()
        self._has_data.set()
        if self._is_full():
            self._full.set()

    async def run(self) -> None:
        """Commit batches forever, and drain the spool if there is one (cancel to stop)."""
        if self._spool is None:
            await self._commit_forever()
            return
        self._show_depth(self._spool.depth)
        if self._spool:
            log.warning(
                "the spool %s holds %d readings from an earlier run; draining them first",
                self._spool.path,
                self._spool.depth.readings,
            )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._drain_forever(), name="spool-drain")
            tg.create_task(self._commit_forever(), name="ingest-commit-loop")

    async def _commit_forever(self) -> None:
        while True:
            await self._has_data.wait()
            if not self._full.is_set():
                # The delay counts from the batch's first message, not from
                # the end of the previous commit.
                left = self._current.opened_at + self._max_delay_s - time.monotonic()
                if left > 0:
                    try:
                        async with asyncio.timeout(left):
                            await self._full.wait()
                    except TimeoutError:
                        pass
            done, self._current = self._current, _Collecting()
            self._has_data.clear()
            self._full.clear()
            self._room.set()
            self._count_received(done)
            if await self._store(done):
                self._committed(done.batch)
            acked = sum(ack() for ack in done.acks)
            self._metrics.messages_acked.inc(acked)
            self._in_flight -= len(done.acks)
            self._metrics.pending_messages.set(self._in_flight)
            if self._in_flight == 0:
                self._idle.set()

    def _count_received(self, c: _Collecting) -> None:
        m = self._metrics
        for kind, n in c.kinds.items():
            m.messages_received.labels(kind).inc(n)
        for reason, n in c.dead.items():
            m.dead_letters.labels(reason).inc(n)
        for flag, n in c.flagged.items():
            m.readings_clock_flagged.labels(flag).inc(n)
        m.readings_received.inc(len(c.batch.readings))
        m.pending_messages.set(self._in_flight)

    async def drain(self, timeout_s: float = 10.0) -> bool:
        """Commit and acknowledge everything received so far (on shutdown)."""
        self._full.set()
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            log.warning(
                "shutdown: %d messages not committed; the broker will redeliver them",
                self._in_flight,
            )
            return False
        return True

    def _committed(self, batch: Batch) -> None:
        for hook in self.on_committed:
            try:
                hook(batch)
            except Exception:
                log.exception("on_committed hook failed")

    async def _store(self, c: _Collecting) -> bool:
        """Commit the batch to the database (True) or to the spool (False)."""
        if self._spool is None:
            await self._commit(c)
            return True
        backoff = Backoff(first=0.2, cap=10.0)
        while True:
            if not self._spool:
                try:
                    await self._commit_once(c)
                except (StorageUnavailable, TimeoutError) as exc:
                    self._metrics.db_write_failures.inc()
                    why = "too slow" if isinstance(exc, TimeoutError) else str(exc)
                    log.error(
                        "database unavailable (%s); spooling to %s from now on",
                        why,
                        self._spool.path,
                    )
                else:
                    return True
            try:
                await self._to_spool(c.batch)
            except (OSError, sqlite3.Error) as exc:
                # Neither the database nor the disk: hold the batch unacknowledged.
                self._metrics.spool_errors.inc()
                log.error("cannot write to the spool %s: %s", self._spool.path, exc)
                await asyncio.sleep(backoff.next_delay())
            else:
                return False

    async def _commit_once(self, c: _Collecting) -> None:
        started = time.perf_counter()
        async with self._write_lock, asyncio.timeout(self._spool_after_s):
            result = await self._writer.write(c.batch)
        self._record_commit(c, result, time.perf_counter() - started)

    async def _to_spool(self, batch: Batch) -> None:
        """Append durably; while the spool is full and the policy blocks, wait for room."""
        assert self._spool is not None
        m = self._metrics
        blocked = False
        while True:
            self._unspooled.clear()
            dropped = await self._spool.append(batch)
            if dropped is not None:
                break
            if not blocked:
                blocked = True
                log.error(
                    "the spool is full (%d bytes, bound %d): not acknowledging until it drains",
                    self._spool.depth.bytes,
                    self._spool.max_bytes,
                )
            m.spool_full.set(1)
            await self._unspooled.wait()
        if blocked:
            m.spool_full.set(0)
            log.info("the spool has room again; acknowledging")
        if dropped.batches:
            m.spool_dropped_readings.inc(dropped.readings)
            m.spool_dropped_batches.inc(dropped.batches)
            log.warning(
                "spool full: dropped the %d oldest batches (%d readings) to make room",
                dropped.batches,
                dropped.readings,
            )
        m.spool_appended_readings.inc(len(batch.readings))
        self._show_depth(self._spool.depth)
        self._spooled.set()

    async def _drain_forever(self) -> None:
        """Move spooled batches into the database, oldest first."""
        assert self._spool is not None
        spool, m = self._spool, self._metrics
        backoff = Backoff(first=0.2, cap=10.0)
        failing = False
        while True:
            self._spooled.clear()
            try:
                item = await spool.oldest()
            except sqlite3.Error as exc:
                m.spool_errors.inc()
                log.error("cannot read the spool %s: %s", spool.path, exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            if item is None:
                m.spool_drain_rate.set(0)
                await self._spooled.wait()
                continue
            seq, raw = item
            try:
                batch = decode(raw)
            except (SpoolError, ValueError, KeyError, TypeError) as exc:
                # Never block the drain (or crash the gateway) on one damaged batch.
                m.spool_errors.inc()
                log.error("spooled batch %d cannot be read (%s); set aside", seq, exc)
                await spool.set_aside(seq, f"{type(exc).__name__}: {exc}")
                self._unspooled.set()
                continue
            started = time.perf_counter()
            try:
                async with self._write_lock:
                    result = await self._writer.write(batch)
            except StorageUnavailable as exc:
                m.db_write_failures.inc()
                if not failing:
                    log.error("spool drain waits for the database: %s", exc)
                    failing = True
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            if failing:
                log.info("database available again; draining the spool")
                failing = False
            await spool.remove(seq)
            self._unspooled.set()
            self._record_stored(result, time.perf_counter() - started, len(batch.readings))
            m.spool_drained_readings.inc(len(batch.readings))
            self._show_drain_rate(len(batch.readings))
            self._show_depth(spool.depth)
            if not spool:
                log.info("spool drained")
            self._committed(batch)

    def _show_depth(self, depth: Depth) -> None:
        m = self._metrics
        m.spool_batches.set(depth.batches)
        m.spool_readings.set(depth.readings)
        m.spool_bytes.set(depth.bytes)

    def _show_drain_rate(self, readings: int, window_s: float = 10.0) -> None:
        now = time.monotonic()
        w = self._drain_window
        w.append((now, readings))
        while w and w[0][0] < now - window_s:
            w.pop(0)
        self._metrics.spool_drain_rate.set(sum(n for _, n in w) / window_s)

    @property
    def spool_policy(self) -> FullPolicy | None:
        return None if self._spool is None else self._spool.policy

    async def _commit(self, c: _Collecting) -> None:
        backoff = Backoff(first=0.2, cap=10.0)
        failing = False
        batch = c.batch
        while True:
            started = time.perf_counter()
            try:
                result = await self._writer.write(batch)
            except StorageUnavailable as exc:
                self._metrics.db_write_failures.inc()
                if not failing:
                    log.error(
                        "database unavailable, holding %d readings: %s", len(batch.readings), exc
                    )
                    failing = True
                await asyncio.sleep(backoff.next_delay())
                continue
            break
        if failing:
            log.info("database available again; batch committed")
        self._record_commit(c, result, time.perf_counter() - started)

    def _record_stored(self, result: WriteResult, seconds: float, readings: int) -> None:
        m = self._metrics
        m.commit_seconds.observe(seconds)
        m.batch_readings.observe(readings)
        m.readings_stored.inc(result.inserted)
        m.readings_duplicate.inc(result.duplicates)

    def _record_commit(self, c: _Collecting, result: WriteResult, seconds: float) -> None:
        """A batch went straight to the database: its lag is publish-to-commit."""
        self._record_stored(result, seconds, len(c.batch.readings))
        m = self._metrics
        now = datetime.now(UTC)
        for ts in c.stamps:
            m.ingest_lag_seconds.observe(max(0.0, (now - ts).total_seconds()))
