"""Simulated pole devices: realistic values for any instant, the same for the same seed.

Pure: no I/O, no clock, no global random state. Gauges are functions of the
instant (seeded, smooth noise over a daily shape); counters integrate the same
power over the time that passed between samples, so they never decrease and
agree with the power reported; where they start depends on when the process
starts (see `Counters`), so a restarted simulator never counts below what it
showed before. Rare occurrences (a cabinet door opened, an
impact on the pole) are drawn per fixed time slot, so a door's state at an
instant and the events around it agree however often the pole is sampled.

Time is epoch seconds (UTC) inside the models; `build_telemetry` and
`build_events` turn a pole's state into the DESIGN.md section 5 payloads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar, TypedDict

from gateway.core.site import PoleSpec, SiteSpec
from simulators.ambient import (
    HOUR,
    Ambient,
    Episode,
    Noise,
    Occurrences,
    bump,
    clamp,
    in_window,
    sun_elevation_deg,
)

Value = float | int | bool
Values = dict[str, Value]

DEFAULT_LOCATION = (30.657, 104.066)  # lat, lon used for a pole without a location


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What an operator may want to change about the simulated site (times are local hours)."""

    utc_offset_h: float = 8.0  # China Standard Time
    lamp_on_h: float = 18.0  # lamps on at dusk…
    lamp_off_h: float = 6.5  # …off at dawn
    dim_from_h: float = 23.0  # late-night dimming window
    dim_to_h: float = 5.0
    dim_pct: int = 50
    lamp_rated_w: float = 100.0
    event_rate: float = 0.02  # door openings and impacts, per device per hour
    sos_rate: float = 0.0  # SOS presses per button per hour (each opens an emergency)


@dataclass(frozen=True, slots=True)
class Context:
    """What a device model needs besides its id: the seed, the settings, the site, the place."""

    seed: int
    config: SimConfig
    ambient: Ambient
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class SimEvent:
    t: float
    device_id: str
    type: str
    data: dict[str, Value] = field(default_factory=dict)


#: Simulated counters have been counting since this instant (epoch seconds).
HISTORY_FROM = datetime(2024, 1, 1, tzinfo=UTC).timestamp()


class Counters:
    """Cumulative totals that integrate rates (per hour) over elapsed time; never decreasing.

    A counter starts, at the first instant it is advanced to, from its `base`
    (what it showed at HISTORY_FROM) plus its `peak` rate over the time since
    HISTORY_FROM. The peak is the most the device can ever count per hour, so a
    counter started later starts at least as high as one started earlier has
    counted up to then: a simulator that is stopped and started again goes on
    from above the values it published before, never below (which would look
    like a meter reset). Determined by the base, the peak and the start instant.
    """

    STEP_S = 60.0

    def __init__(
        self,
        base: list[float],
        rates: Callable[[float], tuple[float, ...]],
        peak: tuple[float, ...],
    ) -> None:
        if len(base) != len(peak):
            raise ValueError("a counter needs a base and a peak rate")
        self.base = list(base)
        self.peak = tuple(max(0.0, p) for p in peak)
        self.totals = list(base)
        self._rates = rates
        self._last: float | None = None

    def start_totals(self, t: float) -> list[float]:
        """The totals of counters that start counting at `t`."""
        hours = max(0.0, t - HISTORY_FROM) / HOUR
        return [b + p * hours for b, p in zip(self.base, self.peak, strict=True)]

    def advance(self, t: float) -> list[float]:
        last = self._last
        if last is None:
            self.totals = self.start_totals(t)
            self._last = t
            return self.totals
        if t <= last:
            return self.totals
        steps = math.ceil((t - last) / self.STEP_S)
        dt = (t - last) / steps
        for k in range(steps):
            for n, rate in enumerate(self._rates(last + (k + 0.5) * dt)):
                self.totals[n] += max(0.0, rate) * dt / HOUR
        self._last = t
        return self.totals

    def history(self, start: float, end: float, every_s: float) -> list[tuple[float, list[float]]]:
        """The readings of the past [start, end], every `every_s` and at `end`, of a
        meter that showed `start_totals(end)` at `end`: the counter integrated back
        from there (one midpoint rate per step). A counter first advanced at `end` or
        later goes on from them without a step down. Does not advance this counter.

        Backfills a demo's history; `start` must not be before HISTORY_FROM (then
        no total can go below its base)."""
        if not HISTORY_FROM <= start <= end or every_s <= 0:
            raise ValueError("history needs HISTORY_FROM <= start <= end and every_s > 0")
        totals = self.start_totals(end)
        out = [(end, list(totals))]
        t = end
        while t > start:
            t0 = max(start, t - every_s)
            for n, rate in enumerate(self._rates((t0 + t) / 2)):
                totals[n] -= max(0.0, rate) * (t - t0) / HOUR
            out.append((t0, list(totals)))
            t = t0
        out.reverse()
        return out


# --- device models ---------------------------------------------------------------------


class DeviceModel:
    """One simulated device: its values at an instant, and the events in a time window."""

    profile: ClassVar[str]

    def __init__(self, device_id: str, ctx: Context) -> None:
        self.device_id = device_id
        self.ctx = ctx
        self.noise = Noise(ctx.seed, device_id)

    def sample(self, t: float) -> Values:
        """Metric values at `t`; counters advance to `t` (they never go back)."""
        return {}

    def events(self, start: float, end: float) -> list[SimEvent]:
        """Events that happen in (start, end]."""
        return []


class LampController(DeviceModel):
    """A street lamp on a dusk-to-dawn schedule, dimmed late at night."""

    profile = "lamp-controller"
    PEAK_WOBBLE = 1.01  # the most the power wanders above rated power at the dim level

    def __init__(self, device_id: str, ctx: Context) -> None:
        super().__init__(device_id, ctx)
        rated = min(1000.0, ctx.config.lamp_rated_w)
        self.rated_w = rated * self.noise.between("rated", 0.97, 1.03)
        hours = self.noise.between("hours", 0.0, 8000.0)  # lit before HISTORY_FROM
        peak = (self.PEAK_WOBBLE * self.rated_w / 1000, 1.0)  # kW at full output, h/h
        self.counters = Counters([hours * self.rated_w / 1000 * 0.8, hours], self._rates, peak)

    def _dim(self, t: float) -> int:
        c = self.ctx.config
        h = self.ctx.ambient.local_hour(t)
        if not in_window(h, c.lamp_on_h, c.lamp_off_h):
            return 0
        return c.dim_pct if in_window(h, c.dim_from_h, c.dim_to_h) else 100

    def _power_w(self, t: float, dim: int) -> float:
        wobble = 1.0 + (self.PEAK_WOBBLE - 1.0) * self.noise.smooth("power", t, 60)
        return clamp(self.rated_w * dim / 100 * wobble, 0.0, 1000.0)

    def _rates(self, t: float) -> tuple[float, float]:
        dim = self._dim(t)
        return self._power_w(t, dim) / 1000, 1.0 if dim > 0 else 0.0

    def sample(self, t: float) -> Values:
        energy, hours = self.counters.advance(t)
        dim = self._dim(t)
        volts = self.ctx.ambient.grid_v(t) + 0.5 * self.noise.smooth("volts", t, 300)
        out: Values = {"lamp_on": dim > 0, "dim_pct": dim, "voltage_v": round(volts, 1)}
        power = self._power_w(t, dim)
        if dim > 0:  # at zero current the power factor is undefined: not reported
            pf = 0.96 - 0.04 * (1 - dim / 100) + 0.01 * self.noise.smooth("pf", t, 900)
            out["power_factor"] = round(clamp(pf, 0.0, 1.0), 3)
            out["current_a"] = round(power / (volts * pf), 3)
        else:
            out["current_a"] = 0.0
        out["power_w"] = round(power, 1)
        out["energy_kwh"] = round(energy, 3)
        out["burning_hours"] = round(hours, 3)
        return out


@dataclass(frozen=True, slots=True)
class _PortLoad:
    """What hangs on one metered port: its power at an instant, its power factor and the
    most it ever draws."""

    name: str
    power_w: Callable[[float], float]
    pf: float
    peak_w: float = 0.0


class PortMeter(DeviceModel):
    """A 4-port meter: 5G micro station, camera, display screen, and a spare port switched off."""

    profile = "port-meter-4"
    PORTS = 4

    def __init__(self, device_id: str, ctx: Context) -> None:
        super().__init__(device_id, ctx)
        self.base_5g = self.noise.between("5g", 340.0, 460.0)
        self.loads: list[_PortLoad | None] = [
            _PortLoad("5g", self._micro_station, 0.98, peak_w=800.0),
            _PortLoad("camera", self._camera, 0.65, peak_w=28.0 + 6.0 + 0.8),
            _PortLoad("display", self._display, 0.93, peak_w=200.0 + 12.0),
            None,
        ]
        base = [self.noise.between(f"kwh{n}", 0.0, 5000.0) for n in range(self.PORTS)]
        peak = tuple(0.0 if load is None else load.peak_w / 1000 for load in self.loads)
        self.counters = Counters(base, self._rates, peak)

    def _micro_station(self, t: float) -> float:
        h = self.ctx.ambient.local_hour(t)
        load = max(bump(h, 12.5, 3.0), bump(h, 20.5, 2.5), 0.15)
        return clamp(self.base_5g + 280.0 * load + 40.0 * self.noise.smooth("5g", t, 120), 300, 800)

    def _camera(self, t: float) -> float:
        night = sun_elevation_deg(t, self.ctx.lat, self.ctx.lon) < 0  # infrared lamps on
        return 28.0 + (6.0 if night else 0.0) + 0.8 * self.noise.smooth("cam", t, 60)

    def _display(self, t: float) -> float:
        if not in_window(self.ctx.ambient.local_hour(t), 7.0, 22.0):
            return 4.0  # asleep at night
        return 200.0 + 12.0 * self.noise.smooth("display", t, 300)

    def _rates(self, t: float) -> tuple[float, ...]:
        return tuple(0.0 if load is None else load.power_w(t) / 1000 for load in self.loads)

    def sample(self, t: float) -> Values:
        totals = self.counters.advance(t)
        grid = self.ctx.ambient.grid_v(t)
        out: Values = {}
        for n, load in enumerate(self.loads, start=1):
            p = f"port{n}_"
            volts = grid + 0.3 * self.noise.smooth(f"v{n}", t, 300)  # supply side of the switch
            out[p + "voltage_v"] = round(volts, 1)
            out[p + "switch_on"] = load is not None
            if load is None:
                out[p + "current_a"] = 0.0
                out[p + "power_w"] = 0.0
            else:
                power = clamp(load.power_w(t), 0.0, 15000.0)
                pf = clamp(load.pf + 0.01 * self.noise.smooth(f"pf{n}", t, 600), 0.0, 1.0)
                out[p + "current_a"] = round(power / (volts * pf), 3)
                out[p + "power_w"] = round(power, 1)
                out[p + "power_factor"] = round(pf, 3)
            out[p + "energy_kwh"] = round(totals[n - 1], 3)
        return out


class EnvStation(DeviceModel):
    """Air quality, weather, noise and light by the roadside."""

    profile = "env-station"

    def sample(self, t: float) -> Values:
        amb, n = self.ctx.ambient, self.noise
        sun = sun_elevation_deg(t, self.ctx.lat, self.ctx.lon)
        rain = amb.rain_mmh(t)
        traffic = amb.traffic(t)
        season = 55.0 + 30.0 * amb.winter(t)
        pm25 = season * (0.7 + 0.6 * traffic) * (1 + 0.25 * amb.noise.smooth("pm", t, 3 * HOUR))
        pm25 = max(1.0, pm25 * (0.6 if rain > 0 else 1.0) + 3.0 * n.smooth("pm25", t, 120))
        pm10 = pm25 * n.between("pm10", 1.5, 1.8) + 4.0 * n.smooth("pm10", t, 120)
        noise_dba = 48.0 + 22.0 * traffic + 3.0 * n.smooth("dba", t, 30)
        sin_sun = math.sin(math.radians(sun))
        if sin_sun > 0:
            overcast = 0.5 + 0.5 * amb.noise.smooth("cloud", t, 1800)
            cloud = 1.0 - 0.25 * overcast - (0.5 if rain > 0 else 0.0)
            lux = 52000.0 * sin_sun**1.15 * cloud
        else:  # civil twilight fades to dark at -6°
            lux = max(0.0, 10.0 * (sun + 6.0) / 6.0)
        return {
            "pm25_ugm3": round(pm25, 1),
            "pm10_ugm3": round(max(pm25, pm10), 1),
            "temp_c": round(amb.temp_c(t) + 0.3 * n.smooth("temp", t, 600), 1),
            "humidity_pct": round(clamp(amb.humidity_pct(t) + n.smooth("hum", t, 600), 0, 100), 1),
            "noise_dba": round(clamp(noise_dba, 20.0, 140.0), 1),
            "wind_speed_ms": round(amb.wind_ms(t, sin_sun), 1),
            "wind_dir_deg": round(amb.wind_dir_deg(t), 0),
            "rain_mmh": round(rain, 1),
            "illuminance_lux": round(lux),
        }


class CabinetMonitor(DeviceModel):
    """The integrated cabinet: closed and dry, warmer than the air, UPS on mains."""

    profile = "cabinet-monitor"

    def __init__(self, device_id: str, ctx: Context) -> None:
        super().__init__(device_id, ctx)
        self.door = Occurrences(self.noise, "door", ctx.config.event_rate)

    def sample(self, t: float) -> Values:
        amb, n = self.ctx.ambient, self.noise
        sun = max(0.0, math.sin(math.radians(sun_elevation_deg(t, self.ctx.lat, self.ctx.lon))))
        temp = amb.temp_c(t) + 5.0 + 4.0 * sun + 0.4 * n.smooth("temp", t, 900)
        leakage = 2.0 + (1.5 if amb.rain_mmh(t) > 0 else 0.0) + 0.8 * n.smooth("leak", t, 600)
        return {
            "door_open": self.door.at(t) is not None,
            "temp_c": round(temp, 1),
            "humidity_pct": round(clamp(amb.humidity_pct(t) - 10.0, 5.0, 100.0), 1),
            "water_detected": False,
            "smoke_detected": False,
            "leakage_ma": round(max(0.0, leakage), 2),
            "ups_state": 0,  # on mains
            "ups_battery_pct": round(99.5 + 0.5 * n.smooth("ups", t, HOUR), 1),
        }

    def events(self, start: float, end: float) -> list[SimEvent]:
        out = []
        for ep in self.door.between(start, end):
            if start < ep.start <= end:
                out.append(SimEvent(ep.start, self.device_id, "door_open"))
            if start < ep.end <= end:
                data: dict[str, Value] = {"open_s": round(ep.end - ep.start, 1)}
                out.append(SimEvent(ep.end, self.device_id, "door_close", data))
        return out


class PoleTilt(DeviceModel):
    """Tilt around the installed offset, swaying a little in the wind; rare impacts.

    vibration_g is the peak since the last report, so an impact shows in the next one.
    """

    profile = "pole-tilt"
    RING_S = 20.0  # how fast the pole's vibration dies away after an impact

    def __init__(self, device_id: str, ctx: Context) -> None:
        super().__init__(device_id, ctx)
        self.offset = (self.noise.between("x0", -0.4, 0.4), self.noise.between("y0", -0.4, 0.4))
        self.impacts = Occurrences(self.noise, "impact", ctx.config.event_rate)
        self._last: float | None = None

    def _peak_g(self, ep: Episode) -> float:
        return round(0.8 + 2.2 * self.noise.uniform("impact-g", ep.slot), 2)

    def _shock_g(self, t: float) -> float:
        shock = 0.0
        ringing = self.impacts.last_started(t)
        if ringing is not None and t - ringing.start < 6 * self.RING_S:
            shock = self._peak_g(ringing) * math.exp(-(t - ringing.start) / self.RING_S)
        last = self._last
        if last is not None:
            for ep in self.impacts.between(last, t):
                if last < ep.start <= t:
                    shock = max(shock, self._peak_g(ep))
        if last is None or t > last:
            self._last = t
        return shock

    def sample(self, t: float) -> Values:
        n = self.noise
        sway = 0.02 * (1.0 + self.ctx.ambient.wind_ms(t, 0.0) / 4.0)
        x = self.offset[0] + sway * n.smooth("sx", t, 7)
        y = self.offset[1] + sway * n.smooth("sy", t, 9)
        vibration = 0.01 + 0.01 * abs(n.smooth("vib", t, 5)) + self._shock_g(t)
        return {
            "tilt_x_deg": round(x, 3),
            "tilt_y_deg": round(y, 3),
            "tilt_deg": round(math.hypot(x, y), 3),
            "vibration_g": round(clamp(vibration, 0.0, 16.0), 3),
        }

    def events(self, start: float, end: float) -> list[SimEvent]:
        return [
            SimEvent(ep.start, self.device_id, "impact", {"peak_g": self._peak_g(ep)})
            for ep in self.impacts.between(start, end)
            if start < ep.start <= end
        ]


class SosButton(DeviceModel):
    """An emergency call button: no telemetry; a press and its clearing at `sos_rate`."""

    profile = "sos-button"

    def __init__(self, device_id: str, ctx: Context) -> None:
        super().__init__(device_id, ctx)
        self.presses = Occurrences(self.noise, "sos", ctx.config.sos_rate)

    def events(self, start: float, end: float) -> list[SimEvent]:
        out = []
        for ep in self.presses.between(start, end):
            if start < ep.start <= end:
                out.append(SimEvent(ep.start, self.device_id, "sos_pressed"))
            if start < ep.end <= end:
                out.append(SimEvent(ep.end, self.device_id, "sos_cleared"))
        return out


MODELS: Mapping[str, type[DeviceModel]] = {
    m.profile: m
    for m in (LampController, PortMeter, EnvStation, CabinetMonitor, PoleTilt, SosButton)
}


# --- poles and their messages ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoleModel:
    pole_id: str
    devices: tuple[DeviceModel, ...]

    def sample(self, t: float) -> dict[str, Values]:
        """Every device's values at `t` (devices that report no metrics are left out)."""
        out = {}
        for device in self.devices:
            values = device.sample(t)
            if values:
                out[device.device_id] = values
        return out

    def events(self, start: float, end: float) -> list[SimEvent]:
        """All events in (start, end], in time order."""
        found = [ev for device in self.devices for ev in device.events(start, end)]
        return sorted(found, key=lambda ev: ev.t)


def pole_model(
    pole: PoleSpec,
    *,
    seed: int = 1,
    config: SimConfig | None = None,
    transport: str | None = "mqtt",
    ambient: Ambient | None = None,
    models: Mapping[str, type[DeviceModel]] = MODELS,
) -> PoleModel:
    """The simulated devices of a pole: those whose profile has a model in `models` and
    whose transport matches (`transport=None`: all of them). Other devices are left to
    other simulators."""
    config = config or SimConfig()
    lat, lon = (pole.location.lat, pole.location.lon) if pole.location else DEFAULT_LOCATION
    ambient = ambient or Ambient(seed, utc_offset_h=config.utc_offset_h)
    ctx = Context(seed, config, ambient, lat, lon)
    devices = tuple(
        models[d.profile](d.id, ctx)
        for d in pole.devices
        if d.profile in models and (transport is None or d.transport == transport)
    )
    return PoleModel(pole.id, devices)


def site_models(
    site: SiteSpec,
    *,
    seed: int = 1,
    config: SimConfig | None = None,
    transport: str | None = "mqtt",
    models: Mapping[str, type[DeviceModel]] = MODELS,
) -> list[PoleModel]:
    """A model for every pole with at least one simulated device; all share one weather."""
    config = config or SimConfig()
    ambient = Ambient(seed, utc_offset_h=config.utc_offset_h)
    poles = (
        pole_model(p, seed=seed, config=config, transport=transport, ambient=ambient, models=models)
        for p in site.poles
    )
    return [m for m in poles if m.devices]


class Telemetry(TypedDict):
    ts: str
    seq: int
    devices: dict[str, Values]


class Event(TypedDict):
    ts: str
    device: str
    type: str
    data: dict[str, Value]


def rfc3339(when: datetime) -> str:
    """UTC, millisecond precision, with a Z: 2026-11-22T10:00:00.000Z."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch(when: datetime) -> float:
    if when.tzinfo is None:
        raise ValueError("a simulated instant needs a time zone")
    return when.timestamp()


def build_telemetry(pole: PoleModel, now: datetime, seq: int) -> Telemetry:
    """The pole's batch message (`{prefix}/{pole}/telemetry`) at `now`."""
    return {"ts": rfc3339(now), "seq": seq, "devices": pole.sample(_epoch(now))}


def build_events(pole: PoleModel, start: datetime, end: datetime) -> list[Event]:
    """The pole's event messages (`{prefix}/{pole}/events`) for (start, end]."""
    return [
        {
            "ts": rfc3339(datetime.fromtimestamp(ev.t, UTC)),
            "device": ev.device_id,
            "type": ev.type,
            "data": ev.data,
        }
        for ev in pole.events(_epoch(start), _epoch(end))
    ]
