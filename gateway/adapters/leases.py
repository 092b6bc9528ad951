"""Leases in PostgreSQL (table `gateway_leases`, migration 0026): how replicas of
`polegw run` share the work that must happen once (docs/scaling.md).

A lease is a row (name, holder, token, expires_at). The holder renews it every
third of the TTL; another replica may take it only once `expires_at` has passed
by the database's clock, and the token then grows (a fencing token). The holder
stops using a lease at the latest `ttl - guard` after it *sent* its last
successful renewal, which is before the row can expire by any clock that runs
at the same rate: so the old holder has stopped before a new one starts, and no
two replicas ever poll one bus or lead one role at the same moment. A replica
that stops gracefully deletes its rows and notifies, so that the others take
over at once instead of after the TTL.

With `enabled=False` (one gateway, POLEGW_MQTT_SHARE_GROUP unset) the keeper
owns everything without touching the database: a single gateway keeps working
(and polling, and spooling) through a database outage as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import psycopg

from gateway.backoff import Backoff
from gateway.core.ownership import Observed, gone, group_of, plan, replica
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

CHANNEL = "polegw_leases"

Names = Callable[[], Iterable[str]]
Job = Callable[[], Coroutine[Any, Any, None]]


class LeaseLost(Exception):
    """This replica does not (or no longer) hold the lease it fences with."""


_ACQUIRE = """
INSERT INTO gateway_leases AS l (name, holder, token, acquired_at, renewed_at, expires_at)
SELECT n, %(me)s, 1, now(), now(), now() + make_interval(secs => %(ttl)s)
  FROM unnest(%(names)s::text[]) AS n
ON CONFLICT (name) DO UPDATE
   SET holder = excluded.holder,
       token = CASE WHEN l.holder = excluded.holder THEN l.token ELSE l.token + 1 END,
       acquired_at = CASE WHEN l.holder = excluded.holder THEN l.acquired_at ELSE now() END,
       renewed_at = now(),
       expires_at = excluded.expires_at
 WHERE l.holder = excluded.holder OR l.expires_at < now()
RETURNING name, token
"""

_RENEW = """
UPDATE gateway_leases
   SET renewed_at = now(), expires_at = now() + make_interval(secs => %(ttl)s)
 WHERE holder = %(me)s AND name = ANY(%(names)s::text[])
RETURNING name, token
"""

_OBSERVE = """
SELECT name, holder, expires_at < now()
  FROM gateway_leases
 WHERE name LIKE 'replica/%%' OR name = ANY(%(names)s::text[])
"""


class Lease:
    """One lease as this replica sees it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.token = 0
        self.deadline = 0.0  # monotonic: stop using it before this
        self.held = asyncio.Event()
        self.lost = asyncio.Event()
        self.lost.set()
        self.idle = asyncio.Event()  # no job runs under it
        self.idle.set()


class LeaseKeeper:
    def __init__(
        self,
        database_url: str,
        holder: str,
        *,
        ttl_s: float = 6.0,
        enabled: bool = True,
        metrics: Metrics | None = None,
    ) -> None:
        self._url = database_url
        self.holder = holder
        self.ttl_s = ttl_s
        self.enabled = enabled
        self._metrics = metrics
        # Stop using a lease this long before the database lets it expire.
        self._guard_s = max(ttl_s / 3, 1.0)
        self._every_s = ttl_s / 3
        self._groups: dict[str, Names] = {}
        self._leases: dict[str, Lease] = {}
        self._wake = asyncio.Event()
        self._draining: set[str] = set()  # held, being handed back (their jobs stopping)
        self._tasks: set[asyncio.Task[None]] = set()
        self.live_replicas = 1
        self.gone_replicas: list[str] = []  # heartbeat expired: their sessions to adopt

    # ------------------------------------------------------------------ asking

    def want(self, group: str, names: Names) -> None:
        """Try to hold a fair share of the leases `names()` returns (asked every
        round, so a changed site changes what is wanted)."""
        self._groups[group] = names

    def lease(self, name: str) -> Lease:
        try:
            return self._leases[name]
        except KeyError:
            lease = self._leases[name] = Lease(name)
            if not self.enabled:
                self._set_held(lease, token=0)
            return lease

    def holds(self, name: str) -> bool:
        return self.lease(name).held.is_set()

    def owned(self) -> dict[str, list[str]]:
        """What this replica holds, by group (for /readyz)."""
        out: dict[str, list[str]] = {}
        for name, lease in sorted(self._leases.items()):
            if lease.held.is_set() and not name.startswith("replica/"):
                kind, _, rest = name.partition("/")
                out.setdefault(kind, []).append(rest)
        return out

    def poke(self) -> None:
        """Run a round now (a bus added, a role released elsewhere)."""
        self._wake.set()

    async def while_held(self, name: str, job: Job, stop: asyncio.Event) -> None:
        """Run `job` while this replica holds `name`: started when the lease is
        taken, cancelled when it is lost or handed back, started again when it is
        taken again, until `stop` is set (the job sees `stop` too and is given a
        moment to finish by itself)."""
        lease = self.lease(name)
        while not stop.is_set():
            if not await _first(lease.held, stop):
                return
            lease.idle.clear()
            task = asyncio.create_task(job(), name=f"{name} (lease)")
            try:
                await _until(task, lease.lost, stop)
                if stop.is_set() and not task.done():
                    await asyncio.wait({task}, timeout=10.0)
            finally:
                if not task.done():
                    task.cancel()
                await asyncio.wait({task})
                lease.idle.set()
                self._wake.set()
            if task.cancelled():
                continue
            if (exc := task.exception()) is not None:
                log.error("%s stopped with an error; started again in 5 s", name, exc_info=exc)
                await _sleep_or_stop(stop, 5.0)
            elif not stop.is_set():  # done by itself: not again until the lease moves
                await _first(lease.lost, stop)

    async def fence(self, conn: psycopg.AsyncConnection[Any], name: str) -> None:
        """In `conn`'s transaction: lock the lease row as still ours, so that no
        other replica can take it over before this transaction ends (its
        takeover waits for the row). Raises LeaseLost when it is not ours."""
        if not self.enabled:
            return
        cur = await conn.execute(
            "SELECT token FROM gateway_leases WHERE name = %s AND holder = %s"
            " AND expires_at > now() FOR SHARE",
            (name, self.holder),
        )
        if await cur.fetchone() is None:
            self._drop(self.lease(name), "fenced out")
            raise LeaseLost(name)

    # ----------------------------------------------------------------- running

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the leases until `stop` is set, then hand them all back."""
        if not self.enabled:
            await stop.wait()
            return
        self.lease(replica(self.holder))
        watchdog = asyncio.create_task(self._watch_deadlines(stop), name="lease-deadlines")
        backoff = Backoff(first=0.5, cap=5.0)
        try:
            while not stop.is_set():
                try:
                    await self._connected(stop)
                except (psycopg.Error, OSError, TimeoutError) as exc:
                    log.warning("leases: no database connection (%s); retrying", exc or "timed out")
                    await _sleep_or_stop(stop, backoff.next_delay())
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    async def release_all(self, *, expire_heartbeat: bool = False) -> None:
        """Hand every lease back now (graceful shutdown: after the jobs stopped).
        With `expire_heartbeat` the `replica/{id}` row is kept but expired at once
        instead of deleted: the others count this replica as gone straight away,
        and one of them adopts what its MQTT session still holds or receives
        (gateway/adapters/adoption.py)."""
        if not self.enabled:
            return
        names = [n for n, lease in self._leases.items() if lease.held.is_set()]
        for name in names:
            self._drop(self._leases[name], "released")
        await _stopped([self._leases[n] for n in names], self._guard_s)
        try:
            async with await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=3, application_name="polegw-leases"
            ) as conn:
                heartbeat = replica(self.holder) if expire_heartbeat else ""
                await conn.execute(
                    "DELETE FROM gateway_leases WHERE holder = %s AND name <> %s",
                    (self.holder, heartbeat),
                )
                await conn.execute(
                    "UPDATE gateway_leases SET expires_at = now() WHERE name = %s AND holder = %s",
                    (heartbeat, self.holder),
                )
                await conn.execute(f"NOTIFY {CHANNEL}")
            log.info("leases handed back: %s", ", ".join(sorted(names)) or "none")
        except (psycopg.Error, OSError) as exc:
            log.warning("leases not handed back (they expire after %gs): %s", self.ttl_s, exc)

    async def _connected(self, stop: asyncio.Event) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._url,
            autocommit=True,
            application_name="polegw-leases",
            connect_timeout=3,
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=2,
        ) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            while not stop.is_set():
                async with asyncio.timeout(self._guard_s):
                    await self._round(conn)
                self._wake.clear()
                deadline = time.monotonic() + self._every_s
                while not stop.is_set() and not self._wake.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    async for _ in conn.notifies(timeout=min(left, 0.25), stop_after=1):
                        self._wake.set()

    async def _round(self, conn: psycopg.AsyncConnection[Any]) -> None:
        sent = time.monotonic()
        ttl = self.ttl_s
        me = self.holder
        held = [n for n, lease in self._leases.items() if lease.held.is_set()]
        mine = replica(me)
        if mine not in held:
            held.append(mine)
        cur = await conn.execute(_RENEW, {"ttl": ttl, "me": me, "names": held})
        renewed = {str(name): int(token) for name, token in await cur.fetchall()}
        for name in held:
            lease = self.lease(name)
            if name in renewed:
                self._set_held(lease, renewed[name], sent)
            elif lease.held.is_set():
                self._drop(lease, "taken over (not renewed in time)")
        wanted = {g: list(names()) for g, names in self._groups.items()}
        all_wanted = [n for names in wanted.values() for n in names]
        cur = await conn.execute(_OBSERVE, {"names": all_wanted})
        observed = {
            str(name): Observed(str(holder), bool(expired))
            for name, holder, expired in await cur.fetchall()
        }
        self.live_replicas = max(
            1, sum(1 for n, r in observed.items() if n.startswith("replica/") and not r.expired)
        )
        self.gone_replicas = gone(observed, me)
        todo = plan(
            me=me,
            wanted=wanted,
            held=[n for n in renewed if n not in self._draining],
            observed=observed,
        )
        acquire = list(todo.acquire)
        if mine not in renewed:
            acquire.append(mine)
        if acquire:
            cur = await conn.execute(_ACQUIRE, {"ttl": ttl, "me": me, "names": acquire})
            for name, token in await cur.fetchall():
                self._set_held(self.lease(str(name)), int(token), sent)
        for name in todo.release:
            if name in self._draining:
                continue
            self._draining.add(name)
            task = asyncio.create_task(self._hand_back(name), name=f"release {name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._metrics is not None:
            self._metrics.replicas_live.set(self.live_replicas)

    async def _hand_back(self, name: str) -> None:
        """Stop the lease's job, then delete its row (so the next holder starts
        only once this one has stopped)."""
        lease = self.lease(name)
        self._drop(lease, "handed back (fair share)")
        try:
            await _stopped([lease], self._guard_s)
            async with await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=3, application_name="polegw-leases"
            ) as conn:
                await conn.execute(
                    "DELETE FROM gateway_leases WHERE name = %s AND holder = %s",
                    (name, self.holder),
                )
                await conn.execute(f"NOTIFY {CHANNEL}")
        except (psycopg.Error, OSError) as exc:
            log.warning("lease %s not handed back (it expires): %s", name, exc)
        finally:
            self._draining.discard(name)

    def _set_held(self, lease: Lease, token: int, sent: float | None = None) -> None:
        if sent is not None:
            lease.deadline = sent + self.ttl_s - self._guard_s
        was = lease.held.is_set()
        lease.token = token
        if not was:
            lease.lost.clear()
            lease.held.set()
            if self.enabled:
                log.info("lease %s taken (token %d)", lease.name, token)
                self._count(lease.name, "acquired")
                self._gauge(lease.name, 1)

    def _drop(self, lease: Lease, why: str) -> None:
        if not lease.held.is_set():
            return
        lease.held.clear()
        lease.lost.set()
        log.info("lease %s given up: %s", lease.name, why)
        self._count(lease.name, "released" if "handed back" in why or why == "released" else "lost")
        self._gauge(lease.name, 0)

    def _count(self, name: str, change: str) -> None:
        if self._metrics is not None:
            self._metrics.lease_changes.labels(group_of(name), change).inc()

    def _gauge(self, name: str, value: int) -> None:
        if self._metrics is not None and not name.startswith("replica/"):
            self._metrics.lease_held.labels(name).set(value)

    async def _watch_deadlines(self, stop: asyncio.Event) -> None:
        """Give up every lease whose renewal is overdue (the database unreachable
        or slow): before it can expire for the others."""
        while not stop.is_set():
            now = time.monotonic()
            for lease in list(self._leases.values()):
                if lease.held.is_set() and now >= lease.deadline:
                    self._drop(lease, "not renewed in time")
            await _sleep_or_stop(stop, 0.1)


async def _stopped(leases: list[Lease], timeout_s: float) -> None:
    """Wait until no job runs under these leases (at most `timeout_s`)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            for lease in leases:
                await lease.idle.wait()


async def _until(task: asyncio.Task[None], *events: asyncio.Event) -> None:
    """Wait until `task` is done or one of `events` is set."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait({task, *waiters}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def _first(event: asyncio.Event, stop: asyncio.Event) -> bool:
    """Wait for `event` or `stop`; True when `event` is set."""
    if event.is_set():
        return True
    waiters = {asyncio.create_task(event.wait()), asyncio.create_task(stop.wait())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in waiters:
            t.cancel()
    return event.is_set() and not stop.is_set()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
