"""Device commands: checked against the profile, tracked in the database, executed
over Modbus (a write, then a readback) or MQTT (a publish, then the pole's reply).

States: pending -> sent -> succeeded | failed | timed_out. Commands to one device
run one at a time, in the order they were submitted.

With replicas (`routing`, gateway/command_routing.py) a command to a Modbus
device is executed by the replica that owns the device's bus: the receiving
replica records it unclaimed and the owner claims it. An MQTT command is
published by the receiving replica; its reply may reach any replica, which
records the outcome, and the waiting replica learns it from the database.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import psycopg
from psycopg_pool import PoolTimeout

from gateway.adapters.command_store import CommandStore
from gateway.adapters.modbus_bus import ModbusBus, PollFailed
from gateway.backoff import Backoff
from gateway.core.profiles import ArgValue, ModbusWrite
from gateway.core.registry import DeviceRef

if TYPE_CHECKING:
    from gateway.command_routing import CommandRouting

log = logging.getLogger(__name__)

# publish(topic, payload, expiry_s): the message must not be delivered after expiry_s.
Publish = Callable[[str, bytes, int], Awaitable[None]]


class Outcome(NamedTuple):
    state: str  # succeeded | failed | timed_out
    error: str | None = None
    result: object = None


class CommandDispatcher:
    def __init__(
        self,
        *,
        store: CommandStore,
        bus_for: Callable[[str], ModbusBus | None],
        publish: Publish,
        prefix: str,
        timeout_s: float,
        routing: CommandRouting | None = None,
    ) -> None:
        self._store = store
        self._routing = routing
        self._bus_for = bus_for
        self._publish = publish
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # A reply (ok, error), or None when another replica recorded the outcome.
        self._replies: dict[str, asyncio.Future[tuple[bool, str | None] | None]] = {}
        self._reply_topics: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(
        self, device: DeviceRef, name: str, args: dict[str, ArgValue]
    ) -> dict[str, Any]:
        """Record the command (pending) and start it; returns the record at once.

        `args` must already be checked with the profile's Command.check_args.
        With replicas, a command for a bus another replica owns is left to it."""
        here = self._routing is None or self._routing.runs_here(device)
        row = await self._store.create(device.id, name, dict(args), claim=here)
        if here:
            self.start(device, name, args, row["id"])
        return row

    def start(
        self, device: DeviceRef, name: str, args: dict[str, ArgValue], cid: uuid.UUID
    ) -> None:
        """Execute a command recorded (and, with replicas, claimed) by this process."""
        task = asyncio.create_task(self._execute(device, name, args, cid), name=f"command {cid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def waiting(self) -> list[uuid.UUID]:
        """Commands waiting for a pole's reply here (another replica may receive it)."""
        return [uuid.UUID(cid) for cid, f in self._replies.items() if not f.done()]

    def recorded_elsewhere(self, cid: uuid.UUID) -> None:
        """Another replica recorded the outcome of a command waiting here."""
        waiting = self._replies.get(str(cid))
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    async def close(self) -> None:
        """Cancel commands still running (the next start marks them failed)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _execute(
        self, device: DeviceRef, name: str, args: dict[str, ArgValue], cid: uuid.UUID
    ) -> None:
        async with self._locks[device.id]:
            try:
                if device.modbus is not None:
                    out = await self._via_modbus(device, name, args, cid)
                else:
                    out = await self._via_mqtt(device, name, args, cid)
            except Exception as exc:  # a background task's edge: record it, never lose it
                log.exception("command %s to %s failed unexpectedly", cid, device.id)
                out = Outcome("failed", f"internal error: {exc!r}")
            if out is None:  # handed on, or its outcome recorded by another replica
                return
            await self._record(cid, out)
            log.info("command %s %s to %s: %s %s", cid, name, device.id, out.state, out.error or "")

    async def _via_modbus(
        self, device: DeviceRef, name: str, args: dict[str, ArgValue], cid: uuid.UUID
    ) -> Outcome | None:
        write = device.profile.commands[name].modbus_write(args)
        if write is None:
            return Outcome("failed", f"{name!r} has no Modbus write in {device.profile.profile!r}")
        if self._bus_for(device.id) is None and await self._handed_on(device, cid):
            return None
        await self._store.sent(cid)
        for _attempt in range(2):  # a bus rebuilt meanwhile (site import): once more on the new one
            bus = self._bus_for(device.id)
            if bus is None:
                if await self._handed_on(device, cid):
                    return None  # its bus stopped here before the write: nothing was sent
                return Outcome("failed", "the device is not being polled (no Modbus bus for it)")
            try:
                async with asyncio.timeout(self._timeout_s):
                    got = await bus.write(device.id, write)
                break
            except TimeoutError:
                detail = f"the write did not complete within {self._timeout_s:g}s"
                return Outcome("timed_out", detail)
            except PollFailed as exc:
                if exc.kind == "stopped":
                    continue
                return Outcome("timed_out" if exc.kind == "timeout" else "failed", str(exc))
        else:
            if await self._handed_on(device, cid):
                return None
            return Outcome("failed", "the device's bus was being rebuilt; try again")
        if not write.readback:
            return Outcome("succeeded")
        result = {"readback": {write.point: got}}
        if _matches(device, write, got):
            return Outcome("succeeded", None, result)
        detail = f"read back {write.point} = {got!r}, expected {write.value!r}"
        return Outcome("failed", detail, result)

    async def _handed_on(self, device: DeviceRef, cid: uuid.UUID) -> bool:
        """With replicas, a command whose bus does not poll here (its lease moved
        since the claim, or is being taken over here) goes back, unstarted, to
        the bus's owner. A single gateway fails it instead (False)."""
        return self._routing is not None and await self._routing.hand_on(device, cid)

    async def _via_mqtt(
        self, device: DeviceRef, name: str, args: dict[str, ArgValue], cid: uuid.UUID
    ) -> Outcome | None:
        topic = f"{self._prefix}/{device.pole_id}/commands/{device.id}"
        payload = orjson.dumps({"id": str(cid), "command": name, "args": args})
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[tuple[bool, str | None] | None] = loop.create_future()
        self._replies[str(cid)] = reply
        self._reply_topics[str(cid)] = topic + "/reply"
        try:
            try:
                async with asyncio.timeout(self._timeout_s):
                    # A command still queued for the pole when its reply would come too
                    # late expires in the broker instead of being carried out later.
                    await self._publish(topic, payload, math.ceil(self._timeout_s))
            except TimeoutError:
                return Outcome("failed", "the broker did not accept the command in time")
            except Exception as exc:  # noqa: BLE001 - the adapter's error type is not ours to name
                return Outcome("failed", f"could not publish the command: {exc}")
            await self._store.sent(cid)
            try:
                async with asyncio.timeout(self._timeout_s):
                    got = await reply
            except TimeoutError:
                return Outcome("timed_out", f"no reply from the pole within {self._timeout_s:g}s")
            if got is None:
                log.info("command %s to %s: outcome recorded by another replica", cid, device.id)
                return None
            ok, error = got
            return Outcome("succeeded") if ok else Outcome("failed", error or "the device refused")
        finally:
            self._replies.pop(str(cid), None)
            self._reply_topics.pop(str(cid), None)

    async def _record(self, cid: uuid.UUID, out: Outcome) -> None:
        """Store the outcome, retrying a briefly unreachable database; a command
        still unfinished at the next start is marked failed there."""
        backoff = Backoff(first=0.5, cap=5.0)
        for _ in range(6):
            try:
                await self._store.finished(cid, out.state, error=out.error, result=out.result)
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("could not record command %s as %s: %s", cid, out.state, exc)
                await asyncio.sleep(backoff.next_delay())
            else:
                return
        log.error("command %s ended %s but could not be recorded", cid, out.state)

    def on_reply(self, topic: str, payload: bytes) -> None:
        """A message on …/commands/{device}/reply: resolve the waiting command."""
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            log.warning("command reply on %s is not JSON; ignored", topic)
            return
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            log.warning("command reply on %s has no id; ignored", topic)
            return
        waiting = self._replies.get(body["id"])
        expected_topic = self._reply_topics.get(body["id"])
        if waiting is not None and topic != expected_topic:
            log.warning(
                "reply for command %s arrived on %s, not %s; ignored",
                body["id"],
                topic,
                expected_topic,
            )
            return
        if waiting is None and self._routing is not None:
            # Shared subscriptions: the replica that sent it may be another one.
            self._routing.reply_elsewhere(topic, body)
            return
        if waiting is None or waiting.done():
            log.info("reply for unknown or finished command %s on %s; ignored", body["id"], topic)
            return
        error = body.get("error")
        waiting.set_result((body.get("ok") is True, None if error is None else str(error)))


def _matches(device: DeviceRef, write: ModbusWrite, got: float | bool | None) -> bool:
    """Did the device take the value? Numbers match within half a register step."""
    if isinstance(write.value, bool) or isinstance(got, bool):
        return bool(got) == bool(write.value)
    if got is None:
        return False
    modbus = device.profile.modbus
    assert modbus is not None
    step = abs(modbus.points[write.point].scale)
    return abs(float(got) - float(write.value)) <= step / 2 + 1e-9
