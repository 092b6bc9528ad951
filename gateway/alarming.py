"""The alarm engine at run time: fed by the ingest pipeline after each commit,
timed for offline devices, writing alarms through the AlarmStore.

`on_batch` runs in the ingest commit loop, so it only evaluates (the engine
skips metrics no rule watches with one set lookup) and queues the transitions;
a task of its own writes them, with the listeners, in one transaction each,
then runs the post-commit hooks (the emergency policy's protective actions).
Rule overrides and the device list are reloaded every `reload_s`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.adapters.alarm_store import AlarmStore
from gateway.backoff import Backoff
from gateway.core.alarms import AlarmEngine, Target, Transition, compile_rules
from gateway.core.profiles import ProfileCatalog
from gateway.core.readings import Batch
from gateway.core.registry import Registry

if TYPE_CHECKING:
    from gateway.commands import CommandDispatcher
    from gateway.config import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class PostCommit(Protocol):
    async def committed(self) -> None: ...

    def rolled_back(self) -> None: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AlarmRunner:
    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        store: AlarmStore,
        catalog: ProfileCatalog,
        registry: Callable[[], Registry],
        clock: Clock = _utcnow,
        tick_s: float = 1.0,
        reload_s: float = 10.0,
        max_queued: int = 10_000,
    ) -> None:
        self._pool = pool
        self._store = store
        self._catalog = catalog
        self._registry = registry
        self._clock = clock
        self._tick_s = tick_s
        self._reload_s = reload_s
        self._max_queued = max_queued
        self.engine = AlarmEngine(compile_rules(catalog)[0])
        self.post_commit: list[PostCommit] = []
        self._queue: asyncio.Queue[list[Transition]] = asyncio.Queue()
        self._targets: list[Target] = []
        self._cache_of: Registry | None = None
        self._cache: dict[str, Target | None] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.dropped = 0

    # ------------------------------------------------------------------ feeding

    def _lookup(self, device_id: str) -> Target | None:
        reg = self._registry()
        if reg is not self._cache_of:
            self._cache_of, self._cache = reg, {}
        try:
            return self._cache[device_id]
        except KeyError:
            pass
        ref = reg.device(device_id)
        target = None
        if ref is not None:
            interval = ref.modbus.interval_s if ref.modbus is not None else None
            target = Target(ref.id, ref.pole_id, ref.profile.profile, interval)
        self._cache[device_id] = target
        return target

    def on_batch(self, batch: Batch) -> None:
        """The ingest hook: a committed batch's readings and events."""
        if not batch.readings and not batch.events:
            return
        now = self._clock()
        out = self.engine.readings(batch.readings, self._lookup, now)
        if batch.events:
            out += self.engine.events(batch.events, self._lookup, now)
        self._enqueue(out)

    def _enqueue(self, out: list[Transition]) -> None:
        if not out:
            return
        if self._queue.qsize() >= self._max_queued:
            self.dropped += len(out)
            log.error("alarm queue full: %d transitions dropped", len(out))
            return
        self._idle.clear()
        self._queue.put_nowait(out)

    async def tick(self) -> None:
        """Evaluate the timers now (offline devices, quiet event alarms)."""
        self._enqueue(self.engine.tick(self._clock(), self._targets))

    async def settled(self, timeout_s: float = 10.0) -> None:
        """Wait until everything queued is written (tests, shutdown)."""
        async with asyncio.timeout(timeout_s):
            await self._idle.wait()

    # ------------------------------------------------------------------ running

    async def reload(self) -> None:
        """Overrides and the device list from the database."""
        overrides = await self._store.overrides()
        rules, problems = compile_rules(self._catalog, overrides)
        for p in problems:
            log.warning("alarm rule override ignored: %s", p)
        self._enqueue(self.engine.configure(rules, self._clock()))
        async with self._pool.connection() as conn:
            # Retired devices and planned ones (not installed yet) are not expected to
            # report: no offline alarms (and no work orders) for them.
            cur = await conn.execute(
                "SELECT id FROM devices WHERE status NOT IN ('retired', 'planned') ORDER BY id"
            )
            ids = [str(r[0]) for r in await cur.fetchall()]
        self._targets = [t for d in ids if (t := self._lookup(d)) is not None]

    async def start(self) -> None:
        """Load overrides and devices; take the alarms left open as on."""
        await self.reload()
        self.engine.prime(await self._store.open_keys())

    async def flush(self, timeout_s: float = 5.0) -> None:
        """On shutdown: give what is queued a moment to be written."""
        try:
            await self.settled(timeout_s)
        except TimeoutError:
            log.warning("shutdown: %d alarm batches not recorded", self._queue.qsize())

    async def run(self) -> None:
        """Load (retrying while the database is away), then write transitions and
        run the timer forever (cancel to stop)."""
        backoff = Backoff(first=0.5, cap=10.0)
        while True:
            try:
                await self.start()
                break
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("alarm rules not loaded yet: %s", exc)
                await asyncio.sleep(backoff.next_delay())
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._write_forever(), name="alarm-writer")
            tg.create_task(self._time_forever(), name="alarm-timer")

    async def _time_forever(self) -> None:
        next_reload = time.monotonic() + self._reload_s
        while True:
            await asyncio.sleep(self._tick_s)
            if time.monotonic() >= next_reload:
                next_reload = time.monotonic() + self._reload_s
                try:
                    await self.reload()
                except (psycopg.Error, PoolTimeout) as exc:
                    log.warning("alarm rules not reloaded: %s", exc)
            await self.tick()

    async def _write_forever(self) -> None:
        while True:
            items = await self._queue.get()
            while not self._queue.empty() and len(items) < 5000:
                items.extend(self._queue.get_nowait())
            await self._apply(items)
            if self._queue.empty():
                self._idle.set()

    async def _apply(self, items: list[Transition]) -> None:
        backoff = Backoff(first=0.5, cap=10.0)
        while True:
            try:
                await self._store.apply(items)
            except (psycopg.OperationalError, PoolTimeout) as exc:
                self._rolled_back()
                log.warning("alarms not recorded yet (database): %s", exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            except Exception:
                self._rolled_back()
                log.exception("recording %d alarm transitions failed; one by one", len(items))
                await self._apply_singly(items)
                return
            await self._committed()
            return

    async def _apply_singly(self, items: list[Transition]) -> None:
        for t in items:
            try:
                await self._store.apply([t])
            except Exception:
                self._rolled_back()
                log.exception("alarm transition %s for %s not recorded", t.rule.key, t.device_id)
            else:
                await self._committed()

    def _rolled_back(self) -> None:
        for hook in self.post_commit:
            hook.rolled_back()

    async def _committed(self) -> None:
        for hook in self.post_commit:
            try:
                await hook.committed()
            except Exception:
                log.exception("post-commit hook failed")


def build_alarm_runner(
    *,
    settings: Settings,
    pool: AsyncConnectionPool,
    catalog: ProfileCatalog,
    registry: Callable[[], Registry],
    dispatcher: CommandDispatcher | None,
) -> AlarmRunner:
    """The runner as the gateway runs it: emergency and work-order listeners,
    door-open alarms suppressed while a work order has someone on the pole."""
    from gateway.adapters.work_orders import (
        MaintenanceRules,
        WorkOrderPolicy,
        pole_has_open_work_order,
    )
    from gateway.emergencies import EmergencyPolicy

    store = AlarmStore(pool, suppress=pole_has_open_work_order)
    runner = AlarmRunner(
        pool=pool,
        store=store,
        catalog=catalog,
        registry=registry,
        reload_s=settings.registry_refresh_s,
    )
    emergencies = EmergencyPolicy(
        pool=pool, registry=registry, rules=runner.engine.rule, dispatcher=dispatcher
    )
    store.listeners.append(emergencies)
    store.listeners.append(WorkOrderPolicy(MaintenanceRules.from_settings(settings)))
    runner.post_commit.append(emergencies)
    return runner
