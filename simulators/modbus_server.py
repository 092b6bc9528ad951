"""Simulated Modbus buses on pymodbus's asyncio server, with faults injected per device.

A bus is one TCP endpoint: a Modbus TCP device or gateway (`framer="socket"`),
or a serial-to-TCP converter spoken as RTU over TCP (`framer="rtu"`), with
several unit ids behind it. Each unit is a `ModbusDevice`
(simulators/modbus_devices.py) that obeys writes and whose registers are
refreshed from its model whenever they are read and older than `refresh_s`.

How requests are answered. pymodbus decodes each request frame and hands it to
its `ServerRequestHandler.handle_request`, which runs the request against the
server's datastore and sends the answer. That method reads the request from
`self.last_pdu` again after awaiting the datastore, so an answer that is
delayed goes out with the transaction id and unit of whatever request arrived
in the meantime. The bus therefore answers requests itself: its connection
handler (`_BusLink`, a `ServerRequestHandler` made by the server's
`callback_new_connection`) takes the request as decoded, in `handle_later`,
and answers it in its own task from the request it holds, through the
request's own `datastore_update` against the bus's devices (`_BusDatastore`,
the async_getValues/async_setValues interface pymodbus requests update). That
task is where faults act:

- `no_answer`: nothing is sent; the client times out.
- `slow`: the answer is sent `delay_s` later, with its own transaction id, and
  the connection goes on serving other requests in the meantime.
- `exception`: a Modbus exception response with `code` (0x04 device failure,
  0x0B gateway target failed to respond, …).
- `disconnect`: the TCP connection is closed when a request for the unit arrives.

A unit id with no device behind it is not answered on an RTU bus (nobody on
the line replies) and gets exception 0x0B on a Modbus TCP bus, as a gateway
would answer.

The bus keeps a log of its clients (`clients`): each connection with its peer,
when it opened and closed, and when each request arrived (monotonic clock), so
that a test can tell whether two pollers ever talked to one converter at once.
It is bounded (the last CLIENTS_KEPT connections, the last REQUESTS_KEPT
requests of each), so a long `polegw simulate` does not grow.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Self, cast

from pymodbus import ExceptionResponse, FramerType
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.core.profiles import Profile, ProfileCatalog
from gateway.core.site import DeviceSpec, SiteSpec
from gateway.errors import ConfigError
from simulators.ambient import Ambient
from simulators.modbus_devices import (
    Framer,
    ModbusDevice,
    Refusal,
    TableData,
    make_device,
    plan_buses,
)
from simulators.model import DEFAULT_LOCATION, Context, SimConfig

log = logging.getLogger(__name__)

_FRAMERS: Mapping[str, FramerType] = {"socket": FramerType.SOCKET, "rtu": FramerType.RTU}
_TABLE_OF_FUNCTION: Mapping[int, str] = {
    1: "coil", 5: "coil", 15: "coil",
    2: "discrete",
    3: "holding", 6: "holding", 16: "holding", 22: "holding", 23: "holding",
    4: "input",
}  # fmt: skip


class Fault(StrEnum):
    """What a faulty device does to a request addressed to it."""

    NO_ANSWER = "no_answer"
    SLOW = "slow"
    EXCEPTION = "exception"
    DISCONNECT = "disconnect"


@dataclass(frozen=True, slots=True)
class FaultSetting:
    kind: Fault
    delay_s: float = 2.0  # slow: how late the answer is
    code: int = ExcCodes.DEVICE_FAILURE  # exception: the exception code


CLIENTS_KEPT = 1000
REQUESTS_KEPT = 10_000


@dataclass(slots=True)
class Request:
    at: float  # time.monotonic() when it arrived
    unit: int
    function_code: int

    @property
    def is_write(self) -> bool:
        return self.function_code in (5, 6, 15, 16, 22, 23)


@dataclass(slots=True)
class ClientConnection:
    """One client connection to a simulated bus, as the bus saw it."""

    peer: tuple[str, int] | None
    opened: float  # time.monotonic()
    closed: float | None = None
    requests: deque[Request] = field(default_factory=lambda: deque(maxlen=REQUESTS_KEPT))

    def busy(self) -> tuple[float, float] | None:
        """From its first request (kept) to its last (None: it asked nothing)."""
        if not self.requests:
            return None
        return self.requests[0].at, self.requests[-1].at


class _BusDatastore:
    """A bus's devices, by unit id, in the shape a pymodbus request's
    `datastore_update(context, device_id)` expects of its context.

    A device's registers are refreshed from its model when they are read and
    older than `refresh_s` (wall-clock seconds): as fresh as a timer would keep
    them, without sampling the devices nobody polls."""

    def __init__(
        self, devices: Mapping[int, ModbusDevice], clock: Callable[[], float], refresh_s: float
    ) -> None:
        self.devices = devices
        self.clock = clock
        self.refresh_s = refresh_s
        self._stale_at: dict[int, float] = {}  # monotonic time each unit's registers go stale

    def refresh(self, device: ModbusDevice) -> None:
        device.refresh(self.clock())
        self._stale_at[device.unit] = time.monotonic() + self.refresh_s

    def device_ids(self) -> list[int]:
        return list(self.devices)

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> TableData | ExcCodes:
        table = _TABLE_OF_FUNCTION.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        device = self.devices[device_id]
        if time.monotonic() >= self._stale_at.get(device_id, 0.0):
            self.refresh(device)
        result = device.read(table, address, count)
        return ExcCodes(result.value) if isinstance(result, Refusal) else result

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int | bool]
    ) -> ExcCodes | None:
        table = _TABLE_OF_FUNCTION.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        refused = self.devices[device_id].write(table, address, values, self.clock())
        return None if refused is None else ExcCodes(refused.value)


class _SimClock:
    """Simulated epoch seconds: from `start` (default: now), `scale` times as fast as real time."""

    def __init__(self, start: float | None, scale: float) -> None:
        if scale <= 0:
            raise ValueError("time_scale must be positive")
        self._wall0 = time.time()
        self._start = self._wall0 if start is None else start
        self._scale = scale

    def __call__(self) -> float:
        return self._start + (time.time() - self._wall0) * self._scale


class _BusLink(ServerRequestHandler):
    """One client connection to the bus: answers each request in a task of its own."""

    def __init__(self, server: _BusServer) -> None:
        super().__init__(server, None, None, None)  # type: ignore[no-untyped-call]
        self.bus = server.bus
        self._answering: set[asyncio.Task[None]] = set()
        self.record: ClientConnection | None = None

    def callback_connected(self) -> None:
        super().callback_connected()
        peer = self.transport.get_extra_info("peername") if self.transport else None
        self.record = ClientConnection(tuple(peer[:2]) if peer else None, time.monotonic())
        self.bus.clients.append(self.record)

    def handle_later(self) -> None:
        # Called (soon) after callback_data decoded a request into last_pdu, and
        # before the next data can arrive: take the request now, while it is ours.
        request: ModbusPDU | None = self.last_pdu
        if request is None:
            return
        if self.record is not None:
            self.record.requests.append(
                Request(time.monotonic(), request.dev_id, request.function_code)
            )
        task = self.loop.create_task(self._answer(request, self.last_addr))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    def callback_disconnected(self, exc: Exception | None) -> None:
        super().callback_disconnected(exc)
        if self.record is not None and self.record.closed is None:
            self.record.closed = time.monotonic()
        for task in self._answering:
            task.cancel()

    async def _answer(self, request: ModbusPDU, addr: tuple[str, int] | None) -> None:
        bus, unit = self.bus, request.dev_id
        device = bus.datastore.devices.get(unit)
        if device is None:
            if bus.framer == "socket":  # a Modbus TCP gateway says so; an RTU line is silent
                code = ExcCodes.GATEWAY_NO_RESPONSE
                await self._send(request, ExceptionResponse(request.function_code, code), addr)
            return
        bus.requests[device.id] = bus.requests.get(device.id, 0) + 1
        fault = bus.faults.get(device.id)
        if fault is not None and fault.kind is Fault.NO_ANSWER:
            return
        if fault is not None and fault.kind is Fault.DISCONNECT:
            log.debug("unit %d (%s): closing the connection, as told", unit, device.id)
            self.transport.close()
            return
        if fault is not None and fault.kind is Fault.EXCEPTION:
            await self._send(request, ExceptionResponse(request.function_code, fault.code), addr)
            return
        if fault is not None:  # slow
            await asyncio.sleep(fault.delay_s)
        try:
            response = await request.datastore_update(bus.context, unit)
        except Exception:  # a bug in the simulator: the client hears 0x04, the log the cause
            log.exception("unit %d (%s): request %r failed", unit, device.id, request)
            response = ExceptionResponse(request.function_code, ExcCodes.DEVICE_FAILURE)
        await self._send(request, response, addr)

    async def _send(
        self, request: ModbusPDU, response: ModbusPDU, addr: tuple[str, int] | None
    ) -> None:
        response.transaction_id = request.transaction_id
        response.dev_id = request.dev_id
        if self.transport is not None and not self.transport.is_closing():
            self.pdu_send(response, addr=addr)


class _BusServer(ModbusTcpServer):
    """pymodbus's TCP server, with the bus's own connection handler."""

    def __init__(self, bus: ModbusSimulator, address: tuple[str, int]) -> None:
        # The server insists on a datastore; requests never reach it (see _BusLink).
        unused = [SimDevice(0, simdata=SimData(0, datatype=DataType.REGISTERS))]
        super().__init__(unused, framer=_FRAMERS[bus.framer], address=address)
        self.bus = bus

    def callback_new_connection(self) -> _BusLink:
        return _BusLink(self)


class ModbusSimulator:
    """One simulated bus: a TCP endpoint on `host`:`port` (0: any free port, see `.port`)
    with the given devices behind it, by their unit ids, until the context exits.

    `time_scale` runs the devices' models faster than real time (3600: an hour per
    second), from `start_time` (epoch seconds; default now); or `clock` gives the
    simulated time (epoch seconds) outright. `locations` places devices
    (device id -> (lat, lon)); the sun and the weather depend on it. A device's
    registers are never older than `refresh_s` seconds when read, and show a
    write at once.
    """

    def __init__(
        self,
        devices: Sequence[tuple[DeviceSpec, Profile]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        framer: Framer = "socket",
        seed: int = 1,
        config: SimConfig | None = None,
        locations: Mapping[str, tuple[float, float]] | None = None,
        ambient: Ambient | None = None,
        refresh_s: float = 0.5,
        time_scale: float = 1.0,
        start_time: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if framer not in _FRAMERS:
            raise ConfigError(f"Modbus framer must be socket or rtu, not {framer!r}")
        if refresh_s <= 0:
            raise ValueError("refresh_s must be positive")
        config = config or SimConfig()
        ambient = ambient or Ambient(seed, utc_offset_h=config.utc_offset_h)
        locations = locations or {}
        self.host, self.framer, self.refresh_s = host, framer, refresh_s
        self._port = port
        self.clock = clock or _SimClock(start_time, time_scale)
        by_unit: dict[int, ModbusDevice] = {}
        for spec, profile in devices:
            if spec.modbus is None:
                raise ConfigError(f"device {spec.id} has no modbus endpoint")
            if profile.modbus is None:
                raise ConfigError(
                    f"device {spec.id}: profile {profile.profile!r} has no modbus register map"
                )
            unit = spec.modbus.unit
            if unit in by_unit:
                raise ConfigError(
                    f"devices {by_unit[unit].id} and {spec.id} share unit {unit} on {host}:{port}"
                )
            lat, lon = locations.get(spec.id, DEFAULT_LOCATION)
            ctx = Context(seed, config, ambient, lat, lon)
            try:
                by_unit[unit] = make_device(spec, profile, ctx)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        self.datastore = _BusDatastore(by_unit, self.clock, refresh_s)
        # What pymodbus requests update: its annotations name ModbusServerContext,
        # the requests use async_getValues/async_setValues only.
        self.context = cast(ModbusServerContext, self.datastore)
        self._devices = {d.id: d for d in by_unit.values()}
        self.faults: dict[str, FaultSetting] = {}
        self.requests: dict[str, int] = {}  # requests addressed to each device so far
        # The connections so far, in order (the last CLIENTS_KEPT).
        self.clients: deque[ClientConnection] = deque(maxlen=CLIENTS_KEPT)
        self._server: _BusServer | None = None

    # -- running -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self.refresh()
        server = _BusServer(self, (self.host, self._port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError:
            raise ConfigError(
                f"cannot listen for Modbus on {self.host}:{self._port} "
                "(address in use, or not an address of this machine)"
            ) from None
        self._server = server
        listener = cast(asyncio.Server, server.transport)
        self._port = listener.sockets[0].getsockname()[1]
        log.info(
            "simulating %d Modbus devices on %s:%d (%s)",
            len(self._devices),
            self.host,
            self._port,
            "Modbus TCP" if self.framer == "socket" else "RTU over TCP",
        )

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    def refresh(self) -> None:
        """Bring every device's registers up to now (reads do it when they are stale)."""
        for device in self._devices.values():
            self.datastore.refresh(device)

    @property
    def port(self) -> int:
        """The port listened on (the one chosen by the system if 0 was asked for)."""
        return self._port

    # -- devices and faults ----------------------------------------------------------------

    def device(self, device_id: str) -> ModbusDevice:
        try:
            return self._devices[device_id]
        except KeyError:
            raise KeyError(f"no simulated Modbus device {device_id!r} on this bus") from None

    def set_fault(
        self,
        device_id: str,
        kind: Fault | str | None,
        *,
        delay_s: float = 2.0,
        code: int = ExcCodes.DEVICE_FAILURE,
    ) -> None:
        """Make the device misbehave from its next request on (`None`: behave again)."""
        self.device(device_id)
        if kind is None:
            self.faults.pop(device_id, None)
            return
        if delay_s < 0 or not 1 <= code <= 255:
            raise ValueError("a fault needs delay_s >= 0 and an exception code of 1..255")
        self.faults[device_id] = FaultSetting(Fault(kind), delay_s, code)

    def set_counter(self, device_id: str, metric: str, value: float) -> None:
        """Make a counter read `value` from now on; it counts on from there."""
        device = self.device(device_id)
        self.datastore.refresh(device)
        device.set_counter(metric, value)
        self.datastore.refresh(device)

    def reset_counter(self, device_id: str, metric: str) -> None:
        """The counter restarts from 0, as after a meter reset or replacement."""
        self.set_counter(device_id, metric, 0.0)

    def wrap_counter(self, device_id: str, metric: str, *, headroom: float | None = None) -> float:
        """Bring a counter to `headroom` (default: two register steps) below the value
        where its register wraps; it wraps as soon as that much more is counted.
        Returns the wrap point (in the metric's unit)."""
        span = self.device(device_id).counter_span(metric)
        self.set_counter(
            device_id, metric, span.wrap_at - (2 * span.scale if headroom is None else headroom)
        )
        return span.wrap_at

    def registers(self, device_id: str) -> dict[str, TableData]:
        """A copy of the device's tables as they are now: coil, discrete, holding, input."""
        return {table: list(data) for table, data in self.device(device_id).tables.items()}

    def values(self, device_id: str) -> dict[str, float | bool]:
        """Each mapped metric as the device's registers hold it now, decoded."""
        return dict(self.device(device_id).values)


# --- a site's Modbus devices ----------------------------------------------------------------


async def check_local(host: str) -> None:
    """Refuse a host the simulator cannot listen on: one that is not this machine's."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"Modbus simulator host {host!r} does not resolve: {exc}") from None
    for family, _, _, _, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address.is_loopback or address.is_unspecified:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((sockaddr[0], 0, *sockaddr[2:]))
            except OSError:
                raise ConfigError(
                    f"Modbus simulator host {host!r} ({address}) is not an address of this "
                    "machine: simulated devices can only listen on a local address"
                ) from None


async def run_modbus_devices(
    site: SiteSpec,
    catalog: ProfileCatalog,
    *,
    stop: asyncio.Event,
    seed: int = 1,
    config: SimConfig | None = None,
    refresh_s: float = 0.5,
    time_scale: float = 1.0,
) -> None:
    """Serve every Modbus device of `site`, one simulated bus per distinct (host, port),
    until `stop` is set. Every host must be an address of this machine."""
    buses = plan_buses(site, catalog)
    for host in sorted({host for host, _ in buses}):
        await check_local(host)
    config = config or SimConfig()
    ambient = Ambient(seed, utc_offset_h=config.utc_offset_h)  # one weather, one time
    clock = _SimClock(None, time_scale)
    async with AsyncExitStack() as stack:
        for (host, port), bus in buses.items():
            await stack.enter_async_context(
                ModbusSimulator(
                    bus.devices,
                    host=host,
                    port=port,
                    framer=bus.framer,
                    seed=seed,
                    config=config,
                    locations=bus.locations,
                    ambient=ambient,
                    refresh_s=refresh_s,
                    clock=clock,
                )
            )
        await stop.wait()
