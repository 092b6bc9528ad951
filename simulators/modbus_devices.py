"""Simulated Modbus devices: the pure device models behind their profiles' register maps.

A `ModbusDevice` holds one device's four Modbus tables (coils, discrete inputs,
holding and input registers), sized by its profile's `modbus:` map. `refresh(t)`
samples the device's model (simulators/model.py) at `t` and encodes every mapped
metric into its registers with the gateway's own conversion, so what the
gateway decodes is what the model said. Writes to holding registers and coils
are decoded the same way and handed to the model: a lamp follows its dim level
and switch, a port meter switches a port's load off or on. An energy counter
lives in its register modulo the register's width, like a real meter's, and can
be set, reset or brought up to its wrap point on demand. `plan_buses` groups a
site's Modbus devices into buses, one per TCP endpoint.

No I/O and no clock: time is epoch seconds, given by the caller
(simulators/modbus_server.py serves these devices over Modbus TCP).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Literal

from gateway.adapters.modbus_registers import decode_point, encode_write
from gateway.core.profiles import (
    BIT_TABLES,
    MetricKind,
    ModbusMap,
    ModbusPoint,
    Profile,
    ProfileCatalog,
)
from gateway.core.site import DeviceSpec, SiteSpec
from gateway.errors import ConfigError
from simulators.ambient import Ambient
from simulators.model import (
    DEFAULT_LOCATION,
    MODELS,
    Context,
    DeviceModel,
    LampController,
    PortMeter,
    SimConfig,
    Value,
    Values,
    _PortLoad,
)

log = logging.getLogger(__name__)


# --- models that obey writes ---------------------------------------------------------


class Obeying:
    """A model that takes commands: which metrics may be written, and what a write does."""

    WRITABLE: ClassVar[frozenset[str]] = frozenset()

    def obey(self, metric: str, value: Value) -> None:
        raise KeyError(metric)


class SwitchedLamp(LampController, Obeying):
    """A lamp controller on its dusk-to-dawn schedule until the first command; from then on
    it keeps the commanded state: `lamp_on` switches it (at the last level, 100 % at
    first), a `dim_pct` above 0 lights it at that level and 0 switches it off."""

    WRITABLE = frozenset({"lamp_on", "dim_pct"})

    def __init__(self, device_id: str, ctx: Context) -> None:
        super().__init__(device_id, ctx)
        self.commanded_on: bool | None = None  # None: the schedule decides
        self.level = 100

    def _dim(self, t: float) -> int:
        if self.commanded_on is None:
            return super()._dim(t)
        return self.level if self.commanded_on else 0

    def obey(self, metric: str, value: Value) -> None:
        if metric == "lamp_on":
            self.commanded_on = bool(value)
        elif metric == "dim_pct":
            level = round(float(value))
            self.commanded_on = level > 0
            if level > 0:
                self.level = level
        else:
            raise KeyError(metric)


def _idle(t: float) -> float:
    return 0.0


class SwitchedPortMeter(PortMeter, Obeying):
    """A port meter whose `portN_switch_on` coils energise or cut each port's load.

    The spare port, switched on, is energised with nothing plugged in (0 W)."""

    WRITABLE = frozenset(f"port{n}_switch_on" for n in range(1, PortMeter.PORTS + 1))

    def __init__(self, device_id: str, ctx: Context) -> None:
        super().__init__(device_id, ctx)
        self.plugged = [load or _PortLoad("idle", _idle, 1.0) for load in self.loads]

    def switch(self, port: int, on: bool) -> None:
        """Energise (`on`) or cut port `port` (1-based)."""
        self.loads[port - 1] = self.plugged[port - 1] if on else None

    def obey(self, metric: str, value: Value) -> None:
        if metric not in self.WRITABLE:
            raise KeyError(metric)
        self.switch(int(metric.removeprefix("port").partition("_")[0]), bool(value))


#: The model of each profile a simulated Modbus device may have.
MODBUS_MODELS: Mapping[str, type[DeviceModel]] = {
    **MODELS,
    SwitchedLamp.profile: SwitchedLamp,
    SwitchedPortMeter.profile: SwitchedPortMeter,
}


# --- registers ---------------------------------------------------------------------------


class Refusal(Enum):
    """Why a read or write was refused, as the Modbus exception code the device answers."""

    ILLEGAL_ADDRESS = 0x02  # an address outside the table, or one that cannot be written
    ILLEGAL_VALUE = 0x03  # a value outside the metric's range


Table = str  # "coil" | "discrete" | "holding" | "input"
Framer = Literal["socket", "rtu"]  # Modbus TCP, or RTU over TCP
TableData = list[bool] | list[int]


@dataclass(frozen=True, slots=True)
class CounterSpan:
    """What an integer counter's register can hold: values wrap at `wrap_at`
    (in the metric's unit), back to `offset`."""

    offset: float
    scale: float
    modulus: int  # raw values: 0 … modulus-1
    signed: bool

    @property
    def wrap_at(self) -> float:
        top = self.modulus // 2 if self.signed else self.modulus
        return self.offset + top * self.scale

    def wrapped(self, value: float) -> float:
        """`value` as the register shows it once it has wrapped."""
        raw = round((value - self.offset) / self.scale) % self.modulus
        if self.signed and raw >= self.modulus // 2:
            raw -= self.modulus
        return self.offset + raw * self.scale


def counter_span(point: ModbusPoint) -> CounterSpan | None:
    """The wrap-around of an integer point; None for floats and bools."""
    if not point.type.startswith(("int", "uint")):
        return None
    return CounterSpan(
        point.offset, point.scale, 1 << (16 * point.count), point.type.startswith("int")
    )


def _table_sizes(modbus: ModbusMap) -> dict[Table, int]:
    """Each table's size: up to the end of its last point."""
    size: dict[Table, int] = {}
    for p in modbus.points.values():
        size[p.table] = max(size.get(p.table, 0), p.end)
    return size


class ModbusDevice:
    """One simulated device: its model, its profile's map and its register tables."""

    def __init__(self, spec: DeviceSpec, profile: Profile, model: DeviceModel) -> None:
        if spec.modbus is None or profile.modbus is None:
            raise ValueError(f"device {spec.id}: needs a modbus endpoint and a register map")
        self.id = spec.id
        self.unit = spec.modbus.unit
        self.profile = profile
        self.map: ModbusMap = profile.modbus
        self.model = model
        sizes = _table_sizes(self.map)
        self.bits = {t: [False] * n for t, n in sizes.items() if t in BIT_TABLES}
        self.words = {t: [0] * n for t, n in sizes.items() if t not in BIT_TABLES}
        writable = model.WRITABLE if isinstance(model, Obeying) else frozenset()
        self.writable = {
            name: p for name, p in self.map.points.items() if p.writable and name in writable
        }
        self._counter_base: dict[str, float] = {}  # counter offsets set by set_counter
        self._raw: Values = {}  # the model's own last sample
        self._unencodable: set[str] = set()

    # -- reading -------------------------------------------------------------------------

    def refresh(self, t: float) -> None:
        """Sample the model at `t` and put every mapped metric into its registers.

        A metric the model does not report at `t` (a dark lamp's power factor)
        reads 0."""
        self._raw = self.model.sample(t)
        shown = {name: self._shown(name, v) for name, v in self._raw.items()}
        for name, point in self.map.points.items():
            self._store(name, point, shown.get(name, False if point.type == "bool" else 0))

    @property
    def values(self) -> dict[str, float | bool]:
        """Each mapped metric as the registers hold it, decoded as the gateway decodes it."""
        return {name: decode_point(p, self._held(p)) for name, p in self.map.points.items()}

    def _held(self, point: ModbusPoint) -> list[bool] | list[int]:
        if point.table in BIT_TABLES:
            return self.bits[point.table][point.address : point.end]
        return self.words[point.table][point.address : point.end]

    def _shown(self, name: str, value: Value) -> Value:
        base = self._counter_base.get(name)
        if base is None or isinstance(value, bool):
            return value
        return round(value - base, 6)

    def _store(self, name: str, point: ModbusPoint, value: Value) -> None:
        """Put `value` into the point's registers (a counter wrapped at their width)."""
        if point.table in BIT_TABLES:
            self.bits[point.table][point.address] = bool(value)
            return
        table = self.words[point.table]
        try:
            encoded = self._encoded(name, point, value)
        except ValueError as exc:
            if name not in self._unencodable:  # a map that cannot hold the model's value
                self._unencodable.add(name)
                log.warning(
                    "device %s: cannot put %s=%r into its registers: %s", self.id, name, value, exc
                )
            return
        if isinstance(encoded, bool):  # one bit of a register
            assert point.bit is not None
            mask = 1 << point.bit
            old = table[point.address]
            table[point.address] = old | mask if encoded else old & ~mask
        else:
            table[point.address : point.end] = encoded

    def _encoded(self, name: str, point: ModbusPoint, value: Value) -> list[int] | bool:
        span = counter_span(point) if self._is_counter(name) else None
        if span is not None:
            value = span.wrapped(float(value))
        return encode_write(point, value)

    def reads_as(self, name: str, value: float) -> float | bool:
        """What the gateway reads for the model's `value` of metric `name`: wrapped at
        its register's width if a counter, scaled and rounded as the registers hold it."""
        point = self.map.points[name]
        encoded = self._encoded(name, point, value)
        return encoded if isinstance(encoded, bool) else decode_point(point, encoded)

    def _is_counter(self, name: str) -> bool:
        metric = self.profile.metrics.get(name)
        return metric is not None and metric.kind is MetricKind.COUNTER

    @property
    def tables(self) -> dict[Table, TableData]:
        """The device's tables (coil, discrete, holding, input: those its map uses)."""
        return {**self.bits, **self.words}

    def _table(self, table: Table) -> TableData | None:
        return self.bits.get(table) if table in BIT_TABLES else self.words.get(table)

    def read(self, table: Table, address: int, count: int) -> TableData | Refusal:
        """`count` values of `table` from `address` (unmapped addresses in range read 0)."""
        data = self._table(table)
        if data is None or address < 0 or count < 1 or address + count > len(data):
            return Refusal.ILLEGAL_ADDRESS
        return data[address : address + count]

    # -- writing -------------------------------------------------------------------------

    def write(
        self, table: Table, address: int, values: Sequence[int | bool], t: float
    ) -> Refusal | None:
        """Write `values` from `address`, as a write request would; the model obeys
        the points it changes, and the registers show the result at once.

        Every address written must belong to a point the model obeys."""
        data = self._table(table)
        end = address + len(values)
        if data is None or address < 0 or not values or end > len(data):
            return Refusal.ILLEGAL_ADDRESS
        touched = [
            (name, p)
            for name, p in self.writable.items()
            if p.table == table and p.address < end and address < p.end
        ]
        covered = {a for _, p in touched for a in range(p.address, p.end)}
        if not covered.issuperset(range(address, end)):
            return Refusal.ILLEGAL_ADDRESS
        after: list[int] | list[bool]
        if table in BIT_TABLES:
            after = [*data[:address], *(bool(v) for v in values), *data[end:]]
        else:
            after = [*(int(v) for v in data[:address]), *(int(v) for v in values), *data[end:]]
        commands: list[tuple[str, Value]] = []
        for name, point in touched:
            value = decode_point(point, after[point.address : point.end])
            if not self._in_range(name, value):
                return Refusal.ILLEGAL_VALUE
            commands.append((name, value))
        self.refresh(t)  # counters integrate the old state up to now
        for name, value in commands:
            assert isinstance(self.model, Obeying)
            self.model.obey(name, value)
        self.refresh(t)
        return None

    def _in_range(self, name: str, value: Value) -> bool:
        metric = self.profile.metrics.get(name)
        if metric is None or isinstance(value, bool):
            return True
        low = -float("inf") if metric.min is None else metric.min
        high = float("inf") if metric.max is None else metric.max
        return low <= value <= high

    # -- counters ------------------------------------------------------------------------

    def counter_span(self, metric: str) -> CounterSpan:
        point = self.map.points.get(metric)
        if point is None or not self._is_counter(metric):
            raise KeyError(f"device {self.id}: {metric!r} is not a mapped counter")
        span = counter_span(point)
        if span is None:
            raise ValueError(f"device {self.id}: {metric} is a {point.type}: it does not wrap")
        return span

    def set_counter(self, metric: str, value: float) -> None:
        """Make counter `metric` read `value` from now on (a meter reset or replacement),
        counting on from there as the model's consumption goes on."""
        if not self._is_counter(metric) or metric not in self._raw:
            raise KeyError(f"device {self.id}: {metric!r} is not a counter its model reports")
        self._counter_base[metric] = float(self._raw[metric]) - value

    def counter(self, metric: str) -> float:
        """The counter as the device shows it (before wrapping into its register)."""
        return float(self._shown(metric, self._raw[metric]))


def make_device(
    spec: DeviceSpec,
    profile: Profile,
    ctx: Context,
    *,
    models: Mapping[str, type[DeviceModel]] = MODBUS_MODELS,
) -> ModbusDevice:
    """The simulated device for a site's Modbus device."""
    model = models.get(profile.profile)
    if model is None:
        raise ValueError(f"device {spec.id}: no simulated model for profile {profile.profile!r}")
    return ModbusDevice(spec, profile, model(spec.id, ctx))


# --- a site's buses -----------------------------------------------------------------------


@dataclass(slots=True)
class BusPlan:
    """The devices of one simulated bus, and how it is spoken."""

    framer: Framer
    devices: list[tuple[DeviceSpec, Profile]]
    locations: dict[str, tuple[float, float]]


def plan_buses(site: SiteSpec, catalog: ProfileCatalog) -> dict[tuple[str, int], BusPlan]:
    """The site's Modbus devices grouped by endpoint; the framers of one endpoint must agree."""
    buses: dict[tuple[str, int], BusPlan] = {}
    for pole in site.poles:
        where = (pole.location.lat, pole.location.lon) if pole.location else DEFAULT_LOCATION
        for spec in pole.devices:
            if spec.transport != "modbus" or spec.modbus is None:
                continue
            profile = catalog.get(spec.profile)
            if profile is None:
                raise ConfigError(f"device {spec.id}: unknown profile {spec.profile!r}")
            key = (spec.modbus.host, spec.modbus.port)
            bus = buses.setdefault(key, BusPlan(spec.modbus.framer, [], {}))
            if bus.framer != spec.modbus.framer:
                raise ConfigError(
                    f"device {spec.id}: {key[0]}:{key[1]} is one bus, "
                    f"spoken as {bus.framer}; it cannot also be {spec.modbus.framer}"
                )
            bus.devices.append((spec, profile))
            bus.locations[spec.id] = where
    return buses


def site_device(
    site: SiteSpec,
    catalog: ProfileCatalog,
    device_id: str,
    *,
    seed: int = 1,
    config: SimConfig | None = None,
) -> ModbusDevice:
    """The device that `run_modbus_devices` (same seed and settings) serves for one of
    the site's Modbus devices: the same weather, place and counters, so its values
    at an instant are the ones the simulated bus gives then."""
    config = config or SimConfig()
    for bus in plan_buses(site, catalog).values():
        for spec, profile in bus.devices:
            if spec.id == device_id:
                ambient = Ambient(seed, utc_offset_h=config.utc_offset_h)
                return make_device(
                    spec, profile, Context(seed, config, ambient, *bus.locations[spec.id])
                )
    raise ConfigError(f"device {device_id} is not a Modbus device of the site")
