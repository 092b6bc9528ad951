"""The ingest pipeline: decode each message, batch, commit, then acknowledge.

One batch is collecting while the previous one commits. A message is
acknowledged only after everything it yielded (readings, events, presence,
dead letters) is committed, and acknowledgements go out in the order the
messages arrived. While the database is unreachable the batch is retried with
back-off and nothing is acknowledged, so the broker keeps the messages.

Memory is bounded either way: messages offered from the MQTT callback are
bounded by the broker's in-flight window (Receive Maximum), since nothing is
acknowledged before commit; sources without such a window use `put`, which
waits while the collecting batch is full.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from gateway.adapters.mqtt import Ack, Inbound
from gateway.backoff import Backoff
from gateway.core.decode import decode_message
from gateway.core.readings import Batch, ClockCheck, Decoded, Quality, WriteResult
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
    ) -> None:
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

    @property
    def pending_messages(self) -> int:
        return self._in_flight

    def _is_full(self) -> bool:
        c = self._current
        return len(c.batch.readings) >= self._max_readings or len(c.acks) >= self._max_messages

    def offer(self, message: Inbound) -> None:
        """Decode a message into the collecting batch, without waiting."""
        clock = ClockCheck(datetime.now(UTC), self._max_ahead, self._max_age)
        decoded = decode_message(
            message.topic, message.payload, self._registry(), prefix=self._prefix, clock=clock
        )
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
        """Commit batches forever (cancel to stop)."""
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
            await self._commit(done)
            for hook in self.on_committed:
                try:
                    hook(done.batch)
                except Exception:
                    log.exception("on_committed hook failed")
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
        m = self._metrics
        m.commit_seconds.observe(time.perf_counter() - started)
        m.batch_readings.observe(len(batch.readings))
        m.readings_stored.inc(result.inserted)
        m.readings_duplicate.inc(result.duplicates)
        now = datetime.now(UTC)
        for ts in c.stamps:
            m.ingest_lag_seconds.observe(max(0.0, (now - ts).total_seconds()))
