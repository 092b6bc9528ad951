"""What a decoded message yields: readings, events, presence changes and dead letters."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntFlag, StrEnum
from typing import Any, NamedTuple


class Quality(IntFlag):
    """Flags stored with a reading; 0 means nothing is known to be wrong with it."""

    GOOD = 0
    CLOCK_AHEAD = 1  # stamped further in the future than the allowed margin
    CLOCK_STALE = 2  # stamped older than the allowed age


@dataclass(frozen=True, slots=True)
class ClockCheck:
    """Flags readings whose timestamp cannot be right: further ahead of `now`
    than `max_ahead`, or older than `max_age`. They are stored, flagged and
    counted; one device's bad clock never changes anything else's notion of now."""

    now: datetime
    max_ahead: timedelta
    max_age: timedelta

    def quality(self, ts: datetime) -> int:
        if ts > self.now + self.max_ahead:
            return int(Quality.CLOCK_AHEAD)
        if ts < self.now - self.max_age:
            return int(Quality.CLOCK_STALE)
        return int(Quality.GOOD)


class Reading(NamedTuple):
    """One value of one metric of one device at one instant: the unit of storage.

    A tuple on purpose: it goes straight into the binary COPY stream. A reading is
    identified by (device_id, metric, ts); storing it twice leaves one row.
    """

    ts: datetime
    device_id: str
    metric: str
    value: float
    quality: int = 0


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    ts: datetime
    pole_id: str
    device_id: str
    type: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Presence:
    """A pole's edge controller came online or went offline (ts None: unknown, use now)."""

    pole_id: str
    state: str
    ts: datetime | None


class DeadLetterReason(StrEnum):
    MALFORMED = "malformed"  # not JSON, not an object, missing/invalid ts or sections
    UNKNOWN_TOPIC = "unknown_topic"
    UNKNOWN_POLE = "unknown_pole"
    UNKNOWN_DEVICE = "unknown_device"  # not registered, or registered on another pole
    UNDECLARED_METRIC = "undeclared_metric"
    UNDECLARED_EVENT = "undeclared_event"
    BAD_VALUE = "bad_value"  # wrong type (string, object, NaN, bool for a number)
    OUT_OF_RANGE = "out_of_range"
    # The pole sent more than its share (POLEGW_MQTT_POLE_RATE_PER_S / _BURST).
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A part of a message that could not be accepted, kept with the reason."""

    topic: str
    reason: DeadLetterReason
    detail: str
    payload: bytes
    pole_id: str | None = None
    device_id: str | None = None
    metric: str | None = None


@dataclass(slots=True)
class Decoded:
    """Everything one MQTT message yields."""

    readings: list[Reading] = field(default_factory=list)
    events: list[DeviceEvent] = field(default_factory=list)
    presence: list[Presence] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    message_ts: datetime | None = None
    topic_kind: str = "unknown"  # telemetry | device_telemetry | events | status | modbus | unknown
    quality: int = 0  # the clock flags given to this message's readings


@dataclass(slots=True)
class Batch:
    """What one transaction commits."""

    readings: list[Reading] = field(default_factory=list)
    events: list[DeviceEvent] = field(default_factory=list)
    presence: list[Presence] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.readings or self.events or self.presence or self.dead_letters)


@dataclass(frozen=True, slots=True)
class WriteResult:
    inserted: int  # readings newly stored
    duplicates: int  # readings that were already stored
