"""Clocks (issue 14): a pole whose clock is 10 minutes ahead gets `set_time` on
its controller's command topic, takes it, and its readings stop being flagged;
the correction is counted in /metrics, at most once per pole per interval."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from gateway.core.clocks import ClockWatch
from gateway.core.profiles import load_catalog
from gateway.core.readings import Quality
from gateway.core.site import DeviceSpec, PoleSpec, SiteSpec
from simulators.model import site_models
from simulators.mqtt_poles import EdgeController, parse_mqtt_url
from tests.support import eventually, gateway, gateway_settings, prepare_database

POLE = "P0001"


def site() -> SiteSpec:
    return SiteSpec(
        poles=[
            PoleSpec(id=POLE, devices=[DeviceSpec(id=f"{POLE}-lamp", profile="lamp-controller")])
        ]
    )


def test_a_pole_is_corrected_at_most_once_per_interval() -> None:
    watch = ClockWatch(max_skew_s=60, interval_s=3600)
    t = datetime(2026, 11, 1, tzinfo=UTC)
    assert not watch.observe("P1", t + timedelta(seconds=30), t, now=0)  # within the setting
    assert watch.observe("P1", t + timedelta(minutes=10), t, now=1)
    assert not watch.observe("P1", t + timedelta(minutes=10), t, now=100)  # not again yet
    assert watch.observe("P2", t - timedelta(minutes=10), t, now=100)  # behind counts too
    assert watch.observe("P1", t + timedelta(minutes=10), t, now=3602)
    assert watch.skew["P2"] == -600


async def test_a_pole_ten_minutes_ahead_is_set_right(
    database_url: str, mqtt_url: str, topic_prefix: str
) -> None:
    await prepare_database(database_url, site())
    settings = gateway_settings(database_url, mqtt_url, topic_prefix, clock_sync_interval_s=3600.0)
    (model,) = site_models(site())
    catalog = load_catalog()
    pole = EdgeController(
        model,
        parse_mqtt_url(mqtt_url),
        prefix=topic_prefix,
        interval_s=0.2,
        rng=random.Random(1),
        profiles={d.device_id: catalog["lamp-controller"] for d in model.devices},
    )
    pole.clock_offset_s = 600.0
    stop = asyncio.Event()
    async with gateway(settings) as gw:
        task = asyncio.create_task(pole.run(stop, 0.0))
        try:
            await eventually(lambda: abs(pole.clock_offset_s) < 5, what="the pole's clock set")
            corrected_at = datetime.now(UTC)
            await asyncio.sleep(0.5)  # what was in flight is committed
            samples = gw.metrics.registry.get_sample_value
            flagged_then = samples("polegw_readings_clock_flagged_total", {"flag": "ahead"})
            await asyncio.sleep(1.5)  # a few more messages, stamped right
            flagged_now = samples("polegw_readings_clock_flagged_total", {"flag": "ahead"})
            assert flagged_then
            assert flagged_now == flagged_then, "no more flagged readings"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.api_port}") as api:
                shown = (await api.get(f"/api/v1/poles/{POLE}", headers=gw.headers)).json()
            assert abs(shown["clock_skew_s"]) < 5  # the pole's page shows it
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        sent = gw.metrics.registry.get_sample_value("polegw_clock_corrections_total")
        per_pole = gw.metrics.registry.get_sample_value(
            "polegw_pole_clock_corrections_total", {"pole": POLE}
        )
        skew = gw.metrics.registry.get_sample_value(
            "polegw_pole_clock_skew_seconds", {"pole": POLE}
        )
    assert sent == 1  # once per interval, though many messages came in 10 min ahead
    assert per_pole == 1
    assert skew is not None
    assert abs(skew) < 5  # the last messages' skew, after the correction
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT ts, quality FROM telemetry WHERE device_id = %s ORDER BY ts",
            (f"{POLE}-lamp",),
        ).fetchall()
    flagged = [ts for ts, q in rows if q & Quality.CLOCK_AHEAD]
    assert flagged, "its readings 10 minutes ahead were flagged"
    after = [q for ts, q in rows if corrected_at + timedelta(seconds=0.5) < ts < flagged[0]]
    assert after, "readings stamped after the correction arrived"
    assert not any(q & Quality.CLOCK_AHEAD for q in after)


pytestmark = pytest.mark.timeout(60)


def test_the_simulated_controller_takes_set_time_and_refuses_nonsense() -> None:
    (model,) = site_models(site())
    pole = EdgeController(
        model,
        parse_mqtt_url("mqtt://127.0.0.1:1883"),
        prefix="p",
        interval_s=1,
        rng=random.Random(1),
    )
    pole.clock_offset_s = -600.0
    now = datetime(2026, 11, 1, tzinfo=UTC)
    bad = pole.execute("controller", b'{"id": "a", "command": "set_time", "args": {}}', now)
    assert bad is not None
    assert bad["ok"] is False
    assert pole.clock_offset_s == -600.0
    unknown = pole.execute("controller", b'{"id": "b", "command": "reboot"}', now)
    assert unknown is not None
    assert unknown["ok"] is False
    body = b'{"id": "c", "command": "set_time", "args": {"epoch_ms": %d}}' % (
        int(now.timestamp() * 1000) + 1500
    )
    assert pole.execute("controller", body, now) == {"id": "c", "ok": True, "error": None}
    assert pole.clock_offset_s == 1.5
