"""The metering worker: keeps the meter-data ledger up with the readings.

Every `every_s` seconds it takes the ports with queued counter readings
(`meter_queue`, filled by triggers on `telemetry` as readings commit) and
meters each one's window into the ledger, one transaction per port and chunk
with its watermark (gateway/adapters/ledger_store.py). A crash at any moment
leaves the queue rows of the step in progress in place: after a restart the
step is done again and writes only what differs, so no interval is counted
twice or missed. Its lag (a reading's commit to the step that metered it) and
the age of the oldest waiting reading are exported in /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.adapters.ledger_store import LedgerStore
from gateway.core.profiles import ProfileCatalog
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

# Ports metered at once, each on a connection of the shared pool (10): the
# database's part of a step (a few short statements) overlaps across ports.
CONCURRENCY = 3


class MeteringWorker:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        catalog: ProfileCatalog,
        metrics: Metrics,
        *,
        every_s: float = 5.0,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self._ledger = LedgerStore(pool, catalog)
        self._metrics = metrics
        self.every_s = every_s
        self.concurrency = concurrency

    async def tick(self) -> int:
        """Meter everything queued now; the number of ports stepped."""
        lag = self._metrics.metering_lag_seconds
        results = await self._ledger.catch_up(observe=lag.observe, concurrency=self.concurrency)
        changes = sum(r.changes for r in results)
        if changes:
            self._metrics.metering_changes.inc(changes)
            log.info("ledger: %d metered pieces changed by late or corrected readings", changes)
        self._metrics.metering_pending_seconds.set(await self._ledger.pending_seconds())
        return len(results)

    async def run(self, stop: asyncio.Event) -> None:
        failing = False
        while not stop.is_set():
            try:
                await self.tick()
                if failing:
                    log.info("metering worker: the database answers again")
                failing = False
            except (psycopg.Error, PoolTimeout, OSError) as exc:
                if not failing:  # once per run of failures
                    log.warning("metering worker: %s; retrying", str(exc).strip() or repr(exc))
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)
