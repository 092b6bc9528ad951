"""The inspection scheduler: a long-running task that opens each active
inspection plan's work order when a new period begins."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.adapters.inspection_store import InspectionStore
from gateway.adapters.work_orders import MaintenanceRules
from gateway.config import Settings

log = logging.getLogger(__name__)


class InspectionScheduler:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = InspectionStore(pool)
        self._rules = MaintenanceRules.from_settings(settings)
        self._every_s = settings.inspection_check_s
        self._clock = clock

    async def tick(self) -> list[int]:
        """Generate what is due now; returns the ids of the orders opened."""
        created = await self._store.generate_due(self._rules, self._clock())
        if created:
            log.info("opened %d inspection work orders: %s", len(created), created)
        return created

    async def run(self, stop: asyncio.Event) -> None:
        """Check the plans every `inspection_check_s` until `stop` is set. A
        database outage is logged and retried on the next check."""
        failing = False
        while not stop.is_set():
            try:
                await self.tick()
                failing = False
            except (psycopg.Error, PoolTimeout) as exc:
                if not failing:
                    log.warning("inspection scheduling failed (retrying): %s", exc)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._every_s)
