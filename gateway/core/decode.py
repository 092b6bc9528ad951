"""Decode one MQTT message (DESIGN.md section 5) into readings and dead letters.

Pure: no I/O. A bad part of a message becomes a dead letter with its reason; the
valid rest is kept. Nothing in here raises for bad input.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.core.profiles import Refused
from gateway.core.readings import (
    ClockCheck,
    DeadLetter,
    DeadLetterReason,
    Decoded,
    DeviceEvent,
    Presence,
    Reading,
)
from gateway.core.registry import DeviceRef, Registry

R = DeadLetterReason
_new = tuple.__new__

# A dead letter keeps at most this much of the raw payload.
MAX_KEPT_PAYLOAD = 64 * 1024
# One message yields at most this many dead letters; the parts refused beyond it
# are summed up in one more dead letter (reasons and counts in its detail). Without
# the bound, a 1 MB message of undeclared metrics made ~100 000 dead letters, each
# with its copy of the payload: gigabytes in memory and in the database.
MAX_DEAD_LETTERS = 100

_reading = tuple.__new__

_EPOCH_MS_MIN = 0  # 1970-01-01
_EPOCH_MS_MAX = 253_402_300_799_000  # 9999-12-31T23:59:59Z


class BadTimestamp(ValueError):
    pass


def parse_ts(raw: object) -> datetime:
    """RFC 3339 with an offset, or epoch milliseconds, as an aware UTC datetime."""
    if isinstance(raw, bool):
        raise BadTimestamp("ts must be an RFC 3339 string or epoch milliseconds, not a boolean")
    if isinstance(raw, int | float):
        if not (_EPOCH_MS_MIN <= raw <= _EPOCH_MS_MAX):
            raise BadTimestamp(f"epoch milliseconds out of range: {raw!r}")
        return datetime.fromtimestamp(raw / 1000, tz=UTC)
    if isinstance(raw, str):
        try:
            ts = datetime.fromisoformat(raw)
        except ValueError:
            raise BadTimestamp(f"not an RFC 3339 timestamp: {raw[:64]!r}") from None
        if ts.tzinfo is None:
            raise BadTimestamp(f"timestamp has no UTC offset: {raw[:64]!r}")
        try:
            return ts.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise BadTimestamp(f"timestamp out of range: {raw[:64]!r}") from None
    if raw is None:
        raise BadTimestamp("ts is missing")
    raise BadTimestamp(f"ts must be a string or a number, not {type(raw).__name__}")


@dataclass(frozen=True, slots=True)
class Topic:
    kind: str  # "telemetry" | "device_telemetry" | "events" | "status"
    pole_id: str
    device_id: str | None = None


@functools.lru_cache(maxsize=1 << 16)
def parse_topic(topic: str, prefix: str) -> Topic | None:
    """What a topic names, or None when it is not part of the contract. Cached: the
    gateway sees the same few topics per pole over and over (the cache is bounded,
    so a client that invents topics costs memory only up to its size)."""
    parts = topic.split("/")
    head = prefix.split("/")
    n = len(head)
    if parts[:n] != head or len(parts) < n + 2:
        return None
    pole, rest = parts[n], parts[n + 1 :]
    if not pole:
        return None
    if rest == ["telemetry"]:
        return Topic("telemetry", pole)
    if rest == ["events"]:
        return Topic("events", pole)
    if rest == ["status"]:
        return Topic("status", pole)
    if len(rest) == 3 and rest[0] == "devices" and rest[2] == "telemetry" and rest[1]:
        return Topic("device_telemetry", pole, rest[1])
    return None


class _Builder:
    """Collects the outcome of one message."""

    def __init__(self, topic: str, payload: bytes, clock: ClockCheck | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.kept = payload[:MAX_KEPT_PAYLOAD]  # one copy, shared by the message's letters
        self.clock = clock
        self.out = Decoded()
        self.overflow: Counter[DeadLetterReason] = Counter()
        self.overflow_pole: str | None = None

    def dead(
        self,
        reason: DeadLetterReason,
        detail: str,
        *,
        pole: str | None = None,
        device: str | None = None,
        metric: str | None = None,
    ) -> None:
        if len(self.out.dead_letters) >= MAX_DEAD_LETTERS:
            self.overflow[reason] += 1
            self.overflow_pole = pole
            return
        self.out.dead_letters.append(
            DeadLetter(
                topic=self.topic,
                reason=reason,
                detail=detail,
                payload=self.kept,
                pole_id=pole,
                device_id=device,
                metric=metric,
            )
        )

    def finish(self) -> Decoded:
        """The outcome, with the parts refused beyond MAX_DEAD_LETTERS summed up."""
        if self.overflow:
            (reason, _), *_ = self.overflow.most_common(1)
            counts = ", ".join(f"{r.value} x{n}" for r, n in self.overflow.most_common())
            self.out.dead_letters.append(
                DeadLetter(
                    topic=self.topic,
                    reason=reason,
                    detail=f"{self.overflow.total()} more parts of this message refused,"
                    f" not kept one by one ({counts})",
                    payload=self.kept,
                    pole_id=self.overflow_pole,
                )
            )
            self.overflow.clear()
        return self.out


def decode_message(
    topic: str,
    payload: bytes,
    registry: Registry,
    *,
    prefix: str = "poles",
    clock: ClockCheck | None = None,
) -> Decoded:
    """Everything one message yields; never raises for bad input.

    With `clock`, readings with an implausible timestamp carry a quality flag."""
    b = _Builder(topic, payload, clock)
    _decode(b, topic, payload, registry, prefix)
    return b.finish()


def _decode(b: _Builder, topic: str, payload: bytes, registry: Registry, prefix: str) -> None:
    where = parse_topic(topic, prefix)
    if where is None:
        b.dead(R.UNKNOWN_TOPIC, f"topic {topic[:200]!r} is not part of the polegw contract")
        return
    b.out.topic_kind = where.kind
    pole = where.pole_id
    if not registry.has_pole(pole):
        b.dead(R.UNKNOWN_POLE, f"pole {pole!r} is not registered", pole=pole)
        return
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        b.dead(R.MALFORMED, f"not valid JSON: {exc}", pole=pole)
        return
    if not isinstance(body, dict):
        b.dead(R.MALFORMED, f"payload must be a JSON object, not {type(body).__name__}", pole=pole)
        return

    if where.kind == "status":
        _status(b, pole, body)
        return
    try:
        ts = parse_ts(body.get("ts"))
    except BadTimestamp as exc:
        b.dead(R.MALFORMED, str(exc), pole=pole, device=where.device_id)
        return
    b.out.message_ts = ts
    if where.kind == "telemetry":
        devices = body.get("devices")
        if not isinstance(devices, dict):
            b.dead(R.MALFORMED, "'devices' must be an object of device id -> values", pole=pole)
            return
        for device_id, values in devices.items():
            _device_values(b, registry, pole, device_id, values, ts)
    elif where.kind == "device_telemetry":
        assert where.device_id is not None
        values = body.get("values")
        _device_values(b, registry, pole, where.device_id, values, ts)
    else:
        _event(b, registry, pole, body, ts)


def _device(b: _Builder, registry: Registry, pole: str, device_id: str) -> DeviceRef | None:
    device = registry.device(device_id)
    if device is None:
        b.dead(
            R.UNKNOWN_DEVICE, f"device {device_id!r} is not registered", pole=pole, device=device_id
        )
        return None
    if device.pole_id != pole:
        b.dead(
            R.UNKNOWN_DEVICE,
            f"device {device_id!r} is registered on pole {device.pole_id!r}, not {pole!r}",
            pole=pole,
            device=device_id,
        )
        return None
    return device


def decode_polled(
    device: DeviceRef, values: dict[str, object], ts: datetime, *, source: str
) -> Decoded:
    """Values read from a device by polling (Modbus), checked exactly like the
    values of an MQTT message. `source` stands in for the topic in dead letters."""
    # Fast path, once per poll: every value a number within its metric's bounds (the
    # check's own fast path below) gives readings and nothing else. Anything else
    # takes the full check, with the values kept as the dead letters' payload.
    bounds = device.profile.number_bounds
    device_id = device.id
    readings: list[Reading] = []
    for name, raw in values.items():
        limits = bounds.get(name)
        if limits is None or type(raw) not in (float, int) or not limits[0] <= raw <= limits[1]:  # type: ignore[operator]
            break
        # tuple.__new__: Reading's own __new__ is a Python function (~0.1 us more each)
        readings.append(_new(Reading, (ts, device_id, name, float(raw), 0)))  # type: ignore[arg-type]
    else:
        return Decoded(readings=readings, message_ts=ts, topic_kind="modbus")
    b = _Builder(source, orjson.dumps(values, option=orjson.OPT_NON_STR_KEYS), None)
    b.out.topic_kind = "modbus"
    b.out.message_ts = ts
    _checked_values(b, device, device.pole_id, values, ts)
    return b.finish()


def _device_values(
    b: _Builder, registry: Registry, pole: str, device_id: str, values: Any, ts: datetime
) -> None:
    device = _device(b, registry, pole, device_id)
    if device is None:
        return
    _checked_values(b, device, pole, values, ts)


def _checked_values(b: _Builder, device: DeviceRef, pole: str, values: Any, ts: datetime) -> None:
    device_id = device.id
    if not isinstance(values, dict):
        b.dead(
            R.MALFORMED,
            "device values must be an object of metric -> value",
            pole=pole,
            device=device_id,
        )
        return
    profile = device.profile
    bounds = profile.number_bounds
    flags = profile.bool_metrics
    append = b.out.readings.append
    quality = b.clock.quality(ts) if b.clock is not None else 0
    b.out.quality = quality
    for name, raw in values.items():
        # The profile's compiled checks for the common cases (a number within its
        # bounds, a boolean where one is declared); anything else gets the full check.
        # `_reading` is Reading's constructor without the NamedTuple's Python frame.
        kind = type(raw)
        if kind is float or kind is int:
            limits = bounds.get(name)
            if limits is not None and limits[0] <= raw <= limits[1]:
                append(_reading(Reading, (ts, device_id, name, float(raw), quality)))
                continue
        elif kind is bool and name in flags:
            append(_reading(Reading, (ts, device_id, name, 1.0 if raw else 0.0, quality)))
            continue
        spec = profile.metrics.get(name)
        if spec is None:
            b.dead(
                R.UNDECLARED_METRIC,
                f"metric {name[:100]!r} is not declared by profile {device.profile.profile!r}",
                pole=pole,
                device=device_id,
                metric=name[:100],
            )
            continue
        value = spec.check(raw)
        if isinstance(value, Refused):
            b.dead(value.reason, value.detail, pole=pole, device=device_id, metric=name)
            continue
        append(Reading(ts, device_id, name, value, quality))


def _event(b: _Builder, registry: Registry, pole: str, body: dict[str, Any], ts: datetime) -> None:
    device_id = body.get("device")
    kind = body.get("type")
    data = body.get("data", {})
    if not isinstance(device_id, str) or not isinstance(kind, str):
        b.dead(R.MALFORMED, "an event needs 'device' and 'type' strings", pole=pole)
        return
    if data is None:
        data = {}
    if not isinstance(data, dict):
        b.dead(R.MALFORMED, "event 'data' must be an object", pole=pole, device=device_id)
        return
    device = _device(b, registry, pole, device_id)
    if device is None:
        return
    if kind not in device.profile.events:
        b.dead(
            R.UNDECLARED_EVENT,
            f"event {kind[:100]!r} is not declared by profile {device.profile.profile!r}",
            pole=pole,
            device=device_id,
        )
        return
    if b"\\u0000" in orjson.dumps(data):
        # JSON allows it; PostgreSQL's jsonb (where events are kept) does not.
        b.dead(R.BAD_VALUE, "event data contains \\u0000", pole=pole, device=device_id)
        return
    b.out.events.append(DeviceEvent(ts, pole, device_id, kind, data))


def _status(b: _Builder, pole: str, body: dict[str, Any]) -> None:
    state = body.get("state")
    if state not in ("online", "offline"):
        b.dead(R.MALFORMED, "status 'state' must be 'online' or 'offline'", pole=pole)
        return
    ts: datetime | None = None
    if body.get("ts") is not None:
        try:
            ts = parse_ts(body["ts"])
        except BadTimestamp as exc:
            b.dead(R.MALFORMED, str(exc), pole=pole)
            return
    b.out.presence.append(Presence(pole, str(state), ts))
