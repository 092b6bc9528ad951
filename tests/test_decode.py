"""decode_message: MQTT topic and payload in, readings, events, presence and dead letters out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.decode import MAX_KEPT_PAYLOAD, decode_message, parse_topic
from gateway.core.profiles import load_catalog
from gateway.core.readings import DeadLetterReason, Decoded, Presence
from gateway.core.registry import DeviceRef, Registry

R = DeadLetterReason
CATALOG = load_catalog()
PLACEMENT = {
    # device id: (profile, pole)
    "lamp-1": ("lamp-controller", "P0001"),
    "env-1": ("env-station", "P0001"),
    "meter-1": ("port-meter-4", "P0001"),
    "cab-1": ("cabinet-monitor", "P0001"),
    "tilt-1": ("pole-tilt", "P0001"),
    "sos-1": ("sos-button", "P0001"),
    "lamp-2": ("lamp-controller", "P0002"),
}
REGISTRY = Registry(
    ["P0001", "P0002"],
    [DeviceRef(d, pole, CATALOG[profile]) for d, (profile, pole) in PLACEMENT.items()],
)

TS = "2026-11-22T10:00:00Z"
T0 = datetime(2026, 11, 22, 10, tzinfo=UTC)
T0_MS = 1_795_341_600_000

BATCH = "poles/P0001/telemetry"
EVENTS = "poles/P0001/events"
STATUS = "poles/P0001/status"


def single(device: str, pole: str = "P0001") -> str:
    return f"poles/{pole}/devices/{device}/telemetry"


def encode(body: object) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def decode(topic: str, body: object) -> Decoded:
    return decode_message(topic, encode(body), REGISTRY)


@dataclass
class Case:
    id: str
    topic: str
    body: object
    readings: set[tuple[str, str, float]] = field(default_factory=set)
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    presence: list[tuple[str, datetime | None]] = field(default_factory=list)
    # (reason, pole, device, metric)
    dead: list[tuple[R, str | None, str | None, str | None]] = field(default_factory=list)


def batch(**devices: object) -> dict[str, object]:
    return {"ts": TS, "devices": {k.replace("_", "-"): v for k, v in devices.items()}}


LAMP_OK = {"power_w": 96.5}
LAMP_OK_READING = ("lamp-1", "power_w", 96.5)

CASES = [
    # ---------------------------------------------------------------- accepted
    Case(
        "batch-as-in-design",
        BATCH,
        {
            "ts": TS,
            "seq": 1042,
            "devices": {
                "lamp-1": {
                    "voltage_v": 229.8,
                    "power_w": 96.5,
                    "energy_kwh": 1234.567,
                    "dim_pct": 80,
                    "lamp_on": True,
                },
                "env-1": {"pm25_ugm3": 35.0, "temp_c": 12.5, "noise_dba": 61.2},
            },
        },
        readings={
            ("lamp-1", "voltage_v", 229.8),
            ("lamp-1", "power_w", 96.5),
            ("lamp-1", "energy_kwh", 1234.567),
            ("lamp-1", "dim_pct", 80.0),
            ("lamp-1", "lamp_on", 1.0),
            ("env-1", "pm25_ugm3", 35.0),
            ("env-1", "temp_c", 12.5),
            ("env-1", "noise_dba", 61.2),
        },
    ),
    Case(
        "batch-without-seq",
        BATCH,
        batch(tilt_1={"tilt_deg": 0.4, "tilt_x_deg": -0.3}),
        readings={("tilt-1", "tilt_deg", 0.4), ("tilt-1", "tilt_x_deg", -0.3)},
    ),
    Case(
        "batch-bounds-are-inclusive",
        BATCH,
        batch(lamp_1={"voltage_v": 0, "power_w": 1000, "power_factor": 1}),
        readings={
            ("lamp-1", "voltage_v", 0.0),
            ("lamp-1", "power_w", 1000.0),
            ("lamp-1", "power_factor", 1.0),
        },
    ),
    Case(
        "bool-metric-takes-true-false-0-1",
        BATCH,
        batch(cab_1={"door_open": False, "water_detected": 1, "smoke_detected": 0}),
        readings={
            ("cab-1", "door_open", 0.0),
            ("cab-1", "water_detected", 1.0),
            ("cab-1", "smoke_detected", 0.0),
        },
    ),
    Case(
        "single-device",
        single("meter-1"),
        {"ts": TS, "values": {"port1_energy_kwh": 10.5, "port1_switch_on": False}},
        readings={("meter-1", "port1_energy_kwh", 10.5), ("meter-1", "port1_switch_on", 0.0)},
    ),
    Case(
        "event",
        EVENTS,
        {"ts": TS, "device": "cab-1", "type": "door_open", "data": {"by": "badge 17"}},
        events=[("cab-1", "door_open", {"by": "badge 17"})],
    ),
    Case(
        "event-without-data",
        EVENTS,
        {"ts": TS, "device": "sos-1", "type": "sos_pressed"},
        events=[("sos-1", "sos_pressed", {})],
    ),
    Case(
        "event-with-null-data",
        EVENTS,
        {"ts": TS, "device": "meter-1", "type": "leakage", "data": None},
        events=[("meter-1", "leakage", {})],
    ),
    Case(
        "status-online",
        STATUS,
        {"state": "online", "ts": "2026-11-22T18:00:00+08:00"},
        presence=[("online", T0)],
    ),
    Case(
        "status-offline-will-without-ts", STATUS, {"state": "offline"}, presence=[("offline", None)]
    ),
    Case(
        "status-null-ts",
        STATUS,
        {"state": "online", "ts": None},
        presence=[("online", None)],
    ),
    # ------------------------------------------------------- whole message refused
    Case("malformed-json", BATCH, b'{"ts": "2026-', dead=[(R.MALFORMED, "P0001", None, None)]),
    Case("empty-payload", BATCH, b"", dead=[(R.MALFORMED, "P0001", None, None)]),
    Case("invalid-utf8", BATCH, b'{"ts": "\xff"}', dead=[(R.MALFORMED, "P0001", None, None)]),
    Case(
        "nan-literal-is-not-json",
        BATCH,
        b'{"ts": "2026-11-22T10:00:00Z", "devices": {"lamp-1": {"power_w": NaN}}}',
        dead=[(R.MALFORMED, "P0001", None, None)],
    ),
    Case(
        "number-beyond-double-is-not-accepted-json",
        BATCH,
        batch(lamp_1={"energy_kwh": 10**400}),
        dead=[(R.MALFORMED, "P0001", None, None)],
    ),
    Case("array", BATCH, [1, 2], dead=[(R.MALFORMED, "P0001", None, None)]),
    Case("string", BATCH, "telemetry", dead=[(R.MALFORMED, "P0001", None, None)]),
    Case("number", EVENTS, 42, dead=[(R.MALFORMED, "P0001", None, None)]),
    Case("null", STATUS, None, dead=[(R.MALFORMED, "P0001", None, None)]),
    Case("batch-without-devices", BATCH, {"ts": TS}, dead=[(R.MALFORMED, "P0001", None, None)]),
    Case(
        "batch-devices-not-object",
        BATCH,
        {"ts": TS, "devices": [{"lamp-1": LAMP_OK}]},
        dead=[(R.MALFORMED, "P0001", None, None)],
    ),
    Case(
        "single-without-values",
        single("lamp-1"),
        {"ts": TS, "devices": {"lamp-1": LAMP_OK}},
        dead=[(R.MALFORMED, "P0001", "lamp-1", None)],
    ),
    Case(
        "single-values-not-object",
        single("lamp-1"),
        {"ts": TS, "values": [96.5]},
        dead=[(R.MALFORMED, "P0001", "lamp-1", None)],
    ),
    Case(
        "event-without-type",
        EVENTS,
        {"ts": TS, "device": "cab-1"},
        dead=[(R.MALFORMED, "P0001", None, None)],
    ),
    Case(
        "event-device-not-string",
        EVENTS,
        {"ts": TS, "device": ["cab-1"], "type": "water"},
        dead=[(R.MALFORMED, "P0001", None, None)],
    ),
    Case(
        "event-data-not-object",
        EVENTS,
        {"ts": TS, "device": "cab-1", "type": "water", "data": "wet"},
        dead=[(R.MALFORMED, "P0001", "cab-1", None)],
    ),
    Case(
        "status-bad-state",
        STATUS,
        {"state": "sleeping", "ts": TS},
        dead=[(R.MALFORMED, "P0001", None, None)],
    ),
    Case(
        "status-naive-ts",
        STATUS,
        {"state": "online", "ts": "2026-11-22T10:00:00"},
        dead=[(R.MALFORMED, "P0001", None, None)],
    ),
    # ---------------------------------------------------------- unknown topic/pole
    *(
        Case(
            f"unknown-topic-{topic}",
            topic,
            batch(lamp_1=LAMP_OK),
            dead=[(R.UNKNOWN_TOPIC, None, None, None)],
        )
        for topic in [
            "other/P0001/telemetry",
            "poles/P0001",
            "poles",
            "",
            "poles/P0001/telemetry/extra",
            "poles//telemetry",
            "poles/P0001/devices//telemetry",
            "poles/P0001/devices/lamp-1",
            "poles/P0001/devices/lamp-1/telemetry/x",
            "poles/P0001/commands/lamp-1",
            "poles/P0001/commands/lamp-1/reply",
            "/poles/P0001/telemetry",
            "Poles/P0001/telemetry",
        ]
    ),
    Case(
        "unknown-pole",
        "poles/P9999/telemetry",
        batch(lamp_1=LAMP_OK),
        dead=[(R.UNKNOWN_POLE, "P9999", None, None)],
    ),
    Case(
        "unknown-pole-is-checked-before-the-payload",
        "poles/P9999/status",
        b"not json",
        dead=[(R.UNKNOWN_POLE, "P9999", None, None)],
    ),
    # ------------------------------------ parts refused, the valid rest is kept
    Case(
        "unknown-device",
        BATCH,
        batch(lamp_1=LAMP_OK, ghost_1={"power_w": 1}),
        readings={LAMP_OK_READING},
        dead=[(R.UNKNOWN_DEVICE, "P0001", "ghost-1", None)],
    ),
    Case(
        "unknown-device-alone",
        single("ghost-1"),
        {"ts": TS, "values": LAMP_OK},
        dead=[(R.UNKNOWN_DEVICE, "P0001", "ghost-1", None)],
    ),
    Case(
        "device-of-another-pole-in-batch",
        BATCH,
        batch(lamp_1=LAMP_OK, lamp_2={"power_w": 50}),
        readings={LAMP_OK_READING},
        dead=[(R.UNKNOWN_DEVICE, "P0001", "lamp-2", None)],
    ),
    Case(
        "device-of-another-pole-alone",
        single("lamp-1", pole="P0002"),
        {"ts": TS, "values": LAMP_OK},
        dead=[(R.UNKNOWN_DEVICE, "P0002", "lamp-1", None)],
    ),
    Case(
        "event-of-unknown-device",
        EVENTS,
        {"ts": TS, "device": "ghost-1", "type": "water"},
        dead=[(R.UNKNOWN_DEVICE, "P0001", "ghost-1", None)],
    ),
    Case(
        "event-of-device-on-another-pole",
        "poles/P0002/events",
        {"ts": TS, "device": "sos-1", "type": "sos_pressed"},
        dead=[(R.UNKNOWN_DEVICE, "P0002", "sos-1", None)],
    ),
    Case(
        "device-values-not-object",
        BATCH,
        batch(lamp_1=LAMP_OK, env_1=[35.0]),
        readings={LAMP_OK_READING},
        dead=[(R.MALFORMED, "P0001", "env-1", None)],
    ),
    Case(
        "undeclared-metric",
        BATCH,
        batch(lamp_1={**LAMP_OK, "colour": 3, "pm25_ugm3": 12}),
        readings={LAMP_OK_READING},
        dead=[
            (R.UNDECLARED_METRIC, "P0001", "lamp-1", "colour"),
            (R.UNDECLARED_METRIC, "P0001", "lamp-1", "pm25_ugm3"),
        ],
    ),
    Case(
        "undeclared-event",
        EVENTS,
        {"ts": TS, "device": "cab-1", "type": "door_ajar"},
        dead=[(R.UNDECLARED_EVENT, "P0001", "cab-1", None)],
    ),
    Case(
        "event-data-with-nul",  # valid JSON, but PostgreSQL's jsonb cannot hold it
        EVENTS,
        {"ts": TS, "device": "cab-1", "type": "door_open", "data": {"by": "\u0000"}},
        dead=[(R.BAD_VALUE, "P0001", "cab-1", None)],
    ),
    Case(
        "event-of-a-device-without-events",
        EVENTS,
        {"ts": TS, "device": "env-1", "type": "impact"},
        dead=[(R.UNDECLARED_EVENT, "P0001", "env-1", None)],
    ),
    *(
        Case(
            f"bad-value-{name}",
            BATCH,
            batch(lamp_1={**LAMP_OK, metric: value}),
            readings={LAMP_OK_READING},
            dead=[(R.BAD_VALUE, "P0001", "lamp-1", metric)],
        )
        for name, metric, value in [
            ("numeric-string", "voltage_v", "230.1"),
            ("nan-string", "voltage_v", "NaN"),
            ("infinity-string", "voltage_v", "Infinity"),
            ("empty-string", "voltage_v", ""),
            ("null", "voltage_v", None),
            ("array", "voltage_v", [230.1]),
            ("object", "voltage_v", {"value": 230.1}),
            ("true-for-number", "voltage_v", True),
            ("false-for-number", "dim_pct", False),
            ("2-for-bool", "lamp_on", 2),
            ("half-for-bool", "lamp_on", 0.5),
            ("string-for-bool", "lamp_on", "on"),
            ("string-true-for-bool", "lamp_on", "true"),
        ]
    ),
    *(
        Case(
            f"out-of-range-{name}",
            BATCH,
            batch(lamp_1={**LAMP_OK, metric: value}),
            readings={LAMP_OK_READING},
            dead=[(R.OUT_OF_RANGE, "P0001", "lamp-1", metric)],
        )
        for name, metric, value in [
            ("above-max", "voltage_v", 300.5),
            ("below-min", "current_a", -0.01),
            ("pf-above-1", "power_factor", 1.2),
            ("dim-above-100", "dim_pct", 101),
            ("negative-counter", "energy_kwh", -1),
            ("int-beyond-64-bits", "energy_kwh", 10**30),
            ("uint64-max", "burning_hours", 2**64 - 1),
            ("negative-int-beyond-64-bits", "voltage_v", -(2**70)),
            ("largest-double", "voltage_v", 1.7976931348623157e308),
        ]
    ),
    Case(
        "every-kind-of-refusal-in-one-message",
        BATCH,
        batch(
            lamp_1={"voltage_v": 230.0, "power_w": 5000, "dim_pct": "50", "mode": "eco"},
            env_1={"temp_c": -60, "humidity_pct": 55},
            ghost_1={"temp_c": 1},
            lamp_2={"voltage_v": 230.0},
            meter_1={"port4_current_a": 12.5, "port4_switch_on": True},
        ),
        readings={
            ("lamp-1", "voltage_v", 230.0),
            ("env-1", "humidity_pct", 55.0),
            ("meter-1", "port4_current_a", 12.5),
            ("meter-1", "port4_switch_on", 1.0),
        },
        dead=[
            (R.OUT_OF_RANGE, "P0001", "lamp-1", "power_w"),
            (R.BAD_VALUE, "P0001", "lamp-1", "dim_pct"),
            (R.UNDECLARED_METRIC, "P0001", "lamp-1", "mode"),
            (R.OUT_OF_RANGE, "P0001", "env-1", "temp_c"),
            (R.UNKNOWN_DEVICE, "P0001", "ghost-1", None),
            (R.UNKNOWN_DEVICE, "P0001", "lamp-2", None),
        ],
    ),
    Case(
        "refusals-in-a-single-device-message",
        single("env-1"),
        {"ts": T0_MS, "values": {"noise_dba": 10, "rain_mmh": 0, "wind_dir_deg": "NE"}},
        readings={("env-1", "rain_mmh", 0.0)},
        dead=[
            (R.OUT_OF_RANGE, "P0001", "env-1", "noise_dba"),
            (R.BAD_VALUE, "P0001", "env-1", "wind_dir_deg"),
        ],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decode(case: Case) -> None:
    payload = encode(case.body)

    out = decode_message(case.topic, payload, REGISTRY)

    assert {(r.device_id, r.metric, r.value) for r in out.readings} == case.readings
    assert len(out.readings) == len(case.readings)
    assert [(e.device_id, e.type, e.data) for e in out.events] == case.events
    assert [(p.state, p.ts) for p in out.presence] == case.presence
    dead = [(d.reason, d.pole_id, d.device_id, d.metric) for d in out.dead_letters]
    assert dead == case.dead
    for reading in out.readings:
        assert reading.ts == T0
        assert reading.quality == 0
    for event in out.events:
        assert (event.ts, event.pole_id) == (T0, "P0001")
    for letter in out.dead_letters:
        assert letter.topic == case.topic
        assert letter.payload == payload
        assert letter.detail


def test_presence_names_the_pole() -> None:
    out = decode("poles/P0002/status", {"state": "offline", "ts": T0_MS})
    assert out.presence == [Presence("P0002", "offline", T0)]


def test_dead_letter_details_say_what_is_wrong() -> None:
    out = decode(BATCH, batch(lamp_1={"voltage_v": 300.5, "dim_pct": True, "x": 1}))
    details = {d.metric: d.detail for d in out.dead_letters}
    assert "300.5" in details["voltage_v"]
    assert "maximum 300" in details["voltage_v"]
    assert "boolean" in details["dim_pct"]
    assert "lamp-controller" in details["x"]


def test_dead_letter_keeps_a_bounded_copy_of_the_payload() -> None:
    body = batch(ghost_1={"note": "x" * (2 * MAX_KEPT_PAYLOAD)})
    payload = encode(body)
    (letter,) = decode_message(BATCH, payload, REGISTRY).dead_letters
    assert letter.payload == payload[:MAX_KEPT_PAYLOAD]


def test_topic_prefix_is_configurable() -> None:
    body = encode(batch(lamp_1=LAMP_OK))
    out = decode_message(
        "city/north/poles/P0001/telemetry", body, REGISTRY, prefix="city/north/poles"
    )
    assert [(r.device_id, r.metric) for r in out.readings] == [("lamp-1", "power_w")]

    out = decode_message(BATCH, body, REGISTRY, prefix="city/north/poles")
    assert [d.reason for d in out.dead_letters] == [R.UNKNOWN_TOPIC]


# ------------------------------------------------------------------------ timestamps


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-11-22T10:00:00Z", T0),
        ("2026-11-22T10:00:00+00:00", T0),
        ("2026-11-22T18:00:00+08:00", T0),
        ("2026-11-22T07:30:00.250-02:30", T0 + timedelta(milliseconds=250)),
        ("2026-11-22 10:00:00Z", T0),
        (T0_MS, T0),
        (T0_MS + 250.0, T0 + timedelta(milliseconds=250)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
@pytest.mark.parametrize("topic", [BATCH, single("lamp-1"), EVENTS])
def test_accepted_timestamps(topic: str, ts: object, expected: datetime) -> None:
    body: dict[str, object] = {"ts": ts}
    if topic == BATCH:
        body["devices"] = {"lamp-1": LAMP_OK}
    elif topic == EVENTS:
        body |= {"device": "lamp-1", "type": "supply_loss"}
    else:
        body["values"] = LAMP_OK

    out = decode(topic, body)

    assert out.dead_letters == []
    assert out.message_ts == expected
    assert out.message_ts.tzinfo is UTC
    stamped = [r.ts for r in out.readings] + [e.ts for e in out.events]
    assert stamped == [expected]


@pytest.mark.parametrize(
    ("ts", "fragment"),
    [
        ("2026-11-22T10:00:00", "no UTC offset"),
        ("2026-11-22", "no UTC offset"),
        (None, "missing"),
        (True, "boolean"),
        (-1, "out of range"),
        (253_402_300_800_000, "out of range"),
        (1e300, "out of range"),
        ("yesterday", "not an RFC 3339"),
        ("", "not an RFC 3339"),
        ("2026-13-01T00:00:00Z", "not an RFC 3339"),
        ("2026-11-22T10:00:00+24:00", "not an RFC 3339"),
        ([2026, 11, 22], "not list"),
        ({"s": 1}, "not dict"),
        ("0001-01-01T00:00:00+01:00", "out of range"),
        ("9999-12-31T23:59:59-01:00", "out of range"),
    ],
)
@pytest.mark.parametrize("topic", [BATCH, single("lamp-1"), EVENTS])
def test_refused_timestamps(topic: str, ts: object, fragment: str) -> None:
    body = {"ts": ts, "devices": {"lamp-1": LAMP_OK}, "values": LAMP_OK}
    body |= {"device": "lamp-1", "type": "supply_loss"}
    if ts is None:
        del body["ts"]

    out = decode(topic, body)

    assert (out.readings, out.events) == ([], [])
    (letter,) = out.dead_letters
    assert letter.reason is R.MALFORMED
    assert fragment in letter.detail


# ---------------------------------------------------------------- property tests

ALL_METRICS = sorted({m for p in CATALOG.values() for m in p.metrics})
ALL_EVENTS = sorted({e for p in CATALOG.values() for e in p.events})
TOPICS = [
    BATCH,
    "poles/P0002/telemetry",
    EVENTS,
    STATUS,
    *(single(d) for d in PLACEMENT),
    single("lamp-1", pole="P0002"),
    "poles/P9999/telemetry",
    "poles/P0001/commands/lamp-1/reply",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30, 10**400, -(10**400)])
    | st.floats()  # includes NaN and ±Infinity, which json.dumps writes as bare words
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
offsets = st.builds(timezone, st.timedeltas(-timedelta(hours=23), timedelta(hours=23)))
timestamps = (
    st.datetimes(timezones=offsets).map(datetime.isoformat)
    # the ends of the calendar, where converting the offset to UTC leaves it
    | st.builds(
        lambda edge, tz: edge.replace(tzinfo=tz).isoformat(),
        st.sampled_from([datetime.min, datetime.max]),
        offsets,
    )
    | st.datetimes().map(datetime.isoformat)  # naive
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | json_values
)
device_ids = st.sampled_from([*PLACEMENT, "ghost-1"]) | st.text(max_size=10)
metric_values = st.floats(-1e4, 2e5) | st.integers(-100, 2000) | st.booleans() | json_values
device_values = (
    st.dictionaries(st.sampled_from(ALL_METRICS) | st.text(max_size=10), metric_values, max_size=6)
    | json_values
)
telemetry_bodies = st.fixed_dictionaries(
    {
        "ts": timestamps,
        "devices": st.dictionaries(device_ids, device_values, max_size=5) | json_values,
    },
    optional={"seq": json_values},
)
single_bodies = st.fixed_dictionaries({"ts": timestamps, "values": device_values})
event_bodies = st.fixed_dictionaries(
    {"ts": timestamps},
    optional={
        "device": device_ids | json_values,
        "type": st.sampled_from(ALL_EVENTS) | json_values,
        "data": json_values,
    },
)
status_bodies = st.fixed_dictionaries(
    {}, optional={"state": st.sampled_from(["online", "offline"]) | json_values, "ts": timestamps}
)
any_body = telemetry_bodies | single_bodies | event_bodies | status_bodies | json_values


def to_bytes(body: object) -> bytes:
    # ensure_ascii=False lets lone surrogates through as invalid UTF-8.
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    """Valid-looking JSON with a few bytes replaced, inserted or cut off."""
    data = bytearray(to_bytes(draw(any_body)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "replace", "truncate"]))
        chunk = draw(st.binary(min_size=1, max_size=3))
        if action == "insert":
            data[at:at] = chunk
        elif action == "replace":
            data[at : at + len(chunk)] = chunk
        else:
            del data[at:]
    return bytes(data)


payloads = (
    st.binary(max_size=200)
    | any_body.map(to_bytes)
    | corrupted()
    | st.integers(0, 1200).map(lambda depth: b"[" * depth + b"]" * depth)
    | st.integers(0, 1200).map(
        lambda depth: to_bytes(batch(lamp_1={"power_w": 0})).replace(
            b"0}", b"[" * depth + b"]" * depth + b"}"
        )
    )
)
topics = st.sampled_from(TOPICS) | st.text(max_size=40)


def assert_accounted(topic: str, payload: bytes, out: Decoded) -> None:
    """Nothing a message carries is silently lost, and what is kept is valid."""
    yielded = out.readings or out.events or out.presence or out.dead_letters
    if not yielded:
        # Only a well-formed telemetry message that carries no values at all yields
        # nothing: an empty batch, or devices that each sent an empty object.
        body = orjson.loads(payload)
        assert out.message_ts is not None
        where = parse_topic(topic, "poles")
        assert where is not None
        if where.kind == "device_telemetry":
            assert body["values"] == {}
        else:
            assert all(values == {} for values in body["devices"].values())
    for reading in out.readings:
        device = REGISTRY.device(reading.device_id)
        assert device is not None
        assert topic.split("/")[1] == device.pole_id
        assert reading.ts == out.message_ts
        assert reading.ts.utcoffset() == timedelta(0)
        assert device.profile.metrics[reading.metric].check(reading.value) == reading.value
    for event in out.events:
        device = REGISTRY.device(event.device_id)
        assert device is not None
        assert event.type in device.profile.events
        assert isinstance(event.data, dict)
    for letter in out.dead_letters:
        assert letter.topic == topic
        assert letter.payload == payload[:MAX_KEPT_PAYLOAD]
        assert isinstance(letter.reason, R)


PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(topic=topics, payload=payloads)
def test_arbitrary_bytes_never_raise_and_are_accounted_for(topic: str, payload: bytes) -> None:
    out = decode_message(topic, payload, REGISTRY)
    assert_accounted(topic, payload, out)


@PROPERTY
@given(topic=st.sampled_from([BATCH, "poles/P0002/telemetry"]), body=telemetry_bodies)
def test_every_value_of_a_batch_becomes_a_reading_or_a_dead_letter(
    topic: str, body: dict[str, Any]
) -> None:
    payload = to_bytes(body)
    out = decode_message(topic, payload, REGISTRY)
    assert_accounted(topic, payload, out)

    if out.message_ts is None:  # refused whole: not JSON to orjson, or a bad ts
        assert out.readings == []
        assert [d.reason for d in out.dead_letters] == [R.MALFORMED]
        return
    devices = body["devices"]
    if not isinstance(devices, dict):
        assert [d.reason for d in out.dead_letters] == [R.MALFORMED]
        return
    pole = topic.split("/")[1]
    expected = 0
    for device_id, values in devices.items():
        device = REGISTRY.device(device_id)
        if device is None or device.pole_id != pole or not isinstance(values, dict):
            expected += 1  # one dead letter for the device
        else:
            expected += len(values)  # one reading or one dead letter per value
    assert len(out.readings) + len(out.dead_letters) == expected


@PROPERTY
@given(topic=st.sampled_from(TOPICS[:4]), body=event_bodies | status_bodies)
def test_an_event_or_status_message_yields_exactly_one_outcome(
    topic: str, body: dict[str, Any]
) -> None:
    payload = to_bytes(body)
    out = decode_message(topic, payload, REGISTRY)
    assert_accounted(topic, payload, out)
    if topic in (EVENTS, STATUS):
        assert len(out.events) + len(out.presence) + len(out.dead_letters) == 1
