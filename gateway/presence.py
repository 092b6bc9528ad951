"""MQTT devices' online state from data arrival and their pole's status
(gateway/core/presence.py), recorded in `device_state` as polled devices' is."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.adapters.committed_readings import last_heard
from gateway.core.presence import Change, DataPresence
from gateway.core.readings import Batch
from gateway.core.registry import DeviceRef, Registry
from gateway.modbus_polling import StateStore

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def silence_limit(device: DeviceRef) -> timedelta | None:
    """How long a publishing device may be silent: its profile's report interval x
    after_intervals (`alarms.offline`); None when the profile names no interval."""
    section = device.profile.alarms
    if section is None or section.offline is None:
        return None
    spec = section.offline
    return timedelta(seconds=spec.interval_s * spec.after_intervals)


# heard(device ids, since): when each was last stored by anyone (replicas).
Heard = Callable[[list[str], datetime], Awaitable[dict[str, datetime]]]


def publishes(device: DeviceRef | None) -> bool:
    return device is not None and device.modbus is None


class MqttPresence:
    """Feeds committed batches (`on_batch`, a hook of the ingest pipeline) and a
    one-second timer into DataPresence; its changes go to the StateStore.

    With replicas each one receives a share of a device's messages, so silence is
    not judged from the share alone: `heard` asks the database when the devices
    about to be called offline were last stored by any replica (docs/scaling.md)."""

    def __init__(
        self,
        registry: Callable[[], Registry],
        states: StateStore,
        *,
        clock: Callable[[], datetime] = utcnow,
        every_s: float = 1.0,
        heard: Heard | None = None,
    ) -> None:
        self._heard = heard
        self._registry = registry
        self._states = states
        self._clock = clock
        self._every_s = every_s
        self._presence: DataPresence | None = None
        self._early: list[Batch] = []  # batches committed before `run` seeded the tracker

    def _silence_of(self, device_id: str) -> timedelta | None:
        device = self._registry().device(device_id)
        return None if device is None else silence_limit(device)

    def on_batch(self, batch: Batch) -> None:
        if self._presence is None:
            self._early.append(batch)
            return
        self._report(self._observe(self._presence, batch))

    def _observe(self, presence: DataPresence, batch: Batch) -> list[Change]:
        registry, now = self._registry(), self._clock()
        newest: dict[str, datetime] = {}
        # Once per reading of every batch: no allocation per reading.
        for r in batch.readings:
            seen = newest.get(r.device_id)
            if seen is None or r.ts > seen:
                newest[r.device_id] = r.ts
        for e in batch.events:
            seen = newest.get(e.device_id)
            if seen is None or e.ts > seen:
                newest[e.device_id] = e.ts
        changes: list[Change] = []
        for p in batch.presence:
            if p.state not in ("online", "offline"):
                continue
            devices = [d.id for d in registry.devices_on(p.pole_id) if publishes(d)]
            changes += presence.pole(devices, p.state == "online", p.ts or now, now)
        for device_id, ts in newest.items():
            if publishes(registry.device(device_id)):
                change = presence.data(device_id, ts, now)
                if change is not None:
                    changes.append(change)
        return changes

    def _report(self, changes: list[Change]) -> None:
        for device_id, online, since, detail in changes:
            if not online:
                log.info("device %s offline: %s", device_id, detail)
            self._states(device_id, online, since, detail)

    async def _ask(self, presence: DataPresence, due: list[str], now: datetime) -> bool:
        """Tell `presence` when others last stored the `due` devices; False when
        the database could not say (silence is judged in a later round)."""
        assert self._heard is not None
        limits = [t for d in due if (t := self._silence_of(d)) is not None]
        try:
            heard = await self._heard(due, now - max(limits, default=timedelta(0)))
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("presence: silence not checked with the database (%s)", exc)
            return False
        for device_id, ts in heard.items():
            presence.heard(device_id, ts)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Seed from the recorded states, then time silences until `stop` is set."""
        registry = self._registry()
        recorded = await self._states.recorded()
        known = {d: online for d, online in recorded.items() if publishes(registry.device(d))}
        presence = DataPresence(self._silence_of, known=known, now=self._clock())
        self._presence = presence
        early, self._early = self._early, []
        for batch in early:
            self._report(self._observe(presence, batch))
        while not stop.is_set():
            now = self._clock()
            due = presence.due(now) if self._heard is not None else []
            if not due or await self._ask(presence, due, now):
                self._report(presence.silent(now))
            try:
                async with asyncio.timeout(self._every_s):
                    await stop.wait()
            except TimeoutError:
                pass


def heard_in(pool: AsyncConnectionPool, registry: Callable[[], Registry]) -> Heard:
    """`heard` for replicas: each device's newest stored reading (any metric of its
    profile) or event, whichever replica stored it."""

    async def heard(device_ids: list[str], since: datetime) -> dict[str, datetime]:
        reg = registry()
        pairs = [
            (d, metric)
            for d in device_ids
            if (device := reg.device(d)) is not None
            for metric in device.profile.metrics
        ]
        async with pool.connection() as conn:
            return await last_heard(conn, pairs, since)

    return heard
