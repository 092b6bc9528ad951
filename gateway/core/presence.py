"""An MQTT device's online state, from what it sends and from its pole's status.

A polled (Modbus) device's state comes from its polls (adapters/modbus_bus.py).
A device that publishes has two signals:

- data: a reading or an event of the device makes it online; when nothing has
  come for its silence limit (its profile's report interval x after_intervals,
  `alarms.offline` in the profile) it is offline from the moment the limit ran
  out. A device whose profile names no report interval (an SOS button that only
  sends events) is never taken offline by silence.
- its pole's status topic (`online`/`offline`, the will message): the faster
  signal; it applies to every device of the pole at once.

A signal older than the current state's start changes nothing (a batch drained
from the spool after an outage cannot undo a newer status), and data older than
the silence limit never makes a device online.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

# device id, online, since, detail (why it is offline)
Change = tuple[str, bool, datetime, str | None]


@dataclass(slots=True)
class _Device:
    online: bool | None
    since: datetime | None  # when the current state began (None: seeded at start)
    last: datetime  # newest data or online status


class DataPresence:
    def __init__(
        self,
        silence_of: Callable[[str], timedelta | None],
        *,
        known: Mapping[str, bool] | None = None,
        now: datetime,
    ) -> None:
        """`silence_of(device_id)`: how long the device may be silent (None: no
        limit). `known`: the states recorded by the last run; their silence is
        timed from `now`."""
        self._silence_of = silence_of
        self._devices = {d: _Device(online, None, now) for d, online in (known or {}).items()}

    def state(self, device_id: str) -> bool | None:
        d = self._devices.get(device_id)
        return None if d is None else d.online

    def _entry(self, device_id: str, ts: datetime) -> _Device:
        d = self._devices.get(device_id)
        if d is None:
            d = self._devices[device_id] = _Device(None, None, ts)
        return d

    def data(self, device_id: str, ts: datetime, now: datetime) -> Change | None:
        """The device sent data stamped `ts`; the change it makes, if any."""
        ts = min(ts, now)
        limit = self._silence_of(device_id)
        if limit is not None and now - ts >= limit:
            return None  # too old to say the device is there now
        d = self._entry(device_id, ts)
        d.last = max(d.last, ts)
        if d.online is True or (d.since is not None and ts <= d.since):
            return None
        d.online, d.since = True, ts
        return (device_id, True, ts, None)

    def pole(
        self, device_ids: Iterable[str], online: bool, ts: datetime, now: datetime
    ) -> list[Change]:
        """The pole of `device_ids` reported `online` at `ts`."""
        ts = min(ts, now)
        out: list[Change] = []
        for device_id in device_ids:
            d = self._entry(device_id, ts)
            if online:
                d.last = max(d.last, ts)
            if d.online is online or (d.since is not None and ts <= d.since):
                continue
            d.online, d.since = online, ts
            out.append((device_id, online, ts, None if online else "its pole reported offline"))
        return out

    def due(self, now: datetime) -> list[str]:
        """The devices `silent(now)` would take offline."""
        out = []
        for device_id, d in self._devices.items():
            if d.online is True:
                limit = self._silence_of(device_id)
                if limit is not None and now - d.last >= limit:
                    out.append(device_id)
        return out

    def heard(self, device_id: str, ts: datetime) -> None:
        """Data of the device stamped `ts` was stored by someone else (another
        replica): its silence is timed from it, its state is left as it is."""
        d = self._devices.get(device_id)
        if d is not None:
            d.last = max(d.last, ts)

    def silent(self, now: datetime) -> list[Change]:
        """Devices whose silence limit ran out by `now`: offline since it ran out."""
        out: list[Change] = []
        for device_id, d in self._devices.items():
            if d.online is not True:
                continue
            limit = self._silence_of(device_id)
            if limit is None or now - d.last < limit:
                continue
            since = d.last + limit
            d.online, d.since = False, since
            out.append((device_id, False, since, f"no data for {_span(limit)}"))
        return out


def _span(limit: timedelta) -> str:
    s = limit.total_seconds()
    return f"{s:g} s" if s < 120 else f"{s / 60:g} min"
