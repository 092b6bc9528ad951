"""A Modbus bus: one TCP endpoint, one connection, one request at a time.

A bus is a Modbus TCP device, or a serial-to-TCP converter with several unit
ids behind it spoken as RTU-over-TCP. Its devices are polled on their own
intervals from one scheduler: start times are staggered across the interval,
a cycle that is already late by a whole interval is skipped and counted (never
queued up), and a device that keeps failing is quarantined with exponential
back-off, so it costs the others on its bus at most one timeout per back-off
period. After a timeout the connection is closed and opened again: a reply
that arrives late can then never be taken for the answer to a later request.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from pymodbus import FramerType, ModbusException
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from gateway.adapters.modbus_registers import (
    BlockDecoder,
    bit_write_masks,
    decode_block,
    encode_write,
)
from gateway.backoff import Backoff
from gateway.core.decode import decode_polled
from gateway.core.modbus_plan import ReadBlock, plan_reads
from gateway.core.profiles import ModbusPoint, ModbusWrite
from gateway.core.readings import Decoded
from gateway.core.registry import DeviceRef
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

# The logger pymodbus writes everything to (pymodbus.logging.Log).
PYMODBUS_LOGGER = "pymodbus.logging"


class PymodbusDemoted(logging.Filter):
    """pymodbus logs every failed exchange itself, at ERROR ("No response received
    after 0 retries") and WARNING ("Failed to connect", "Repeating...."): one line
    per failed poll of a dead device. The bus says the same once per run of
    failures and once on recovery (`_failed`, `_succeeded`, `_connected`), so
    pymodbus's own records are demoted to DEBUG and kept only when the gateway
    logs at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno = logging.DEBUG
        record.levelname = logging.getLevelName(logging.DEBUG)
        return logging.getLogger("gateway").isEnabledFor(logging.DEBUG)


def demote_pymodbus_logging() -> None:
    """Install PymodbusDemoted on pymodbus's logger (once; idempotent)."""
    logger = logging.getLogger(PYMODBUS_LOGGER)
    if not any(isinstance(f, PymodbusDemoted) for f in logger.filters):
        logger.addFilter(PymodbusDemoted())


Deliver = Callable[[Decoded], Awaitable[None]]
# Records a device's state change; must not block (the scheduler calls it inline).
StateChange = Callable[[str, bool, datetime, str | None], None]


@dataclass(frozen=True, slots=True)
class BusAddress:
    host: str
    port: int
    framer: str  # "socket" (Modbus TCP) | "rtu" (RTU over TCP)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{self.framer}"


@dataclass(frozen=True, slots=True)
class PolledDevice:
    ref: DeviceRef
    unit: int
    interval_s: float
    blocks: tuple[ReadBlock, ...]
    decoders: tuple[BlockDecoder, ...] = field(compare=False)  # one per block, compiled once

    @classmethod
    def of(cls, ref: DeviceRef, unit: int, interval_s: float) -> PolledDevice:
        modbus = ref.profile.modbus
        if modbus is None:
            raise ValueError(f"profile {ref.profile.profile!r} has no register map")
        blocks = tuple(plan_reads(modbus))
        decoders = tuple(BlockDecoder(block, modbus) for block in blocks)
        return cls(ref, unit, interval_s, blocks, decoders)


class PollFailed(Exception):
    """One poll of one device failed; `kind` is a metric label."""

    def __init__(self, kind: str, detail: str, *, reconnect: bool) -> None:
        super().__init__(detail)
        self.kind = kind
        self.reconnect = reconnect


@dataclass(slots=True)
class Health:
    """A device's run of failures, quarantine and derived online state."""

    failures: int = 0
    online: bool | None = None
    quarantined_until: float = 0.0
    backoff: Backoff = field(default_factory=Backoff)


@dataclass(frozen=True, slots=True)
class BusOptions:
    timeout_s: float = 1.0
    rtu_gap_s: float = 0.005  # quiet time between frames on a serial line
    offline_after: int = 3  # consecutive failed polls before a device is offline + quarantined
    quarantine_cap_s: float = 300.0
    # A poll (all of a device's block reads) taking longer than this counts as a
    # failure even if every read answered: the device holds up the whole bus.
    # Default: two request timeouts.
    slow_poll_s: float | None = None
    # Reconnecting to an endpoint that is down: back-off from the first delay,
    # doubling up to the cap (each delay drawn from [d/2, d]). A device that
    # comes back is polled again at most max_reconnect_wait_s(outage) after.
    reconnect_first_s: float = 0.5
    reconnect_cap_s: float = 30.0

    def max_reconnect_wait_s(self, outage_s: float) -> float:
        """After an endpoint was unreachable for `outage_s`, the longest the bus
        may still wait before it tries again: the delay in effect then. The
        attempts before it were spaced by at least half their delays, so that
        delay is at most 2 * outage + first (and at most the cap)."""
        return min(self.reconnect_cap_s, 2 * outage_s + self.reconnect_first_s)

    @property
    def slow_after_s(self) -> float:
        return self.slow_poll_s if self.slow_poll_s is not None else 2 * self.timeout_s


_READS: Final = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _raise_if_cancel_swallowed() -> None:
    """Re-raise a cancellation that a library under a poll swallowed. pymodbus's
    request (asyncio.wait_for on Python 3.11) can turn the cancel that arrives with
    its own time-out into "no response", and a cancel is delivered once: the bus
    would then poll for ever, and the gateway around it never stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ModbusBus:
    def __init__(
        self,
        address: BusAddress,
        devices: Sequence[PolledDevice],
        *,
        deliver: Deliver,
        on_state: StateChange,
        metrics: Metrics,
        options: BusOptions | None = None,
        known_online: Mapping[str, bool] | None = None,
    ) -> None:
        self.address = address
        self._devices = list(devices)
        self._deliver = deliver
        self._on_state = on_state
        self._m = metrics
        self._o = options or BusOptions()
        # Seeded from the last recorded state, so a restart neither re-announces
        # a device that stayed offline nor misses "back online" for one that returns.
        known = known_online or {}
        self._health = {d.ref.id: self._new_health(d, known.get(d.ref.id)) for d in self._devices}
        self._by_id = {d.ref.id: d for d in self._devices}
        self._client: AsyncModbusTcpClient | None = None
        self._connect_backoff = Backoff(
            first=self._o.reconnect_first_s, cap=self._o.reconnect_cap_s
        )
        self._next_connect = 0.0
        self._lock = asyncio.Lock()  # one request at a time; a write waits for a whole poll
        self._stopped = False
        self._label = label = str(address)
        # Each poll updates these: their children are looked up once, not per poll.
        m = metrics
        self._m_lateness = m.modbus_poll_lateness.labels(label)
        self._m_skipped = m.modbus_skipped_cycles.labels(label)
        self._m_poll_seconds = m.modbus_poll_seconds.labels(label)
        self._m_polls_ok = m.modbus_polls.labels(label, "ok")
        self._m_points_read = m.modbus_points_read
        self._source = {
            d.ref.id: f"modbus://{address.host}:{address.port}/{d.unit}" for d in self._devices
        }
        self._rtu_gap_s = self._o.rtu_gap_s if address.framer == "rtu" else 0.0
        self._sleeper: asyncio.Future[None] | None = None  # the scheduler's wait, if waiting
        demote_pymodbus_logging()

    @property
    def device_count(self) -> int:
        return len(self._devices)

    @property
    def device_ids(self) -> list[str]:
        return list(self._by_id)

    def known_online(self) -> dict[str, bool]:
        """The devices whose state this bus has established."""
        return {d: h.online for d, h in self._health.items() if h.online is not None}

    def _new_health(self, device: PolledDevice, online: bool | None) -> Health:
        first = max(device.interval_s, 1.0)
        backoff = Backoff(first=first, cap=max(first, self._o.quarantine_cap_s))
        return Health(online=online, backoff=backoff)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every device on its interval until `stop` is set."""
        self._stopped = False
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = len(self._devices)
        heap = [
            (start + d.interval_s * i / n, i, d) for i, d in enumerate(self._devices)
        ]  # staggered
        heapq.heapify(heap)
        # The wait for the next poll is one future, resolved by a timer or by `stop`:
        # a sleep that `stop` cuts short, at the cost of asyncio.sleep (a timeout
        # around stop.wait() cost a cancellation per poll).
        stopper = asyncio.create_task(self._wake_on(stop), name=f"modbus-bus {self._label} stop")
        try:
            while heap and not stop.is_set():
                due, i, device = heap[0]
                if due > loop.time():
                    self._sleeper = sleeper = loop.create_future()
                    timer = loop.call_at(due, _resolve, sleeper)
                    try:
                        await sleeper
                    finally:
                        timer.cancel()
                        self._sleeper = None
                    if stop.is_set():
                        break
                heapq.heappop(heap)
                now = loop.time()
                late = now - due
                health = self._health[device.ref.id]
                if health.quarantined_until <= now:
                    self._m_lateness.observe(max(0.0, late))
                if late >= device.interval_s:  # a whole cycle missed: skip, never queue up
                    missed = int(late // device.interval_s)
                    self._m_skipped.inc(missed)
                    due += missed * device.interval_s
                if health.quarantined_until <= now:
                    await self._poll(device, health)
                    _raise_if_cancel_swallowed()
                heapq.heappush(
                    heap, (max(due + device.interval_s, health.quarantined_until), i, device)
                )
        finally:
            stopper.cancel()
            self._stopped = True
            await self.close()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        if self._sleeper is not None:
            _resolve(self._sleeper)

    async def _poll(self, device: PolledDevice, health: Health) -> None:
        try:
            async with self._lock:
                ts = datetime.now(UTC)  # when the device is actually read
                started = time.perf_counter()
                values = await self._read_device(device)
                took = time.perf_counter() - started
        except PollFailed as exc:
            self._m.modbus_polls.labels(self._label, exc.kind).inc()
            if exc.reconnect:
                await self.close()
            self._failed(device, health, exc)
            return
        except Exception as exc:  # a device's bad answer must never stop the bus or the gateway
            log.exception("Modbus device %s: unexpected error while polling", device.ref.id)
            self._m.modbus_polls.labels(self._label, "internal").inc()
            self._failed(device, health, PollFailed("internal", repr(exc), reconnect=True))
            await self.close()
            return
        self._m_poll_seconds.observe(took)
        self._m_points_read.inc(len(values))
        source = self._source[device.ref.id]
        await self._deliver(decode_polled(device.ref, values, ts, source=source))
        if took > self._o.slow_after_s:
            # Answers, but holds the bus longer than one request may: treated like a
            # failure, so a slow device is quarantined instead of delaying the rest.
            self._m.modbus_polls.labels(self._label, "slow").inc()
            self._failed(device, health, PollFailed("slow", f"took {took:.2f}s", reconnect=False))
            return
        self._m_polls_ok.inc()
        self._connect_backoff.reset()  # an answered exchange, not just a TCP connect
        self._succeeded(device, health)

    async def _read_device(self, device: PolledDevice) -> dict[str, object]:
        client = await self._connected()
        values: dict[str, object] = {}
        for decoder in device.decoders:
            registers = await self._request(client, decoder.block, device.unit)
            values.update(decoder.decode(registers))
        return values

    async def _request(
        self, client: AsyncModbusTcpClient, block: ReadBlock, unit: int
    ) -> Sequence[int] | Sequence[bool]:
        """One block read. Its time limit is pymodbus's own (the client's timeout,
        retries 0): an asyncio timeout around it as well cost ~17 us per poll and never
        fired first."""
        read = getattr(client, _READS[block.table])
        try:
            response = await read(block.start, count=block.count, device_id=unit)
        except BaseException as exc:
            await self._exchange_failed(exc)
            raise
        finally:
            if self._rtu_gap_s > 0:
                await asyncio.sleep(self._rtu_gap_s)
        if response.isError():
            code = getattr(response, "exception_code", None)
            raise PollFailed("exception", f"exception response (code {code})", reconnect=False)
        if block.table in ("coil", "discrete"):
            if len(response.bits) < block.count:
                detail = f"asked for {block.count} bits at {block.start}, got {len(response.bits)}"
                raise PollFailed("protocol", detail, reconnect=True)
            return list(response.bits[: block.count])
        registers: list[int] = response.registers
        if len(registers) != block.count:
            detail = f"asked for {block.count} registers at {block.start}, got {len(registers)}"
            raise PollFailed("protocol", detail, reconnect=True)
        return registers

    async def write(self, device_id: str, write: ModbusWrite) -> float | bool | None:
        """Execute one command write on a device of this bus; with readback, read the
        point again and return what the device now reports (None without readback).

        Runs under the bus lock, so it never interleaves with a poll. Raises
        PollFailed (kind, detail) when the device does not take the write.
        """
        device = self._by_id[device_id]
        modbus = device.ref.profile.modbus
        assert modbus is not None
        point = modbus.points[write.point]
        health = self._health[device_id]
        if health.quarantined_until > asyncio.get_running_loop().time():
            # Offline: a write would cost the bus a full timeout for nothing.
            raise PollFailed(
                "offline", "the device is offline (not answering polls)", reconnect=False
            )
        async with self._lock:
            client = await self._connected()
            try:
                await self._write_point(client, device.unit, point, write.value)
                if not write.readback:
                    return None
                block = plan_reads(modbus, only=[write.point])[0]
                registers = await self._request(client, block, device.unit)
            except PollFailed as exc:
                if exc.reconnect:
                    await self.close()
                raise
            return decode_block(block, modbus, registers)[write.point]

    async def _write_point(
        self, client: AsyncModbusTcpClient, unit: int, point: ModbusPoint, value: float | bool
    ) -> None:
        try:
            encoded = encode_write(point, value)
        except ValueError as exc:
            raise PollFailed("refused", str(exc), reconnect=False) from exc
        async with self._exchange():
            if point.table == "coil":
                response = await client.write_coil(point.address, bool(encoded), device_id=unit)
            elif point.bit is not None:
                and_mask, or_mask = bit_write_masks(point, bool(value))
                response = await client.mask_write_register(
                    address=point.address, and_mask=and_mask, or_mask=or_mask, device_id=unit
                )
            else:
                assert isinstance(encoded, list)
                response = await client.write_registers(point.address, encoded, device_id=unit)
        if response.isError():
            code = getattr(response, "exception_code", None)
            detail = f"device refused the write (exception code {code})"
            raise PollFailed("exception", detail, reconnect=False)

    @contextlib.asynccontextmanager
    async def _exchange(self) -> AsyncIterator[None]:
        """One write and its answer, with a time limit of its own on top of pymodbus's:
        failures as PollFailed, then the RTU quiet gap."""
        try:
            async with asyncio.timeout(self._o.timeout_s * 1.5):
                yield
        except BaseException as exc:
            await self._exchange_failed(exc)
            raise
        finally:
            if self._rtu_gap_s > 0:
                await asyncio.sleep(self._rtu_gap_s)

    async def _exchange_failed(self, exc: BaseException) -> None:
        """A request failed with `exc`: raise it as PollFailed, or let it go on."""
        if isinstance(exc, TimeoutError | ModbusIOException):
            detail = f"no answer within {self._o.timeout_s:g}s"
            raise PollFailed("timeout", detail, reconnect=True) from exc
        if isinstance(exc, ConnectionException):
            raise PollFailed("connection", f"connection lost: {exc}", reconnect=True) from exc
        if isinstance(exc, ModbusException):
            raise PollFailed("protocol", str(exc), reconnect=True) from exc
        if isinstance(exc, asyncio.CancelledError):
            # Abandoned mid-exchange (a command's timeout, shutdown): the answer may
            # still come, so this connection must not carry the next request.
            await self.close()

    async def _connected(self) -> AsyncModbusTcpClient:
        if self._stopped:  # rebuilt: its replacement owns the endpoint now
            raise PollFailed("stopped", f"bus {self.address} was rebuilt", reconnect=False)
        if self._client is not None and self._client.connected:
            return self._client
        now = time.monotonic()
        if now < self._next_connect:
            raise PollFailed("connection", f"bus {self.address} is reconnecting", reconnect=False)
        client = AsyncModbusTcpClient(
            self.address.host,
            port=self.address.port,
            framer=FramerType.RTU if self.address.framer == "rtu" else FramerType.SOCKET,
            timeout=self._o.timeout_s,
            retries=0,
            reconnect_delay=0,  # the bus reconnects on its own schedule
        )
        try:
            ok = await client.connect()
        except (OSError, ModbusException):
            ok = False
        if not ok:
            client.close()
            delay = self._connect_backoff.next_delay()
            self._next_connect = time.monotonic() + delay
            self._m.modbus_connect_failures.labels(self._label).inc()
            if self._connect_backoff.failures == 1:
                log.warning("Modbus bus %s unreachable; retrying with back-off", self.address)
            raise PollFailed("connection", f"cannot connect to {self.address}", reconnect=False)
        if self._stopped:  # stopped while connecting (a lease lost): never talk on it
            client.close()
            raise PollFailed("stopped", f"bus {self.address} was stopped", reconnect=False)
        if self._connect_backoff.failures:
            log.info("Modbus bus %s connected again", self.address)
        # The back-off starts over only after an answered exchange (see _poll):
        # an endpoint that accepts and drops connections is not hammered.
        self._client = client
        return client

    async def close(self) -> None:
        """Close the bus's connection (the next request opens a new one)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _failed(self, device: PolledDevice, health: Health, exc: PollFailed) -> None:
        health.failures += 1
        if health.failures == 1:
            log.warning(
                "Modbus device %s (unit %d on %s): %s",
                device.ref.id,
                device.unit,
                self.address,
                exc,
            )
        if health.failures >= self._o.offline_after:
            if exc.kind not in ("connection", "stopped"):
                # The bus itself being down is not the device's fault: the bus's
                # own reconnect back-off covers it, and the device is polled
                # again as soon as the bus is back.
                delay = health.backoff.next_delay()
                health.quarantined_until = asyncio.get_running_loop().time() + delay
            if health.online is not False:
                health.online = False
                self._update_quarantined()
                log.warning(
                    "Modbus device %s offline after %d failed polls; retrying every %.0fs at most",
                    device.ref.id,
                    health.failures,
                    self._o.quarantine_cap_s,
                )
                self._report_state(device.ref.id, False, str(exc))

    def _succeeded(self, device: PolledDevice, health: Health) -> None:
        if health.failures and health.online is not False:
            log.info("Modbus device %s answers again", device.ref.id)
        health.failures = 0
        health.quarantined_until = 0.0
        health.backoff.reset()
        if health.online is not True:
            was_offline = health.online is False
            health.online = True
            self._update_quarantined()
            if was_offline:
                log.info("Modbus device %s back online", device.ref.id)
            self._report_state(device.ref.id, True, None)

    def _report_state(self, device_id: str, online: bool, detail: str | None) -> None:
        self._on_state(device_id, online, datetime.now(UTC), detail)

    def _update_quarantined(self) -> None:
        n = sum(1 for h in self._health.values() if h.online is False)
        self._m.modbus_quarantined.labels(self._label).set(n)
