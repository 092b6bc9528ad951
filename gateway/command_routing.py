"""Commands across gateway replicas, through the database (docs/scaling.md).

A command is executed once, by one replica:

- A Modbus device's command by the replica that holds the lease of the
  device's bus (gateway/modbus_polling.py): the replica that received it
  claims it at once when that is itself, else records it unclaimed and
  notifies `polegw_commands`; the owner claims it (a conditional UPDATE, in a
  transaction fenced by the bus lease) and executes it. A sweep every few
  seconds claims what a lost notice left, hands back the unstarted commands of
  a replica that is gone, fails those it had sent (they may have been carried
  out: never twice), and times out commands nobody could claim.
- An MQTT device's command by the replica that received it (it publishes).
  The pole's reply reaches any replica through the shared subscription: one
  that is not waiting for it records the outcome (a conditional UPDATE, the
  reply's topic checked against the command's device and pole) and notifies;
  the waiting replica learns it from the notice, or from the sweep, instead of
  timing out.

Without replicas none of this runs: a single gateway executes what it receives.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg_pool import PoolTimeout

from gateway.adapters.command_store import CHANNEL, CommandStore
from gateway.adapters.leases import LeaseKeeper, LeaseLost
from gateway.backoff import Backoff
from gateway.core.registry import DeviceRef, Registry
from gateway.modbus_polling import bus_of

if TYPE_CHECKING:
    from gateway.commands import CommandDispatcher

log = logging.getLogger(__name__)

_DB_ERRORS = (psycopg.Error, PoolTimeout, OSError)


class CommandRouting:
    def __init__(
        self,
        *,
        database_url: str,
        store: CommandStore,
        leases: LeaseKeeper,
        registry: Callable[[], Registry],
        polls: Callable[[str], object | None],
        prefix: str,
        command_timeout_s: float,
        sweep_s: float,
    ) -> None:
        self._url = database_url
        self._store = store
        self._leases = leases
        self._registry = registry
        self._polls = polls  # the bus polling a device here now (ModbusPolling.bus_for)
        self._prefix = prefix
        self._sweep_s = sweep_s
        # A command nobody claimed by then is timed out, not carried out late:
        # the command's own timeout plus a takeover of its bus (two TTLs).
        self.claim_within_s = command_timeout_s + 2 * leases.ttl_s
        self._dispatcher: CommandDispatcher | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._kick = asyncio.Event()

    # ------------------------------------------------------------ the dispatcher's side

    def runs_here(self, device: DeviceRef) -> bool:
        """Whether this replica executes a command for `device` now: an MQTT
        device's (or an unpolled one's, which fails at once) always; a polled
        device's while its bus polls here, under the bus's lease."""
        return bus_of(device) is None or self._polls(device.id) is not None

    def kick(self) -> None:
        """Sweep now (a bus started polling here: claim what waits for it)."""
        self._kick.set()

    async def hand_on(self, device: DeviceRef, cid: uuid.UUID) -> bool:
        """A claimed Modbus command whose bus this replica no longer polls goes
        back to be claimed by the bus's owner. False: the device has no bus."""
        if bus_of(device) is None:
            return False
        await self._store.unclaim(cid, device.id)
        log.info("command %s to %s handed on to the owner of its bus", cid, device.id)
        return True

    def reply_elsewhere(self, topic: str, body: dict[str, Any]) -> None:
        """A pole's reply for a command this replica is not waiting for."""
        self._spawn(self._record_reply(topic, body), f"reply {body.get('id')}")

    # ------------------------------------------------------------------ running

    async def run(self, dispatcher: CommandDispatcher, stop: asyncio.Event) -> None:
        """Listen for commands to claim and outcomes to learn; sweep; until `stop`."""
        self._dispatcher = dispatcher
        sweeper = asyncio.create_task(self._sweep_forever(stop), name="command-sweep")
        backoff = Backoff(first=0.5, cap=5.0)
        try:
            while not stop.is_set():
                try:
                    await self._listen(stop)
                except (psycopg.Error, OSError) as exc:
                    log.warning("commands: no notices from the database (%s); retrying", exc)
                    self._kick.set()  # the sweep covers what was missed
                    await _sleep_or_stop(stop, backoff.next_delay())
        finally:
            # Stopping: a claim not made yet is left to the sweeps; a reply not recorded
            # yet makes its command time out at the sender, which is reported.
            for task in (sweeper, *self._tasks):
                task.cancel()
            await asyncio.gather(sweeper, *self._tasks, return_exceptions=True)

    async def _listen(self, stop: asyncio.Event) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, connect_timeout=3, application_name="polegw-commands"
        ) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self._kick.set()  # notices sent before LISTEN: sweep now
            while not stop.is_set():
                async for notice in conn.notifies(timeout=0.5):
                    self._on_notice(notice.payload)

    def _on_notice(self, payload: str) -> None:
        try:
            body = orjson.loads(payload)
            cid = uuid.UUID(body["id"])
            device_id = str(body["device"])
            kind = body["kind"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("commands: unreadable notice %r; ignored", payload[:200])
            return
        assert self._dispatcher is not None
        if kind == "done":
            self._dispatcher.recorded_elsewhere(cid)
        elif kind == "new":
            device = self._registry().device(device_id)
            if device is not None and self.runs_here(device):
                self._spawn(self._claim(device, cid), f"claim {cid}")

    async def _claim(self, device: DeviceRef, cid: uuid.UUID) -> None:
        """Claim and start a command this replica can run (a Modbus command
        under its bus's lease; an MQTT one handed back by a gone replica)."""
        lease = bus_of(device)
        assert self._dispatcher is not None

        async def fence(conn: psycopg.AsyncConnection[Any]) -> None:
            if lease is not None:
                await self._leases.fence(conn, lease)

        try:
            row = await self._store.claim(cid, within_s=self.claim_within_s, fence=fence)
        except LeaseLost:
            return
        except _DB_ERRORS as exc:
            log.warning("commands: could not claim %s (the sweep tries again): %s", cid, exc)
            return
        if row is None:
            return
        command = device.profile.commands.get(row["command"])
        if command is None:  # the profile changed since it was recorded
            await self._store.finished(cid, "failed", error="not a command of the device any more")
            return
        log.info("command %s to %s claimed from the database", cid, device.id)
        self._dispatcher.start(device, row["command"], dict(row["args"]), cid)

    async def _record_reply(self, topic: str, body: dict[str, Any]) -> None:
        parts = topic.split("/")
        n = len(self._prefix.split("/"))
        pole_id, device_id = parts[n], parts[n + 2]
        try:
            cid = uuid.UUID(str(body["id"]))
        except ValueError:
            log.warning("command reply on %s: %r is not a command id; ignored", topic, body["id"])
            return
        error = body.get("error")
        backoff = Backoff(first=0.5, cap=5.0)
        for _ in range(6):
            try:
                done = await self._store.replied(
                    cid,
                    pole_id=pole_id,
                    device_id=device_id,
                    ok=body.get("ok") is True,
                    error=None if error is None else str(error),
                )
            except _DB_ERRORS as exc:
                log.warning("could not record the reply to command %s: %s", cid, exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            if done:
                log.info("command %s: reply on %s recorded for its sender", cid, topic)
            else:
                log.info("reply for unknown or finished command %s on %s; ignored", cid, topic)
            return

    async def _sweep_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._kick.clear()  # (a kick during the sweep makes the next one come at once)
            try:
                await self.sweep()
            except _DB_ERRORS as exc:
                log.warning("commands: sweep failed (%s); again in %gs", exc, self._sweep_s)
            waiters = {asyncio.create_task(self._kick.wait()), asyncio.create_task(stop.wait())}
            try:
                await asyncio.wait(waiters, timeout=self._sweep_s)
            finally:
                for w in waiters:
                    w.cancel()

    async def sweep(self) -> None:
        """One round: commands of gone replicas, late ones, unclaimed ones this
        replica can run, and outcomes this replica waits for."""
        assert self._dispatcher is not None
        failed, back, late = await self._store.sweep_gone(within_s=self.claim_within_s)
        if failed or back or late:
            log.warning(
                "commands of gateway replicas that are gone: %d failed (sent), %d handed"
                " back (not started); %d timed out unclaimed",
                failed,
                back,
                late,
            )
        registry = self._registry()
        for cid, device_id in await self._store.unclaimed():
            device = registry.device(device_id)
            if device is not None and self.runs_here(device):
                await self._claim(device, cid)
        for cid in await self._store.outcomes(self._dispatcher.waiting()):
            self._dispatcher.recorded_elsewhere(cid)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass
