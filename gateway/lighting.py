"""The lighting dispatcher: applies each group's schedule and overrides to its lamps.

At every step instant it sends `switch_off` (level 0) or `set_dim` (preceded by
`switch_on` when the lamps were off) to every lamp of the group, as tracked
commands through the CommandDispatcher (MQTT or Modbus alike).

Restarts neither skip nor repeat a step:

1. `due_steps` (gateway/core/lighting.py) collapses the steps after the newest
   dispatched one up to now into the newest: after an outage only the current
   level is applied, and nothing already dispatched is applied again.
2. The step is *claimed* first: a row in lighting_dispatches, inserted in a
   transaction that locks the group row and refuses an instant at or before
   one already there. Only the process whose insert succeeded sends commands.
3. Then the commands are submitted (each one recorded in device_commands),
   and the row gets issued_at and the command ids.
4. A crash between 2 and 3 leaves the newest row with issued_at NULL: the next
   tick sees it and issues that step again (unless a newer step is due, which
   supersedes it). The lamps may then get one level command twice -- level
   commands are idempotent -- but the level is never skipped.

A lamp that missed the current step (offline at the step instant: its
commands failed or timed out) gets the step's level when it is online again:
each tick reconciles the newest step of every group, and `poke()` (called when
a device comes back online) makes that tick come at once. A lamp is tried at
most RECONCILE_TRIES times per step, so one that is online but refuses the
command is not sent it for ever.

The loop sleeps until the next step instant, or at most `reload_s` to pick up
groups, schedules and overrides changed through the API (or `poke()`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import ValidationError

from gateway.adapters.lighting_store import LightingStore
from gateway.config import Settings
from gateway.core.lighting import (
    LOOKBACK,
    Override,
    Plan,
    Schedule,
    Site,
    StepAt,
    due_steps,
    next_step,
)
from gateway.core.profiles import ArgValue
from gateway.core.registry import DeviceRef, Registry

log = logging.getLogger(__name__)

LAMP_COMMANDS = ("set_dim", "switch_off")
# Times one command of a step is sent to one lamp, the first time included.
RECONCILE_TRIES = 5


class Submitter(Protocol):
    async def submit(
        self, device: DeviceRef, name: str, args: dict[str, ArgValue]
    ) -> dict[str, Any]: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class SiteDefaults:
    """Where lamps are when their poles have no coordinates, and the site's zone."""

    lat: float
    lon: float
    timezone: str

    def site(self, lat: float | None, lon: float | None) -> Site:
        tz = ZoneInfo(self.timezone)
        if lat is None or lon is None:
            return Site(self.lat, self.lon, tz)
        return Site(float(lat), float(lon), tz)


def build_plan(row: dict[str, Any], defaults: SiteDefaults) -> Plan:
    """A group's Plan from LightingStore.plan_rows (raises ValidationError on a bad
    stored schedule)."""
    schedule = None if row["definition"] is None else Schedule.model_validate(row["definition"])
    overrides = tuple(
        Override(
            level=int(o["level"]),
            start=datetime.fromisoformat(o["start"]),
            until=datetime.fromisoformat(o["until"]),
        )
        for o in row["overrides"]
    )
    return Plan(
        site=defaults.site(row["lat"], row["lon"]),
        schedule=schedule,
        valid_from=row["valid_from"],
        overrides=overrides,
    )


def lamp_commands(level: int, previous: int | None) -> list[tuple[str, dict[str, ArgValue]]]:
    """What to send a lamp for `level`, given the group's previous level."""
    if level == 0:
        return [("switch_off", {})]
    out: list[tuple[str, dict[str, ArgValue]]] = []
    if previous is None or previous == 0:
        out.append(("switch_on", {}))
    out.append(("set_dim", {"pct": level}))
    return out


def is_lamp(device: DeviceRef) -> bool:
    return any(c in device.profile.commands for c in LAMP_COMMANDS)


class LightingDispatcher:
    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        registry: Callable[[], Registry],
        commands: Submitter,
        defaults: SiteDefaults,
        clock: Callable[[], datetime] = utcnow,
        reload_s: float = 30.0,
    ) -> None:
        self._store = LightingStore(pool)
        self._registry = registry
        self._commands = commands
        self._defaults = defaults
        self._clock = clock
        self._reload_s = reload_s
        self._poked = asyncio.Event()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        pool: AsyncConnectionPool,
        registry: Callable[[], Registry],
        commands: Submitter,
    ) -> LightingDispatcher:
        return cls(
            pool=pool,
            registry=registry,
            commands=commands,
            defaults=SiteDefaults(settings.site_lat, settings.site_lon, settings.site_timezone),
            reload_s=settings.lighting_reload_s,
        )

    def poke(self) -> None:
        """Re-read groups and schedules now (a change made in this process)."""
        self._poked.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                upcoming = await self.tick()
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("lighting: database unavailable (%s); retrying", str(exc).strip())
                upcoming = None
            delay = self._reload_s
            if upcoming is not None:
                delay = min(delay, max((upcoming - self._clock()).total_seconds(), 0.0))
            self._poked.clear()
            waiters = {
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(self._poked.wait()),
            }
            try:
                await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    async def tick(self) -> datetime | None:
        """Apply what is due for every group; returns the next step instant."""
        now = self._clock()
        upcoming: datetime | None = None
        for row in await self._store.plan_rows(now - LOOKBACK):
            try:
                plan = build_plan(row, self._defaults)
            except (ValidationError, ValueError) as exc:
                log.error("lighting: group %s has an unusable schedule: %s", row["id"], exc)
                continue
            await self._group(row["id"], plan, now)
            await self._reconcile(row["id"])
            nxt = next_step(plan, now, horizon=timedelta(days=2))
            if nxt is not None and (upcoming is None or nxt.instant < upcoming):
                upcoming = nxt.instant
        return upcoming

    async def _group(self, group_id: str, plan: Plan, now: datetime) -> None:
        recent = await self._store.last_dispatches(group_id, 2)
        last = recent[0] if recent else None
        due = due_steps(plan, last["instant"] if last else None, now)
        if due:
            step = due[0]
            if await self._store.claim(group_id, step.instant, step.level, step.source):
                previous = None if last is None or last["issued_at"] is None else last["level"]
                await self._issue(group_id, step, previous)
        elif last is not None and last["issued_at"] is None:
            # Claimed by a run that stopped before its commands went out.
            log.warning(
                "lighting: step %s of group %s was claimed but not issued; issuing it now",
                last["instant"].isoformat(),
                group_id,
            )
            before = recent[1] if len(recent) > 1 else None
            previous = None if before is None else int(before["level"])
            step = StepAt(last["instant"], int(last["level"]), last["source"])
            await self._issue(group_id, step, previous)

    async def _reconcile(self, group_id: str) -> None:
        """Send the newest step's level again to the lamps that missed it and are
        back online."""
        recent = await self._store.last_dispatches(group_id, 1)
        if not recent or recent[0]["issued_at"] is None:
            return
        step = recent[0]
        ids = [str(c) for c in step["commands"] or ()]
        back = await self._store.lamps_to_reconcile(ids, RECONCILE_TRIES)
        registry = self._registry()
        sent: list[str] = []
        for lamp_id in back:
            lamp = registry.device(lamp_id)
            if lamp is None or not is_lamp(lamp):
                continue
            # From an unknown level: switch on first (when the level is not 0).
            sent += await self._send(lamp, int(step["level"]), None)
            log.info(
                "lighting: lamp %s missed step %s of group %s; it is back, sending level %d",
                lamp_id,
                step["instant"].isoformat(),
                group_id,
                step["level"],
            )
        if sent:
            await self._store.add_commands(group_id, step["instant"], sent)

    async def _send(self, lamp: DeviceRef, level: int, previous: int | None) -> list[str]:
        ids: list[str] = []
        for name, args in lamp_commands(level, previous):
            command = lamp.profile.commands.get(name)
            if command is None:
                continue  # e.g. a switch-only controller has no set_dim
            checked = command.check_args(args)
            if not isinstance(checked, dict):
                log.error("lighting: %s refuses %s %s: %s", lamp.id, name, args, checked)
                continue
            record = await self._commands.submit(lamp, name, checked)
            ids.append(str(record["id"]))
        return ids

    async def _issue(self, group_id: str, step: StepAt, previous: int | None) -> None:
        registry = self._registry()
        lamps = [
            d
            for r in await self._store.member_devices(group_id)
            if (d := registry.device(r["id"])) is not None and is_lamp(d)
        ]
        ids: list[str] = []
        for lamp in lamps:
            ids += await self._send(lamp, step.level, previous)
        await self._store.issued(group_id, step.instant, ids)
        log.info(
            "lighting: group %s step %s (%s) -> level %d: %d commands to %d lamps",
            group_id,
            step.instant.isoformat(),
            step.source,
            step.level,
            len(ids),
            len(lamps),
        )
