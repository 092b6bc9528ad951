"""The alarm engine at run time: fed by the ingest pipeline after each commit,
timed for offline devices, writing alarms through the AlarmStore.

`on_batch` runs in the ingest commit loop, so it only evaluates the readings
(the engine skips metrics no rule watches with one set lookup) and queues the
transitions. Device events are not taken from the batch: the batch only wakes
the writer task, which reads the events committed since its position
(`device_events.seq`) from the database, evaluates them and records their
transitions together with the new position, in one transaction with the
listeners, then runs the post-commit hooks. After a crash the events past the
recorded position are evaluated again at start; an event at or before it never
is, and a redelivered event is not stored twice, so it causes nothing.
Rule overrides and the device list are reloaded every `reload_s`.

With replicas (`feed` given) the runner runs only in the alarm leader and
evaluates readings from the database instead (gateway/alarm_feed.py): a batch
this replica committed only says its devices were heard of. `run` may be
started again after it was cancelled (the lease lost, then taken again): each
start reloads the open alarms and the events position and forgets the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.adapters.alarm_store import AlarmStore
from gateway.adapters.leases import LeaseLost
from gateway.alarm_feed import CommittedFeed
from gateway.backoff import Backoff
from gateway.core.alarms import AlarmEngine, Target, Transition, compile_rules
from gateway.core.profiles import ProfileCatalog
from gateway.core.readings import Batch, DeviceEvent
from gateway.core.registry import Registry

if TYPE_CHECKING:
    from gateway.commands import CommandDispatcher
    from gateway.config import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
T = TypeVar("T")


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
        events_chunk: int = 1000,
        progress_s: float = 5.0,
        settle_s: float | None = None,
        offline_recheck_s: float = 5.0,
    ) -> None:
        self._pool = pool
        self._store = store
        self._catalog = catalog
        self._registry = registry
        self._clock = clock
        self._tick_s = tick_s
        self._reload_s = reload_s
        self._max_queued = max_queued
        self._events_chunk = events_chunk
        self._progress_s = progress_s
        self.engine = AlarmEngine(compile_rules(catalog)[0])
        # Replica mode: readings and last-heard times from the database.
        self.feed = (
            CommittedFeed(pool=pool, engine=self.engine, catalog=catalog, settle_s=settle_s)
            if settle_s is not None
            else None
        )
        self._offline_recheck_s = offline_recheck_s
        self._running = False  # between start() and the end of run()
        self._terms = 0
        self.post_commit: list[PostCommit] = []
        # Tasks that run beside the writer and the timer (the protective actions).
        self.companions: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._queue: asyncio.Queue[list[Transition]] = asyncio.Queue()
        self._work = asyncio.Event()  # something queued, or events committed
        self._events_due = False  # events may have been committed past `_seq`
        self._seq: int | None = None  # events evaluated up to here (None: not loaded)
        self._saved_seq = 0  # ... and recorded up to here
        self._saved_at = time.monotonic()
        self._targets: list[Target] = []
        self._cache_of: Registry | None = None
        self._cache: dict[str, Target | None] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.started = asyncio.Event()  # set once `run` has loaded and primed
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
        """The ingest hook: a committed batch's readings and events. Its events
        are read back from the database by the writer (in commit order, once)."""
        if self.feed is not None:
            if not self._running:
                return  # not the alarm leader: another replica evaluates
            if batch.readings:  # evaluated from the database; heard of now
                now = self._clock()
                heard = dict.fromkeys((r.device_id for r in batch.readings), now)
                self._enqueue(self.engine.saw(heard, self._lookup, now))
        elif batch.readings:
            self._enqueue(self.engine.readings(batch.readings, self._lookup, self._clock()))
        if batch.events:
            self.events_committed()

    def events_committed(self) -> None:
        """Device events were committed: evaluate them soon."""
        self._events_due = True
        self._idle.clear()
        self._work.set()

    def _enqueue(self, out: list[Transition]) -> None:
        if not out:
            return
        if self._queue.qsize() >= self._max_queued:
            self.dropped += len(out)
            log.error("alarm queue full: %d transitions dropped", len(out))
            return
        self._idle.clear()
        self._queue.put_nowait(out)
        self._work.set()

    async def tick(self) -> None:
        """Evaluate the timers now (offline devices, quiet event alarms)."""
        self._enqueue(self.engine.tick(self._clock(), self._targets))

    async def from_database(self, recheck_offline: bool) -> None:
        """Replica mode, before each tick: the events and the readings every
        replica committed that are ready, then when the devices about to be called
        offline (and, with `recheck_offline`, those that are) were last heard of."""
        assert self.feed is not None
        self.events_committed()  # other replicas commit events too: look each tick
        ready = await self.feed.round(self._targets)
        now = self._clock()
        if ready:
            self._enqueue(self.engine.readings(ready, self._lookup, now))
        ask = self.engine.overdue(now, self._targets)
        if recheck_offline:
            offline = set(self.engine.offline_devices())
            ask += [t for t in self._targets if t.device_id in offline]
        if ask:
            known = [s for t in ask if (s := self.engine.last_seen(t.device_id)) is not None]
            since = min(known, default=now - timedelta(days=1))
            heard = await self.feed.heard(ask, since)
            self._enqueue(self.engine.saw(heard, self._lookup, now))

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
        """Load overrides and devices; take the alarms left open as on; load the
        events position, so that the writer evaluates the events committed after
        it (those a crash left unevaluated) first."""
        if self._terms:  # again, after another replica was the leader: start afresh
            self.engine.reset()
            while not self._queue.empty():
                self._queue.get_nowait()
            self._events_due = False
        self._terms += 1
        await self.reload()
        open_alarms = await self._store.open_alarms()
        self.engine.prime(
            [(rule, device) for rule, device, _ in open_alarms],
            {(rule, device): seen for rule, device, seen in open_alarms},
        )
        self._seq = self._saved_seq = await self._store.position()
        if self.feed is not None:
            await self.feed.start(self._clock())
        self.events_committed()

    async def flush(self, timeout_s: float = 5.0) -> None:
        """On shutdown: give what is queued a moment to be written, and record
        how far the events are evaluated."""
        if not self._running:
            return  # not running here (another replica is the alarm leader)
        try:
            await self.settled(timeout_s)
        except TimeoutError:
            log.warning("shutdown: %d alarm batches not recorded", self._queue.qsize())
            return
        try:
            await self._save_position()
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("shutdown: events position not recorded (re-evaluated at start): %s", exc)

    async def run(self) -> None:
        """Load (retrying while the database is away), then write transitions and
        run the timer forever (cancel to stop)."""
        backoff = Backoff(first=0.5, cap=10.0)
        while True:
            try:
                await self.start()
                self.started.set()
                break
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("alarm rules not loaded yet: %s", exc)
                await asyncio.sleep(backoff.next_delay())
        self._running = True
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._write_forever(), name="alarm-writer")
                tg.create_task(self._time_forever(), name="alarm-timer")
                for companion in self.companions:
                    tg.create_task(companion(), name="alarm-companion")
        finally:
            self._running = False
            self._idle.set()

    async def _time_forever(self) -> None:
        next_reload = time.monotonic() + self._reload_s
        next_recheck = time.monotonic()
        while True:
            await asyncio.sleep(self._tick_s)
            if time.monotonic() >= next_reload:
                next_reload = time.monotonic() + self._reload_s
                try:
                    await self.reload()
                except (psycopg.Error, PoolTimeout) as exc:
                    log.warning("alarm rules not reloaded: %s", exc)
            if self.feed is not None:
                recheck = time.monotonic() >= next_recheck
                try:
                    await self.from_database(recheck)
                except (psycopg.Error, PoolTimeout) as exc:
                    # Nobody can be called offline from what this replica alone saw.
                    log.warning("committed readings not read (database): %s", exc)
                    continue
                if recheck:
                    next_recheck = time.monotonic() + self._offline_recheck_s
            await self.tick()

    async def _write_forever(self) -> None:
        while True:
            if self._queue.empty() and not self._events_due:
                timeout = None
                if self._saved_seq != self._seq:  # events that caused nothing
                    timeout = max(0.0, self._saved_at + self._progress_s - time.monotonic())
                try:
                    async with asyncio.timeout(timeout):
                        await self._work.wait()
                except TimeoutError:
                    pass
            self._work.clear()
            await self._write_round()
            if (
                self._saved_seq != self._seq
                and time.monotonic() - self._saved_at >= self._progress_s
            ):
                await self._retrying(self._save_position)
            if self._queue.empty() and not self._events_due:
                self._idle.set()

    async def _write_round(self) -> None:
        """One round: the events committed since the position (if any), then
        everything queued before they are evaluated plus their transitions, in
        the order the engine produced them, recorded with the new position."""
        rows: list[tuple[int, DeviceEvent]] = []
        due, self._events_due = self._events_due, False
        if due and self._seq is not None:  # (None: not started; start() asks again)
            seq = self._seq
            rows = await self._retrying(lambda: self._store.events_after(seq, self._events_chunk))
            if len(rows) >= self._events_chunk:
                self._events_due = True  # more to come: next round
                self._work.set()
        # No await from here to the write: what is queued now was produced before
        # these events are evaluated, and is written before their transitions.
        items: list[Transition] = []
        while not self._queue.empty() and len(items) < 5000:
            items.extend(self._queue.get_nowait())
        if not self._queue.empty():
            self._work.set()
        events_seq = None
        if rows:
            items += self.engine.events([e for _, e in rows], self._lookup, self._clock())
            self._seq = rows[-1][0]
            if items:
                events_seq = self._seq
            # else: nothing to record; the position is saved a little later
        if items:
            await self._apply(items, events_seq)

    async def _save_position(self) -> None:
        seq = self._seq
        if seq is not None and seq != self._saved_seq:
            await self._store.save_position(seq)
            self._saved_seq = seq
        self._saved_at = time.monotonic()

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        backoff = Backoff(first=0.5, cap=10.0)
        while True:
            try:
                return await call()
            except (psycopg.OperationalError, PoolTimeout) as exc:
                log.warning("alarm events not read or recorded yet (database): %s", exc)
                await asyncio.sleep(backoff.next_delay())

    async def _apply(self, items: list[Transition], events_seq: int | None = None) -> None:
        backoff = Backoff(first=0.5, cap=10.0)
        while True:
            try:
                await self._store.apply(items, events_seq=events_seq)
            except LeaseLost:
                await self._lost_lead(len(items))
            except (psycopg.OperationalError, PoolTimeout) as exc:
                self._rolled_back()
                log.warning("alarms not recorded yet (database): %s", exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            except Exception:
                self._rolled_back()
                log.exception("recording %d alarm transitions failed; one by one", len(items))
                await self._apply_singly(items, events_seq)
                return
            self._recorded(events_seq)
            await self._committed()
            return

    async def _lost_lead(self, count: int) -> None:
        """Another replica leads the alarms now (the lease fence refused the
        write): what was not recorded is the new leader's to evaluate, from the
        committed readings; wait here to be stopped (LeaseKeeper.while_held)."""
        self._rolled_back()
        log.warning("alarm lead lost: %d transitions left to the next leader", count)
        await asyncio.Future()

    async def _apply_singly(self, items: list[Transition], events_seq: int | None) -> None:
        """Each transition in a savepoint: a bad one is logged and left out, the
        rest (and the position) commit together."""
        backoff = Backoff(first=0.5, cap=10.0)
        while True:
            try:
                await self._store.apply_each(items, events_seq=events_seq)
            except LeaseLost:
                await self._lost_lead(len(items))
            except (psycopg.OperationalError, PoolTimeout) as exc:
                self._rolled_back()
                log.warning("alarms not recorded yet (database): %s", exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            except Exception:
                # Not one transition's fault: nothing of this list can be recorded.
                self._rolled_back()
                log.exception("%d alarm transitions not recorded", len(items))
                return
            self._recorded(events_seq)
            await self._committed()
            return

    def _recorded(self, events_seq: int | None) -> None:
        if events_seq is not None:
            self._saved_seq = max(self._saved_seq, events_seq)
            self._saved_at = time.monotonic()

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
    fence: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
) -> AlarmRunner:
    """The runner as the gateway runs it: emergency and work-order listeners,
    door-open alarms suppressed while a work order has someone on the pole;
    `fence` (replicas) checks the alarm lead inside each write."""
    from gateway.adapters.work_orders import (
        MaintenanceRules,
        WorkOrderPolicy,
        pole_has_open_work_order,
    )
    from gateway.emergencies import EmergencyPolicy

    store = AlarmStore(pool, suppress=pole_has_open_work_order)
    store.fence = fence
    runner = AlarmRunner(
        pool=pool,
        store=store,
        catalog=catalog,
        registry=registry,
        reload_s=settings.registry_refresh_s,
        settle_s=settings.alarm_settle_s if settings.replicated else None,
    )
    emergencies = EmergencyPolicy(
        pool=pool, registry=registry, rules=runner.engine.rule, dispatcher=dispatcher
    )
    store.listeners.append(emergencies)
    store.listeners.append(WorkOrderPolicy(MaintenanceRules.from_settings(settings)))
    runner.post_commit.append(emergencies)
    if emergencies.issuer is not None:
        runner.companions.append(emergencies.issuer.run)
    return runner
