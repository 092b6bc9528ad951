"""Fault suite item 5: a full day of raw messages fed twice changes nothing.

A day of one-minute telemetry from a few poles (lamps, a port meter per pole whose
ports are metered for billing, cabinet events, and some messages with bad parts) goes
through the real broker into a gateway running in this process. Then the same day
again, in another order. The stored rows (readings with value and quality, events,
dead letters, presence) are the same, row for row, and so is the energy each port
used, as the billing code computes it (DESIGN.md section 8, invariant 3).

Size: POLEGW_FAULT_SCALE (tests/faults.py) multiplies the number of poles (3 in CI).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.db import libpq_url
from gateway.adapters.usage_store import UsageStore
from gateway.core.profiles import load_catalog
from gateway.core.site import DeviceSpec, PoleSpec, PortSpec, SiteSpec, TenantSpec
from tests.faults import PrivateMosquitto, scaled
from tests.support import eventually, gateway, gateway_settings, prepare_database, publish

pytestmark = pytest.mark.slow

POLES = [f"R{i:04d}" for i in range(1, scaled(3) + 1)]
DAY = datetime(2026, 11, 20, tzinfo=UTC)
MINUTES = 24 * 60
PORTS = (1, 2)
RATED_W = 4000.0


def site() -> SiteSpec:
    return SiteSpec(
        tenants=[TenantSpec(id="tn-telecom", name="City Telecom")],
        poles=[
            PoleSpec(
                id=pole,
                devices=[
                    DeviceSpec(id=f"{pole}-lamp", profile="lamp-controller"),
                    DeviceSpec(id=f"{pole}-meter", profile="port-meter-4"),
                    DeviceSpec(id=f"{pole}-cab", profile="cabinet-monitor"),
                ],
                ports=[
                    PortSpec(id=f"{pole}-port{n}", meter=f"{pole}-meter", port=n, rated_w=RATED_W)
                    for n in PORTS
                ],
            )
            for pole in POLES
        ],
    )


def stamp(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def watts(pole_no: int, port: int, minute: int) -> float:
    """A port's load: a few hundred watts changing with the hour, below the rated power."""
    return min(150.0 * port + 40 * pole_no + 100 * ((minute // 60) % 4), RATED_W - 500)


@functools.cache
def counters(pole_no: int, port: int) -> list[float]:
    """The port's meter reading (kWh, 0.01 steps) at each minute of the day."""
    out, kwh = [], 100.0 * port + pole_no
    for minute in range(MINUTES):
        out.append(round(kwh, 2))
        kwh += watts(pole_no, port, minute) / 60_000
    return out


def counter(pole_no: int, port: int, minute: int) -> float:
    return counters(pole_no, port)[minute]


def day_of_messages(prefix: str) -> Iterator[tuple[str, bytes]]:
    for pole_no, pole in enumerate(POLES, start=1):
        for minute in range(MINUTES):
            ts = DAY + timedelta(minutes=minute)
            meter: dict[str, object] = {}
            for n in PORTS:
                meter[f"port{n}_energy_kwh"] = counter(pole_no, n, minute)
                meter[f"port{n}_power_w"] = watts(pole_no, n, minute)
                meter[f"port{n}_switch_on"] = True
            devices: dict[str, object] = {
                f"{pole}-lamp": {
                    "voltage_v": 228.0 + (minute % 30) / 10,
                    "power_w": 0.0 if 360 <= minute < 1080 else 96.5,
                    "dim_pct": 80,
                    "lamp_on": not 360 <= minute < 1080,
                },
                f"{pole}-meter": meter,
            }
            if minute % 97 == 0:  # bad parts: dead-lettered, the rest stored
                devices[f"{pole}-lamp"] = {"voltage_v": 9999.0, "power_w": 90.0, "made_up": 1}
                devices["nobody"] = {"power_w": 1.0}
            body = {"ts": stamp(ts), "seq": minute, "devices": devices}
            yield f"{prefix}/{pole}/telemetry", orjson.dumps(body)
            if minute % 120 == 7:
                event = {"ts": stamp(ts), "device": f"{pole}-cab", "type": "door_open"}
                yield f"{prefix}/{pole}/events", orjson.dumps(event)
        status = {"state": "online", "ts": stamp(DAY)}
        yield f"{prefix}/{pole}/status", orjson.dumps(status)
        yield f"{prefix}/{pole}/telemetry", b"{not json"


Snapshot = dict[str, list[tuple[object, ...]]]


def snapshot(database_url: str) -> Snapshot:
    queries = {
        "telemetry": "SELECT device_id, metric, ts, value, quality FROM telemetry ORDER BY 1, 2, 3",
        "events": "SELECT ts, pole_id, device_id, type, data::text FROM device_events"
        " ORDER BY 1, 3",
        "dead_letters": "SELECT topic, reason, detail, pole_id, device_id, metric, payload"
        " FROM dead_letters ORDER BY key",
        "presence": "SELECT pole_id, state, since FROM pole_presence ORDER BY 1",
    }
    with psycopg.connect(database_url) as conn:
        return {name: conn.execute(sql).fetchall() for name, sql in queries.items()}


async def kwh_per_port(database_url: str) -> dict[str, Decimal]:
    """Each port's energy over the day, as billing computes it."""
    async with AsyncConnectionPool(libpq_url(database_url), min_size=1, max_size=2) as pool:
        store = UsageStore(pool, load_catalog())
        out: dict[str, Decimal] = {}
        for pole in POLES:
            for n in PORTS:
                port = await store.port(f"{pole}-port{n}")
                assert port is not None
                usage = await store.port_usage(
                    port, DAY, DAY + timedelta(days=1), estimate_gaps=False
                )
                assert usage.intervals, port
                out[port.id] = sum((iv.kwh for iv in usage.intervals), Decimal(0))
        return out


async def test_a_day_fed_twice_stores_the_same_rows_and_the_same_kwh(
    fresh_database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    await prepare_database(fresh_database_url, site())
    messages = list(day_of_messages(topic_prefix))
    replay = messages.copy()
    random.Random(6).shuffle(replay)  # a replay need not come in the same order
    # A broker of its own: a whole day published at once is far more than Mosquitto's
    # default queue for one subscriber (max_queued_messages 1000 beyond the in-flight
    # window), past which the broker drops QoS 1 messages it has acknowledged.
    started = time.monotonic()
    with PrivateMosquitto(tmp_path / "broker") as broker:
        rows, kwh = await replay_twice(
            fresh_database_url, broker.url, topic_prefix, messages, replay
        )
    print(
        f"\nreplay: {len(POLES)} poles, a day of 1-minute messages ({len(messages)} messages,"
        f" {rows} readings) fed twice in {time.monotonic() - started:.1f}s: rows identical,"
        f" kWh identical for {len(kwh)} ports (total {sum(kwh.values()):.3f} kWh)"
    )


async def replay_twice(
    fresh_database_url: str,
    mqtt_url: str,
    topic_prefix: str,
    messages: list[tuple[str, bytes]],
    replay: list[tuple[str, bytes]],
) -> tuple[int, dict[str, Decimal]]:
    settings = gateway_settings(fresh_database_url, mqtt_url, topic_prefix)
    async with gateway(settings) as gw:
        acked = gw.metrics.messages_acked
        assert publish(mqtt_url, messages) == len(messages)
        await eventually(
            lambda: acked._value.get() == len(messages), within=120, what="the first pass"
        )
        first = snapshot(fresh_database_url)
        first_kwh = await kwh_per_port(fresh_database_url)

        assert publish(mqtt_url, replay) == len(replay)
        await eventually(
            lambda: acked._value.get() == 2 * len(messages), within=120, what="the replay"
        )
        second = snapshot(fresh_database_url)
        second_kwh = await kwh_per_port(fresh_database_url)
        duplicates = gw.metrics.readings_duplicate._value.get()

    # The first pass stored what the day holds.
    readings = len(first["telemetry"])
    per_minute = 4 + 3 * len(PORTS)  # lamp, meter
    bad_minutes = len(range(0, MINUTES, 97))
    assert readings == len(POLES) * (MINUTES * per_minute - bad_minutes * 3)
    assert len(first["events"]) == len(POLES) * len(range(7, MINUTES, 120))
    assert len(first["presence"]) == len(POLES)
    # per pole: 1 unparsable message; per bad minute: out of range, undeclared, unknown device
    assert len(first["dead_letters"]) == len(POLES) * (1 + 3 * bad_minutes)
    assert {row[4] for row in first["telemetry"]} == {0}  # no quality flags
    for pole_no, pole in enumerate(POLES, start=1):
        for n in PORTS:
            used = Decimal(str(counter(pole_no, n, MINUTES - 1))) - Decimal(
                str(counter(pole_no, n, 0))
            )
            assert abs(first_kwh[f"{pole}-port{n}"] - used) <= Decimal("0.001"), (pole, n)

    # The replay changed nothing: same rows, field by field, and the same energy.
    assert second == first
    assert second_kwh == first_kwh
    assert duplicates == readings
    return readings, second_kwh
