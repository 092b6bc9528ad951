"""The alarm leader's view of what all replicas committed (replica mode only).

With shared subscriptions each replica commits its share of the readings, so a
device's readings reach the database through several processes, each a little
late or early. The alarm leader therefore does not evaluate the readings its own
ingest committed; it reads back, per (device, watched metric), the readings
committed after its position there, and evaluates a reading only once it has
been visible for `settle_s`. Readings of one device are so evaluated in their
time order even when the replica that received the later one committed first
(up to `settle_s` apart), which is what rules with a duration or hysteresis
need to give the alarms one process gives.

Offline detection asks the database too: before a device is called offline,
and every few seconds for a device that is, its newest reading or event is
looked up, so a device heard by another replica is neither alarmed nor kept
offline. (docs/decisions.md "Alarms across replicas (issue 19)".)
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta

from psycopg_pool import AsyncConnectionPool

from gateway.adapters.committed_readings import evaluated_until, last_heard, readings_after
from gateway.core.alarms import AlarmEngine, Target
from gateway.core.profiles import ProfileCatalog
from gateway.core.readings import Reading

Pair = tuple[str, str]  # (device, metric)


class CommittedFeed:
    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        engine: AlarmEngine,
        catalog: ProfileCatalog,
        settle_s: float,
        per_pair: int = 1000,
        quiet_cap_s: float = 4.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._engine = engine
        self._catalog = catalog
        self._settle_s = settle_s
        self._per_pair = per_pair
        self._quiet_cap_s = quiet_cap_s
        # A pair that had nothing new is asked again after a growing pause (up to
        # quiet_cap_s): most devices report every minute or so, and asking each
        # every tick would cost the database for nothing. Timing is unaffected
        # (rules use the readings' own times); only the alarm comes that much later.
        self._quiet: dict[Pair, tuple[float, float]] = {}  # pause, next ask
        self._monotonic = monotonic
        self._positions: dict[Pair, datetime] = {}
        self._first_seen: dict[tuple[str, str, datetime], float] = {}
        self._from = datetime.min
        self._resume: Mapping[tuple[str, str], datetime] = {}

    def lookback(self) -> timedelta:
        """How far back a new leader starts: long enough to see a condition that
        must hold for the longest `for_s` begin, capped at a day."""
        seconds = min(86400.0, self._engine.longest_hold() + self._settle_s + 60.0)
        return timedelta(seconds=seconds)

    async def start(self, now: datetime) -> None:
        """A new term: readings from `now - lookback()` on are evaluated, except
        those an earlier leader evaluated (up to its alarms' last readings)."""
        self._positions.clear()
        self._first_seen.clear()
        self._quiet.clear()
        self._from = now - self.lookback()
        async with self._pool.connection() as conn:
            self._resume = await evaluated_until(conn, self._from)

    def _position(self, target: Target, metric: str) -> datetime:
        key = (target.device_id, metric)
        pos = self._positions.get(key)
        if pos is None:
            starts = []
            for rule in self._engine.rules_of(target.profile, metric):
                start = max(self._from, self._resume.get((rule.key, target.device_id), self._from))
                self._engine.resume(rule.key, target.device_id, start)
                starts.append(start)
            pos = self._positions[key] = min(starts, default=self._from)
        return pos

    def position(self, device_id: str, metric: str) -> datetime | None:
        """The time of the newest reading of (device, metric) evaluated so far."""
        return self._positions.get((device_id, metric))

    async def round(self, targets: Iterable[Target]) -> list[Reading]:
        """The readings ready to evaluate, per device in time order."""
        asked = self._monotonic()
        pairs = [
            (t.device_id, m, self._position(t, m))
            for t in targets
            for m in self._engine.watched(t.profile)
        ]
        live = {(d, m) for d, m, _ in pairs}
        for gone in [k for k in self._positions if k not in live]:
            del self._positions[gone]
            self._quiet.pop(gone, None)
        pairs = [p for p in pairs if self._quiet.get((p[0], p[1]), (0.0, 0.0))[1] <= asked]
        async with self._pool.connection() as conn:
            rows = await readings_after(conn, pairs, self._per_pair)
        now = self._monotonic()
        by_pair: dict[Pair, list[Reading]] = defaultdict(list)
        for r in rows:
            by_pair[(r.device_id, r.metric)].append(r)
        for d, m, _ in pairs:
            if (d, m) in by_pair:
                self._quiet.pop((d, m), None)
            else:
                pause = min(self._quiet_cap_s, max(0.25, 2 * self._quiet.get((d, m), (0.0,))[0]))
                self._quiet[(d, m)] = (pause, asked + pause)
        ready: list[Reading] = []
        for key, readings in by_pair.items():
            readings.sort(key=lambda r: r.ts)
            firsts = [
                self._first_seen.setdefault((r.device_id, r.metric, r.ts), now) for r in readings
            ]
            for r, first in zip(readings, firsts, strict=True):
                if now - first < self._settle_s:
                    break  # this one and those after it wait
                ready.append(r)
                del self._first_seen[(r.device_id, r.metric, r.ts)]
                self._positions[key] = r.ts
        ready.sort(key=lambda r: (r.device_id, r.ts))
        return ready

    async def heard(self, devices: Iterable[Target], since: datetime) -> dict[str, datetime]:
        """The newest reading (any metric of the profile) or event of each device
        after `since`, whoever committed it."""
        pairs = [
            (t.device_id, m)
            for t in devices
            if (profile := self._catalog.get(t.profile)) is not None
            for m in profile.metrics
        ]
        async with self._pool.connection() as conn:
            return await last_heard(conn, pairs, since)
