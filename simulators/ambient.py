"""What all simulated poles of a site share: seeded randomness, the sun, the weather,
the traffic and the grid.

Pure: no I/O, no clock, no global random state. Every value is a function of the
seed and the instant (epoch seconds, UTC), so poles sampled at any rate agree
with each other and with themselves.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

HOUR = 3600.0
DAY = 86400.0
_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: a fast, well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class Noise:
    """Stateless randomness: the same seed, name, channel and indices give the same number."""

    __slots__ = ("_base", "_keys")

    def __init__(self, seed: int, name: str) -> None:
        digest = hashlib.blake2b(f"{seed}\x00{name}".encode(), digest_size=8).digest()
        self._base = int.from_bytes(digest, "little")
        self._keys: dict[str, int] = {}

    def _key(self, channel: str) -> int:
        key = self._keys.get(channel)
        if key is None:
            digest = hashlib.blake2b(channel.encode(), digest_size=8).digest()
            key = self._keys[channel] = _mix(self._base ^ int.from_bytes(digest, "little"))
        return key

    def uniform(self, channel: str, i: int = 0, j: int = 0) -> float:
        """A number in [0, 1)."""
        h = _mix(self._key(channel) ^ _mix((i & _MASK) ^ _mix(j & _MASK)))
        return (h >> 11) / 9007199254740992.0  # / 2**53

    def between(self, channel: str, low: float, high: float) -> float:
        return low + (high - low) * self.uniform(channel)

    def smooth(self, channel: str, t: float, period: float) -> float:
        """Noise in [-1, 1] that wanders smoothly over about `period` seconds."""
        x = t / period
        i = math.floor(x)
        f = x - i
        f = f * f * (3.0 - 2.0 * f)
        a = self.uniform(channel, i)
        return 2.0 * (a + (self.uniform(channel, i + 1) - a) * f) - 1.0


@dataclass(frozen=True, slots=True)
class Episode:
    """One occurrence in time: a door open from `start` to `end`, or an impact at `start`."""

    start: float
    end: float
    slot: int


class Occurrences:
    """Rare episodes at `rate_per_h`, at most one per slot (an hour, shorter for high rates)."""

    def __init__(self, noise: Noise, channel: str, rate_per_h: float) -> None:
        self._noise = noise
        self._channel = channel
        self.slot_s = HOUR / max(1.0, 2.0 * rate_per_h)
        self._p = max(0.0, rate_per_h) * self.slot_s / HOUR

    def _episode(self, i: int) -> Episode | None:
        n, ch = self._noise, self._channel
        if self._p <= 0.0 or n.uniform(ch, i, 0) >= self._p:
            return None
        half = self.slot_s / 2
        start = i * self.slot_s + n.uniform(ch, i, 1) * half
        return Episode(start, start + (0.1 + 0.4 * n.uniform(ch, i, 2)) * half, i)

    def at(self, t: float) -> Episode | None:
        """The episode under way at `t`, if any."""
        ep = self._episode(math.floor(t / self.slot_s))
        return ep if ep is not None and ep.start <= t < ep.end else None

    def last_started(self, t: float) -> Episode | None:
        """The episode of t's slot if it has started by `t`."""
        ep = self._episode(math.floor(t / self.slot_s))
        return ep if ep is not None and ep.start <= t else None

    def between(self, start: float, end: float) -> Iterator[Episode]:
        """Episodes that begin or end in (start, end]."""
        if end <= start:
            return
        for i in range(math.floor(start / self.slot_s), math.floor(end / self.slot_s) + 1):
            ep = self._episode(i)
            if ep is not None and (start < ep.start <= end or start < ep.end <= end):
                yield ep


# --- the site's surroundings -----------------------------------------------------------


def in_window(hour: float, start: float, end: float) -> bool:
    """Whether a local hour lies in [start, end), a window that may wrap midnight."""
    return start <= hour < end if start <= end else hour >= start or hour < end


def bump(hour: float, centre: float, width: float) -> float:
    return math.exp(-0.5 * ((hour - centre) / width) ** 2)


def clamp(x: float, low: float, high: float) -> float:
    return low if x < low else high if x > high else x


def sun_elevation_deg(t: float, lat: float, lon: float) -> float:
    """The sun's elevation (degrees) at a place; good to a degree or two, enough for light."""
    days = t / DAY
    declination = -23.44 * math.cos(2 * math.pi * ((days % 365.2422) + 10) / 365.2422)
    solar_hour = (t % DAY) / HOUR + lon / 15.0
    hour_angle = math.radians(15.0 * (solar_hour - 12.0))
    phi, delta = math.radians(lat), math.radians(declination)
    s = math.sin(phi) * math.sin(delta) + math.cos(phi) * math.cos(delta) * math.cos(hour_angle)
    return math.degrees(math.asin(clamp(s, -1.0, 1.0)))


class Ambient:
    """Weather, traffic and grid voltage of the site, shared by all its poles."""

    def __init__(self, seed: int, *, utc_offset_h: float = 8.0) -> None:
        self.utc_offset_h = utc_offset_h
        self.noise = Noise(seed, "ambient")

    def local_hour(self, t: float) -> float:
        return ((t + self.utc_offset_h * HOUR) % DAY) / HOUR

    def winter(self, t: float) -> float:
        """1 in mid-January, -1 in mid-July."""
        return math.cos(2 * math.pi * ((t / DAY - 14) / 365.2422))

    def temp_c(self, t: float) -> float:
        daily = 4.0 * math.cos(2 * math.pi * (self.local_hour(t) - 15.0) / 24.0)
        weather = 2.0 * self.noise.smooth("temp", t, 6 * HOUR)
        return 16.5 - 10.0 * self.winter(t) + daily + weather - 2.0 * min(1.0, self.rain_mmh(t))

    def humidity_pct(self, t: float) -> float:
        daily = 4.0 * math.cos(2 * math.pi * (self.local_hour(t) - 15.0) / 24.0)
        wet = 15.0 if self.rain_mmh(t) > 0 else 0.0
        weather = 8.0 * self.noise.smooth("hum", t, 5 * HOUR)
        return clamp(76.0 - 2.5 * daily + weather + wet, 20.0, 100.0)

    def rain_mmh(self, t: float) -> float:
        slot = 6 * HOUR
        i = math.floor(t / slot)
        if self.noise.uniform("rain", i, 0) >= 0.15:
            return 0.0
        start = i * slot + self.noise.uniform("rain", i, 1) * slot / 2
        if not start <= t < start + (1 + 2 * self.noise.uniform("rain", i, 2)) * HOUR:
            return 0.0
        peak = 0.5 + 5.5 * self.noise.uniform("rain", i, 3)
        return peak * (0.7 + 0.3 * self.noise.smooth("rain-rate", t, 900))

    def traffic(self, t: float) -> float:
        """0 (small hours) … 1 (rush hour)."""
        h = self.local_hour(t)
        day = 1.0 if 7.0 <= h < 22.0 else 0.0
        return clamp(0.1 + 0.45 * day + 0.45 * max(bump(h, 8.0, 1.0), bump(h, 18.0, 1.3)), 0, 1)

    def grid_v(self, t: float) -> float:
        """The supply voltage at the site's poles: lower under the day's and the
        evening's load, higher in the small hours, wandering over minutes, and never
        still from one reading to the next (other loads switch on the feeder)."""
        h = self.local_hour(t)
        load = 1.5 * bump(h, 11.0, 3.0) + 3.0 * bump(h, 20.0, 2.0)
        light = 1.5 * bump(h, 3.5, 2.0)  # little load at night: the voltage rises
        drift = 2.5 * self.noise.smooth("grid", t, 600)
        flicker = 0.6 * self.noise.smooth("flicker", t, 4) + 0.3 * self.noise.smooth(
            "ripple", t, 1.3
        )
        return 229.0 - load + light + drift + flicker

    def wind_ms(self, t: float, sun: float) -> float:
        """Wind speed; `sun` is the sine of the sun's elevation (sunshine stirs the air)."""
        gust = 0.4 * self.noise.smooth("gust", t, 20)
        weather = 1.2 * self.noise.smooth("wind", t, 2 * HOUR)
        return max(0.0, 1.2 + 1.5 * max(0.0, sun) + weather + gust)

    def wind_dir_deg(self, t: float) -> float:
        return (30.0 + 90.0 * self.noise.smooth("wind-dir", t, 3 * HOUR)) % 360.0
