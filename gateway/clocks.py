"""Clock sync: tell a pole the time when its stamps are off (README "Clocks").

Fed by the ingest pipeline with each live telemetry message's pole and stamp;
publishes `set_time` to `{prefix}/{pole}/commands/controller` (the command
contract of DESIGN.md section 5) and counts it. The reply is not waited for:
the next messages' stamps show whether the clock took it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import orjson

from gateway.core.clocks import CONTROLLER, ClockWatch, set_time_command
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int | None], Awaitable[None]]


class ClockSync:
    def __init__(
        self,
        *,
        publish: Publish,
        metrics: Metrics,
        prefix: str,
        max_skew_s: float,
        interval_s: float,
    ) -> None:
        self._publish = publish
        self._metrics = metrics
        self._prefix = prefix
        self.watch = ClockWatch(max_skew_s, interval_s)
        self._tasks: set[asyncio.Task[None]] = set()
        self._interval_s = interval_s

    def observe(self, pole_id: str, stamped: datetime, received: datetime) -> None:
        """Called on the event loop for each live telemetry message (quick, never raises)."""
        due = self.watch.observe(pole_id, stamped, received, time.monotonic())
        skew = self.watch.skew[pole_id]
        if not due:
            if pole_id in self._metrics.clock_skew_poles:
                self._metrics.pole_clock_skew.labels(pole_id).set(skew)
            return
        task = asyncio.get_running_loop().create_task(
            self._correct(pole_id, skew), name=f"clock-sync-{pole_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _correct(self, pole_id: str, skew: float) -> None:
        now = datetime.now(UTC)
        body = set_time_command(str(uuid.uuid4()), now)
        topic = f"{self._prefix}/{pole_id}/commands/{CONTROLLER}"
        try:
            # Expires with the interval: a pole offline until then gets a fresh one.
            await self._publish(topic, orjson.dumps(body), max(1, int(self._interval_s)))
        except Exception as exc:  # noqa: BLE001 - any publish failure: logged, retried next interval
            log.warning("pole %s: clock %.1f s off; set_time not sent: %s", pole_id, skew, exc)
            return
        self._metrics.count_clock_correction(pole_id, skew)
        log.info("pole %s: clock %.1f s off; sent set_time", pole_id, skew)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
