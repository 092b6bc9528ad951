"""The ingest pipeline: decode each message, batch, commit, then acknowledge.

One batch is collecting while the previous one commits. A message is
acknowledged only after everything it yielded (readings, events, presence,
dead letters) is committed, and acknowledgements go out in the order the
messages arrived. While the database is unreachable the batch is retried with
back-off and nothing is acknowledged, so the broker keeps the messages; the
collecting batch is bounded, so a stalled database stops intake instead of
growing memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from gateway.adapters.mqtt import Ack, Backoff, Inbound
from gateway.core.decode import decode_message
from gateway.core.readings import Batch, WriteResult
from gateway.core.registry import Registry
from gateway.errors import StorageUnavailable
from gateway.metrics import Metrics

log = logging.getLogger(__name__)


class BatchWriter(Protocol):
    async def write(self, batch: Batch) -> WriteResult: ...


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
    ) -> None:
        self._writer = writer
        self._registry = registry
        self._metrics = metrics
        self._prefix = prefix
        self._max_readings = max_readings
        # A batch also closes at this many messages, so a stream of messages
        # that yield no readings (events, dead letters) stays bounded too.
        self._max_messages = max_messages
        self._max_delay_s = max_delay_s
        self._new_batch()
        self._has_data = asyncio.Event()
        self._full = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0

    def _new_batch(self) -> None:
        self._batch = Batch()
        self._acks: list[Ack] = []
        self._oldest_ts: list[datetime] = []

    @property
    def pending_messages(self) -> int:
        return self._in_flight

    def _is_full(self) -> bool:
        return (
            len(self._batch.readings) >= self._max_readings or len(self._acks) >= self._max_messages
        )

    async def put(self, message: Inbound) -> None:
        """Decode a message into the collecting batch (waits while that batch is full)."""
        while self._is_full():
            self._room.clear()
            await self._room.wait()
        decoded = decode_message(
            message.topic, message.payload, self._registry(), prefix=self._prefix
        )
        m = self._metrics
        m.messages_received.labels(decoded.topic_kind).inc()
        b = self._batch
        if decoded.readings:
            m.readings_received.inc(len(decoded.readings))
            b.readings.extend(decoded.readings)
        b.events.extend(decoded.events)
        b.presence.extend(decoded.presence)
        for dead in decoded.dead_letters:
            m.dead_letters.labels(dead.reason.value).inc()
        b.dead_letters.extend(decoded.dead_letters)
        if decoded.message_ts is not None:
            self._oldest_ts.append(decoded.message_ts)
        self._acks.append(message.ack)
        self._in_flight += 1
        m.pending_messages.set(self._in_flight)
        self._idle.clear()
        self._has_data.set()
        if self._is_full():
            self._full.set()

    async def run(self) -> None:
        """Commit batches forever (cancel to stop)."""
        while True:
            await self._has_data.wait()
            if not self._full.is_set():
                try:
                    async with asyncio.timeout(self._max_delay_s):
                        await self._full.wait()
                except TimeoutError:
                    pass
            batch, acks, stamps = self._batch, self._acks, self._oldest_ts
            self._new_batch()
            self._has_data.clear()
            self._full.clear()
            self._room.set()
            await self._commit(batch, stamps)
            for ack in acks:
                ack()
            self._in_flight -= len(acks)
            self._metrics.pending_messages.set(self._in_flight)
            if self._in_flight == 0:
                self._idle.set()

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

    async def _commit(self, batch: Batch, stamps: list[datetime]) -> None:
        backoff = Backoff(first=0.2, cap=10.0)
        failing = False
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
        for ts in stamps:
            m.ingest_lag_seconds.observe(max(0.0, (now - ts).total_seconds()))
