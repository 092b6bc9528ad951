"""decode_polled: values read from a Modbus device are checked exactly like the
values of an MQTT message, whichever of its two paths they take."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.decode import decode_message, decode_polled
from gateway.core.profiles import load_catalog
from gateway.core.readings import DeadLetterReason
from gateway.core.registry import DeviceRef, Registry

CATALOG = load_catalog()
DEVICE = DeviceRef("meter-1", "P0001", CATALOG["port-meter-4"])
REGISTRY = Registry(["P0001"], [DEVICE])
T0 = datetime(2026, 11, 22, 10, tzinfo=UTC)
SOURCE = "modbus://10.0.0.5:502/3"
NAMES = sorted(DEVICE.profile.metrics)

VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-10.0, max_value=10_000.0),
    st.integers(-(2**63), 2**64 - 1),  # what a Modbus register map can hold
    st.integers(0, 1000),
    st.booleans(),
)


def as_mqtt(values: dict[str, Any]) -> Any:
    body = {"ts": T0.isoformat(), "values": values}
    topic = f"poles/P0001/devices/{DEVICE.id}/telemetry"
    return decode_message(topic, orjson.dumps(body), REGISTRY)


@settings(max_examples=300, deadline=None)
@given(values=st.dictionaries(st.sampled_from([*NAMES, "not_a_metric"]), VALUES, max_size=12))
def test_polled_values_are_checked_like_a_messages(values: dict[str, Any]) -> None:
    polled = decode_polled(DEVICE, values, T0, source=SOURCE)
    mqtt = as_mqtt(values)
    assert polled.readings == mqtt.readings
    assert [(d.reason, d.metric, d.detail) for d in polled.dead_letters] == [
        (d.reason, d.metric, d.detail) for d in mqtt.dead_letters
    ]
    assert all(d.topic == SOURCE for d in polled.dead_letters)
    assert (polled.topic_kind, polled.message_ts, polled.quality) == ("modbus", T0, 0)


def test_in_bounds_numbers_are_readings_and_a_refused_value_keeps_the_poll() -> None:
    good: dict[str, object] = {n: 1.0 for n in NAMES if n in DEVICE.profile.number_bounds}
    polled = decode_polled(DEVICE, good, T0, source=SOURCE)
    assert [(r.metric, r.value, r.ts, r.device_id) for r in polled.readings] == [
        (name, 1.0, T0, DEVICE.id) for name in good
    ]
    assert polled.dead_letters == []

    first = next(iter(good))
    bad: dict[str, object] = {**good, first: float("nan")}
    polled = decode_polled(DEVICE, bad, T0, source=SOURCE)
    assert [r.metric for r in polled.readings] == [name for name in good if name != first]
    [dead] = polled.dead_letters
    assert (dead.reason, dead.metric, dead.device_id) == (
        DeadLetterReason.BAD_VALUE,
        first,
        DEVICE.id,
    )
    assert orjson.loads(dead.payload)[first] is None  # the poll's values, kept
