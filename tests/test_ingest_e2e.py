"""End to end through the real broker and database: publish, read back through the API."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import orjson
import pytest

from tests.support import (
    READINGS_PER_MESSAGE,
    count,
    eventually,
    gateway,
    gateway_settings,
    prepare_database,
    publish,
    stream,
)

N = 300


async def test_published_readings_are_stored_once_and_served(
    fresh_database_url: str, mqtt_url: str, topic_prefix: str
) -> None:
    await prepare_database(fresh_database_url)
    settings = gateway_settings(fresh_database_url, mqtt_url, topic_prefix)
    messages = stream(topic_prefix, N)
    expected = N * READINGS_PER_MESSAGE
    async with gateway(settings) as gw:
        assert publish(mqtt_url, messages) == N
        await eventually(
            lambda: count(fresh_database_url, "SELECT count(*) FROM telemetry") == expected,
            what=f"{expected} readings",
        )
        async with httpx.AsyncClient(base_url=gw.api, headers=gw.headers) as api:
            total = 0
            # Each message carries 5 lamp and 3 env readings; count one metric of each.
            for pole in ("P0001", "P0002", "P0003"):
                for device, metric, per_message in (
                    (f"{pole}-lamp", "power_w", 5),
                    (f"{pole}-env", "pm25_ugm3", 3),
                ):
                    r = await api.get(
                        f"/api/v1/devices/{device}/telemetry",
                        params={
                            "metric": metric,
                            "start": "2026-11-22T00:00:00Z",
                            "end": "2026-11-23T00:00:00Z",
                            "limit": 10000,
                        },
                    )
                    assert r.status_code == 200, r.text
                    total += len(r.json()["points"]) * per_message
            assert total == expected
            latest = (await api.get("/api/v1/devices/P0001-lamp/latest")).json()
            assert latest["values"]["lamp_on"]["value"] is True
            assert latest["values"]["power_w"]["unit"] == "W"

        # The same messages again: nothing changes.
        publish(mqtt_url, messages)
        await eventually(
            lambda: gw.metrics.readings_duplicate._value.get() >= expected,
            what="the replay to be processed",
        )
        assert count(fresh_database_url, "SELECT count(*) FROM telemetry") == expected
        assert gw.metrics.messages_acked._value.get() == 2 * N


async def test_bad_parts_are_dead_lettered_and_the_rest_is_stored(
    fresh_database_url: str, mqtt_url: str, topic_prefix: str
) -> None:
    await prepare_database(fresh_database_url)
    settings = gateway_settings(fresh_database_url, mqtt_url, topic_prefix)
    ts = "2026-11-22T10:00:00Z"
    mixed = orjson.dumps(
        {
            "ts": ts,
            "devices": {
                "P0001-lamp": {"power_w": 96.5, "made_up": 1, "voltage_v": 999.0},
                "P0001-env": {"temp_c": 12.5},
                "P0002-lamp": {"power_w": 50.0},  # registered on another pole
            },
        }
    )
    messages = [
        (f"{topic_prefix}/P0001/telemetry", b"{not json"),
        (f"{topic_prefix}/P9999/telemetry", orjson.dumps({"ts": ts, "devices": {}})),
        (f"{topic_prefix}/P0001/telemetry", mixed),
    ]
    async with gateway(settings):
        publish(mqtt_url, messages)
        await eventually(
            lambda: count(fresh_database_url, "SELECT count(*) FROM dead_letters") == 5,
            what="5 dead letters",
        )
        await eventually(
            lambda: count(fresh_database_url, "SELECT count(*) FROM telemetry") == 2,
            what="the 2 valid readings",
        )
    import psycopg

    with psycopg.connect(fresh_database_url) as conn:
        rows = conn.execute(
            "SELECT reason, pole_id, device_id, metric FROM dead_letters ORDER BY reason, device_id"
        ).fetchall()
        stored = conn.execute(
            "SELECT device_id, metric, value FROM telemetry ORDER BY 1"
        ).fetchall()
    assert rows == [
        ("malformed", "P0001", None, None),
        ("out_of_range", "P0001", "P0001-lamp", "voltage_v"),
        ("undeclared_metric", "P0001", "P0001-lamp", "made_up"),
        ("unknown_device", "P0001", "P0002-lamp", None),
        ("unknown_pole", "P9999", None, None),
    ]
    assert stored == [("P0001-env", "temp_c", 12.5), ("P0001-lamp", "power_w", 96.5)]


async def test_events_and_presence_are_stored(
    fresh_database_url: str, mqtt_url: str, topic_prefix: str
) -> None:
    await prepare_database(fresh_database_url)
    settings = gateway_settings(fresh_database_url, mqtt_url, topic_prefix)
    event = {"ts": "2026-11-22T10:00:00Z", "device": "P0001-cab", "type": "door_open", "data": {}}
    async with gateway(settings) as gw:
        publish(
            mqtt_url,
            [
                (f"{topic_prefix}/P0001/events", orjson.dumps(event)),
                (f"{topic_prefix}/P0001/events", orjson.dumps(event)),  # redelivered
                (
                    f"{topic_prefix}/P0001/status",
                    b'{"state": "online", "ts": "2026-11-22T09:00:00Z"}',
                ),
            ],
        )
        await eventually(lambda: gw.metrics.messages_acked._value.get() == 3, what="3 acks")
        async with httpx.AsyncClient(base_url=gw.api, headers=gw.headers) as api:
            pole = (await api.get("/api/v1/poles/P0001")).json()
    assert count(fresh_database_url, "SELECT count(*) FROM device_events") == 1
    assert pole["presence"] == "online"
    assert datetime.fromisoformat(pole["presence_since"]) == datetime(2026, 11, 22, 9, tzinfo=UTC)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_both_protocol_versions_ingest(
    fresh_database_url: str, mqtt_url: str, topic_prefix: str, protocol: str
) -> None:
    await prepare_database(fresh_database_url)
    settings = gateway_settings(fresh_database_url, mqtt_url, topic_prefix, mqtt_protocol=protocol)
    async with gateway(settings):
        publish(mqtt_url, stream(topic_prefix, 30))
        await eventually(
            lambda: (
                count(fresh_database_url, "SELECT count(*) FROM telemetry")
                == 30 * READINGS_PER_MESSAGE
            ),
            what="all readings",
        )
