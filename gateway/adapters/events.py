"""Live events: what the database announces on `polegw_events`, fanned out to
the console's event streams (GET /api/v1/events).

The announcements come from triggers (migration 0017: alarms, device state,
commands, emergencies, work orders) and from each process's TelemetryAnnouncer
(which devices committed batches had readings for, at most once a second), so
every replica hears every change, whoever made it. Each process holds one
LISTEN connection of its own, outside the API pool, and reconnects with
back-off when the database goes away; every stream gets the events through a small
bounded queue. A stream that falls behind (its queue is full) is ended: the
browser reconnects by itself and reloads what it shows. So are all streams
when the listener comes back after losing its connection (they may have missed
events meanwhile), and when the server stops.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.adapters.db import libpq_url
from gateway.backoff import Backoff
from gateway.core.readings import Batch
from gateway.core.registry import Registry

log = logging.getLogger(__name__)

CHANNEL = "polegw_events"
# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more.
MAX_PAYLOAD = 7900
NAMES = frozenset({"alarm", "device", "command", "telemetry", "emergency", "work_order"})


@dataclass(frozen=True, slots=True)
class LiveEvent:
    name: str
    data: dict[str, Any]


def telemetry_notices(device_ids: Iterable[str]) -> list[str]:
    """The NOTIFY payloads announcing readings committed for `device_ids`: each
    id once, split so that no payload reaches PostgreSQL's limit."""
    payloads: list[str] = []
    chunk: list[str] = []
    size = 0
    overhead = len(b'{"event":"telemetry","data":{"device_ids":[]}}')
    for device_id in dict.fromkeys(device_ids):
        cost = len(orjson.dumps(device_id)) + 1
        if chunk and overhead + size + cost > MAX_PAYLOAD:
            payloads.append(_telemetry_payload(chunk))
            chunk, size = [], 0
        chunk.append(device_id)
        size += cost
    if chunk:
        payloads.append(_telemetry_payload(chunk))
    return payloads


def _telemetry_payload(device_ids: list[str]) -> str:
    return orjson.dumps({"event": "telemetry", "data": {"device_ids": device_ids}}).decode()


class TelemetryAnnouncer:
    """Announces which devices got readings, after their batches committed: at
    most one NOTIFY statement per `every_s`, on a connection of the pool, never
    on the writer's. Announcing inside each batch's transaction cost the writer
    an extra round trip and the commit-time NOTIFY work on every batch (0.6-1.6 ms
    on an 8-10 ms batch of 2,500 readings, docs/decisions.md); here a batch costs
    one dict update on the event loop."""

    def __init__(self, pool: AsyncConnectionPool, *, every_s: float = 1.0) -> None:
        self._pool = pool
        self._every_s = every_s
        self._pending: dict[str, None] = {}
        self._wake = asyncio.Event()

    def committed(self, batch: Batch) -> None:
        """The pipeline's on_committed hook: quick, never raises."""
        if batch.readings:
            self._pending.update(dict.fromkeys(r.device_id for r in batch.readings))
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Announce until `stop` is set."""
        while not stop.is_set():
            if not self._pending:
                self._wake.clear()
                waiters = {
                    asyncio.ensure_future(self._wake.wait()),
                    asyncio.ensure_future(stop.wait()),
                }
                _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in pending:
                    waiter.cancel()
                continue
            device_ids, self._pending = self._pending, {}
            try:
                async with self._pool.connection() as conn:
                    await conn.execute(
                        "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p",
                        (CHANNEL, telemetry_notices(device_ids)),
                    )
            except (psycopg.Error, PoolTimeout) as exc:
                # The database is away: the listeners are too, and end their
                # streams when they are back (the console reloads then).
                log.debug("telemetry not announced: %s", exc)
            try:
                async with asyncio.timeout(self._every_s):
                    await stop.wait()
            except TimeoutError:
                pass


def poles_from(registry: Callable[[], Registry]) -> Callable[[str], str | None]:
    """A device's pole, from the gateway's current registry (None: not known)."""

    def pole_of(device_id: str) -> str | None:
        device = registry().device(device_id)
        return device.pole_id if device is not None else None

    return pole_of


class StreamEnded(Exception):
    """The stream is over (it fell behind, the listener reconnected, or the server stops)."""


class Subscription:
    """One client's stream: the events it may see, at most `size` waiting."""

    def __init__(self, visible: Callable[[LiveEvent], bool], size: int) -> None:
        self._visible = visible
        self._items: collections.deque[LiveEvent] = collections.deque()
        self._size = size
        self._wake = asyncio.Event()
        self.ended: str | None = None

    def offer(self, event: LiveEvent) -> bool:
        """Queue the event if the client may see it; False when the queue is full."""
        if self.ended is not None or not self._visible(event):
            return True
        if len(self._items) >= self._size:
            return False
        self._items.append(event)
        self._wake.set()
        return True

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self._items.clear()
            self._wake.set()

    async def next(self, wait_s: float) -> LiveEvent | None:
        """The next event; None when none came within `wait_s` seconds."""
        while True:
            if self.ended is not None:
                raise StreamEnded(self.ended)
            if self._items:
                return self._items.popleft()
            self._wake.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
            except TimeoutError:
                return None


class LiveEvents:
    """The process's listener and the streams it feeds."""

    def __init__(
        self,
        database_url: str,
        *,
        pole_of: Callable[[str], str | None],
        queue_size: int = 500,
        telemetry_every_s: float = 1.0,
    ) -> None:
        self._url = libpq_url(database_url)
        self._pole_of = pole_of
        self._queue_size = queue_size
        self._telemetry_every_s = telemetry_every_s
        self._subscriptions: set[Subscription] = set()
        self._closed = False
        self._telemetry: dict[str, None] = {}
        self._telemetry_due: asyncio.TimerHandle | None = None
        self._telemetry_last = 0.0
        self.listening = asyncio.Event()  # set while the LISTEN connection is up

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def streams(self) -> int:
        """Streams open now."""
        return len(self._subscriptions)

    def subscribe(self, visible: Callable[[LiveEvent], bool]) -> Subscription:
        subscription = Subscription(visible, self._queue_size)
        if self._closed:
            subscription.end("the server is stopping")
        else:
            self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def publish(self, event: LiveEvent) -> None:
        """Hand the event to every stream that may see it; end those that are full."""
        for subscription in list(self._subscriptions):
            if not subscription.offer(event):
                log.info("an event stream fell behind (%d queued): ended", self._queue_size)
                self._end(subscription, "fell behind")

    def close(self) -> None:
        """End every stream and refuse new ones (the server is stopping)."""
        self._closed = True
        if self._telemetry_due is not None:
            self._telemetry_due.cancel()
        for subscription in list(self._subscriptions):
            self._end(subscription, "the server is stopping")

    def _end(self, subscription: Subscription, reason: str) -> None:
        subscription.end(reason)
        self._subscriptions.discard(subscription)

    def received(self, payload: str) -> None:
        """One notification from the channel."""
        try:
            message = orjson.loads(payload)
            name, data = message["event"], message["data"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            name, data = None, None
        if name not in NAMES or not isinstance(data, dict):
            log.warning("ignored a notification on %s: %.200s", CHANNEL, payload)
            return
        if name == "telemetry":
            self._telemetry_arrived(data.get("device_ids") or [])
        else:
            self.publish(LiveEvent(name, data))

    def _telemetry_arrived(self, device_ids: list[str]) -> None:
        """Coalesce: at most one telemetry event per `telemetry_every_s`."""
        self._telemetry.update(dict.fromkeys(str(d) for d in device_ids))
        if self._telemetry_due is None and not self._closed:
            wait = self._telemetry_last + self._telemetry_every_s - time.monotonic()
            loop = asyncio.get_running_loop()
            self._telemetry_due = loop.call_later(max(0.0, wait), self._telemetry_flush)

    def _telemetry_flush(self) -> None:
        self._telemetry_due = None
        self._telemetry_last = time.monotonic()
        device_ids = sorted(self._telemetry)
        self._telemetry.clear()
        poles = {p for p in map(self._pole_of, device_ids) if p is not None}
        self.publish(LiveEvent("telemetry", {"device_ids": device_ids, "pole_ids": sorted(poles)}))

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until `stop` is set, then end every stream."""
        backoff = Backoff(first=0.5, cap=30.0)
        resumed = False
        try:
            while not stop.is_set():
                try:
                    await self._listen(stop, resumed=resumed)
                except psycopg.Error as exc:
                    if self.listening.is_set() or not resumed:  # once per outage
                        log.warning("live events: no database connection (%s); retrying", exc)
                        backoff.reset()
                    self.listening.clear()
                    resumed = True
                    try:
                        async with asyncio.timeout(backoff.next_delay()):
                            await stop.wait()
                    except TimeoutError:
                        pass
        finally:
            self.listening.clear()
            self.close()

    async def _listen(self, stop: asyncio.Event, *, resumed: bool) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._url,
            autocommit=True,
            application_name="polegw-events",
            connect_timeout=5,
            # A connection that dies silently (a cable, a failover) is noticed.
            keepalives=1,
            keepalives_idle=20,
            keepalives_interval=5,
            keepalives_count=3,
        ) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self.listening.set()
            if resumed:
                log.info("live events: listening again")
                for subscription in list(self._subscriptions):
                    self._end(subscription, "events may have been missed")
            while not stop.is_set():
                async for notify in conn.notifies(timeout=0.5):
                    self.received(notify.payload)
