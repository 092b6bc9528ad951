"""The simulated poles: what they publish is what the gateway accepts, and it looks real."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import aiomqtt
import orjson
import pytest

from gateway.core.decode import decode_message
from gateway.core.profiles import MetricKind, ProfileCatalog, load_catalog
from gateway.core.registry import DeviceRef, Registry
from gateway.core.site import DeviceSpec, ModbusEndpoint, PoleSpec, SiteSpec, parse_site
from gateway.errors import ConfigError
from simulators.demo_site import demo_site, site_to_yaml
from simulators.model import (
    PoleModel,
    SimConfig,
    Telemetry,
    build_events,
    build_telemetry,
    pole_model,
    site_models,
)
from simulators.mqtt_poles import BrokerAddress, parse_mqtt_url, run_poles

CST = timedelta(hours=8)  # the demo site's local time (SimConfig.utc_offset_h)
STEP = timedelta(minutes=5)
# Lively settings so that a day shows door openings, impacts and SOS calls.
LIVELY = SimConfig(event_rate=0.5, sos_rate=0.2)


@pytest.fixture(scope="module")
def catalog() -> ProfileCatalog:
    return load_catalog()


def registry_of(site: SiteSpec, catalog: ProfileCatalog) -> Registry:
    return Registry(
        [p.id for p in site.poles],
        [
            DeviceRef(d.id, p.id, catalog[d.profile], d.transport)
            for p in site.poles
            for d in p.devices
        ],
    )


def local(day: datetime, hhmm: str) -> datetime:
    """`day` at local time hh:mm, in UTC."""
    h, m = hhmm.split(":")
    return day + timedelta(hours=int(h), minutes=int(m)) - CST


def simulated_day(
    models: list[PoleModel], day: datetime
) -> Iterator[tuple[datetime, PoleModel, Telemetry]]:
    """Telemetry every 5 minutes over one local day (`day` is local midnight, naive UTC)."""
    start = local(day, "00:00")
    for k in range(288):
        now = start + k * STEP
        for model in models:
            yield now, model, build_telemetry(model, now, k + 1)


@pytest.mark.parametrize(
    "day", [datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 7, 15, tzinfo=UTC)]
)
def test_a_simulated_day_decodes_without_dead_letters(
    catalog: ProfileCatalog, day: datetime
) -> None:
    site = demo_site(3)
    registry = registry_of(site, catalog)
    models = site_models(site, seed=7, config=LIVELY)
    reported: dict[str, set[str]] = defaultdict(set)
    events: list[str] = []
    readings = 0
    for now, model, message in simulated_day(models, day):
        decoded = decode_message(
            f"poles/{model.pole_id}/telemetry", orjson.dumps(message), registry
        )
        assert decoded.dead_letters == [], decoded.dead_letters[0].detail
        readings += len(decoded.readings)
        for r in decoded.readings:
            reported[r.device_id.split("-")[1]].add(r.metric)
        for event in build_events(model, now - STEP, now):
            decoded = decode_message(f"poles/{model.pole_id}/events", orjson.dumps(event), registry)
            assert decoded.dead_letters == [], decoded.dead_letters[0].detail
            assert len(decoded.events) == 1
            events.append(event["type"])

    assert readings > 288 * 3 * 20
    by_suffix = {"lamp": "lamp-controller", "env": "env-station", "cab": "cabinet-monitor",
                 "tilt": "pole-tilt", "meter": "port-meter-4"}  # fmt: skip
    for suffix, profile in by_suffix.items():
        missing = set(catalog[profile].metrics) - reported[suffix]
        # port 4 is switched off all day: no current, so no power factor
        assert missing == ({"port4_power_factor"} if suffix == "meter" else set())
    assert {"door_open", "door_close", "impact", "sos_pressed", "sos_cleared"} <= set(events)


def test_counters_never_decrease_and_follow_the_power(catalog: ProfileCatalog) -> None:
    site = demo_site(3)
    models = site_models(site, seed=3)
    profiles = {d.id: catalog[d.profile] for p in site.poles for d in p.devices}
    first: dict[tuple[str, str], float] = {}
    last: dict[tuple[str, str], float] = {}
    for _, _, message in simulated_day(models, datetime(2026, 3, 1, tzinfo=UTC)):
        for device_id, values in message["devices"].items():
            metrics = profiles[device_id].metrics
            for name, value in values.items():
                if metrics[name].kind is not MetricKind.COUNTER:
                    continue
                key = (device_id, name)
                assert value >= last.get(key, value), f"{key} went back"
                first.setdefault(key, float(value))
                last[key] = float(value)

    for pole in site.poles:
        lamp = f"{pole.id}-lamp"
        # lit 18:00-06:30 (12.5 h, less the last 5 minutes of the day sampled), 6 h of it at 50 %
        hours = last[(lamp, "burning_hours")] - first[(lamp, "burning_hours")]
        assert hours == pytest.approx(12.5 - 5 / 60, abs=0.01)
        kwh = last[(lamp, "energy_kwh")] - first[(lamp, "energy_kwh")]
        assert kwh == pytest.approx((6.5 - 5 / 60) * 0.1 + 6 * 0.05, rel=0.05)
        meter = f"{pole.id}-meter"
        assert last[(meter, "port4_energy_kwh")] == first[(meter, "port4_energy_kwh")]
        micro_station = last[(meter, "port1_energy_kwh")] - first[(meter, "port1_energy_kwh")]
        assert 24 * 0.3 < micro_station < 24 * 0.8  # 300-800 W all day


def test_lamps_light_the_night_and_the_sun_the_day() -> None:
    (model,) = site_models(demo_site(1), seed=1)
    day = datetime(2026, 6, 1, tzinfo=UTC)

    def at(hhmm: str) -> dict[str, dict[str, float | int | bool]]:
        return build_telemetry(model, local(day, hhmm), 1)["devices"]

    for hhmm, on, dim in [("20:00", True, 100), ("02:00", True, 50), ("06:00", True, 100),
                          ("12:00", False, 0), ("16:00", False, 0)]:  # fmt: skip
        lamp = at(hhmm)["P0001-lamp"]
        assert (lamp["lamp_on"], lamp["dim_pct"]) == (on, dim), hhmm
        assert (float(lamp["power_w"]) > 0) is on
        if on:
            assert float(lamp["power_w"]) == pytest.approx(dim, rel=0.05)  # 100 W lamp
    night, noon, rush = at("02:00"), at("12:00"), at("08:00")
    assert night["P0001-env"]["illuminance_lux"] == 0
    assert 30_000 < float(noon["P0001-env"]["illuminance_lux"]) <= 55_000
    assert float(night["P0001-env"]["noise_dba"]) + 10 < float(rush["P0001-env"]["noise_dba"])
    assert (
        float(night["P0001-meter"]["port3_power_w"])
        < 10
        < float(noon["P0001-meter"]["port3_power_w"])
    )
    assert noon["P0001-cab"]["door_open"] is False
    assert float(noon["P0001-tilt"]["tilt_deg"]) < 1


def test_door_state_agrees_with_door_events() -> None:
    (model,) = site_models(demo_site(1), seed=5, config=SimConfig(event_rate=2.0))
    start = datetime(2026, 2, 1, tzinfo=UTC)
    step = timedelta(seconds=10)
    door_open = False
    changes = 0
    for k in range(1, 6 * 360):
        now = start + k * step
        for event in build_events(model, now - step, now):
            if event["device"] == "P0001-cab":
                assert event["type"] == ("door_close" if door_open else "door_open")
                door_open = not door_open
                changes += 1
        assert build_telemetry(model, now, k)["devices"]["P0001-cab"]["door_open"] is door_open
    assert changes >= 4


def test_the_same_seed_gives_the_same_pole() -> None:
    site = demo_site(2)
    now = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    one, two, other = (site_models(site, seed=s)[1] for s in (1, 1, 2))
    for k in range(3):
        t = now + k * STEP
        assert build_telemetry(one, t, k) == build_telemetry(two, t, k)
    assert build_telemetry(other, now, 0) != build_telemetry(one, now, 0)
    assert build_telemetry(one, now, 9)["ts"] == "2026-05-04T03:02:01.000Z"


def test_only_devices_on_the_simulated_transport_are_modelled() -> None:
    modbus = ModbusEndpoint(host="127.0.0.1", port=15020, unit=3)
    mixed = PoleSpec(
        id="P1",
        devices=[
            DeviceSpec(id="P1-lamp", profile="lamp-controller"),
            DeviceSpec(id="P1-meter", profile="port-meter-4", transport="modbus", modbus=modbus),
            DeviceSpec(id="P1-cam", profile="no-such-model"),
        ],
    )
    modbus_only = PoleSpec(
        id="P2",
        devices=[
            DeviceSpec(id="P2-meter", profile="port-meter-4", transport="modbus", modbus=modbus)
        ],
    )
    assert [d.device_id for d in pole_model(mixed).devices] == ["P1-lamp"]
    assert [d.device_id for d in pole_model(mixed, transport=None).devices] == [
        "P1-lamp",
        "P1-meter",
    ]
    site = SiteSpec(poles=[mixed, modbus_only])
    assert [m.pole_id for m in site_models(site)] == ["P1"]
    assert [m.pole_id for m in site_models(site, transport="modbus")] == ["P1", "P2"]


def test_demo_site_shape() -> None:
    site = demo_site(20)
    assert [t.id for t in site.tenants] == ["tn-telecom", "tn-police"]
    assert [p.id for p in site.poles] == [f"P{n:04d}" for n in range(1, 21)]
    assert len({p.road for p in site.poles}) == 3
    kinds = [d.id.split("-")[1] for p in site.poles for d in p.devices]
    assert (kinds.count("lamp"), kinds.count("env"), kinds.count("sos")) == (20, 10, 4)
    assert all(p.height_m is not None and 10 <= p.height_m <= 12 for p in site.poles)
    a, b = site.poles[0].location, site.poles[1].location
    assert a is not None
    assert b is not None
    assert (b.lat - a.lat) * 111_320 == pytest.approx(40, abs=0.5)
    assert demo_site(0).poles == []


def test_site_yaml_round_trips(catalog: ProfileCatalog) -> None:
    site = demo_site(20)
    assert parse_site(site_to_yaml(site), "demo.yaml", catalog) == site
    endpoint = ModbusEndpoint(host="10.0.0.5", port=502, unit=7, framer="rtu")
    pole = PoleSpec(
        id="P9",
        devices=[
            DeviceSpec(id="P9-m", profile="port-meter-4", transport="modbus", modbus=endpoint)
        ],
    )
    with_modbus = SiteSpec(poles=[pole])
    assert parse_site(site_to_yaml(with_modbus), "m.yaml", catalog) == with_modbus


def test_mqtt_urls() -> None:
    assert parse_mqtt_url("mqtt://127.0.0.1") == BrokerAddress("127.0.0.1", 1883)
    assert parse_mqtt_url("mqtts://u%40x:p%3Aw@broker.example:8884") == BrokerAddress(
        "broker.example", 8884, "u@x", "p:w", tls=True
    )
    assert parse_mqtt_url("mqtts://broker.example").port == 8883
    for bad in ("http://x", "mqtt://", "mqtt://host:notaport"):
        with pytest.raises(ConfigError):
            parse_mqtt_url(bad)


# --- against the real broker -----------------------------------------------------------


def _client(broker: BrokerAddress) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.username,
        password=broker.password,
        tls_context=ssl.create_default_context() if broker.tls else None,
    )


async def _retained_status(
    broker: BrokerAddress, prefix: str, poles: int
) -> dict[str, dict[str, str]]:
    """What a newcomer learns from the retained status messages."""
    found: dict[str, dict[str, str]] = {}
    async with _client(broker) as client:
        await client.subscribe(f"{prefix}/+/status", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                async for message in client.messages:
                    assert message.retain
                    assert isinstance(message.payload, bytes)
                    found[message.topic.value.split("/")[-2]] = orjson.loads(message.payload)
                    if len(found) == poles:
                        break
    return found


def tagged(site: SiteSpec, tag: str) -> SiteSpec:
    """The site with every pole and device id prefixed by `tag`: the simulator's client ids
    (polegw-sim-{pole}) then collide with no other run on the shared broker."""
    data = site.model_dump()
    for pole in data["poles"]:
        pole["id"] = f"{tag}-{pole['id']}"
        for device in pole["devices"]:
            device["id"] = f"{tag}-{device['id']}"
    return SiteSpec.model_validate(data)


async def test_poles_publish_telemetry_and_presence(
    catalog: ProfileCatalog, mqtt_url: str, topic_prefix: str
) -> None:
    site = tagged(demo_site(2), topic_prefix.split("/")[0])
    ids = [p.id for p in site.poles]
    registry = registry_of(site, catalog)
    broker = parse_mqtt_url(mqtt_url)
    live: list[tuple[str, bytes]] = []
    stop = asyncio.Event()
    try:
        async with _client(broker) as listener:
            await listener.subscribe(f"{topic_prefix}/#", qos=1)

            async def listen() -> None:
                async for message in listener.messages:
                    assert isinstance(message.payload, bytes)
                    live.append((message.topic.value, message.payload))

            listening = asyncio.create_task(listen(), name="test-listener")
            runner = asyncio.create_task(
                run_poles(site, mqtt_url, prefix=topic_prefix, interval_s=0.2, stop=stop),
                name="test-run-poles",
            )
            await asyncio.sleep(1.5)
            online = await _retained_status(broker, topic_prefix, 2)
            stop.set()
            async with asyncio.timeout(10):
                await runner
            await asyncio.sleep(0.3)
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening
        offline = await _retained_status(broker, topic_prefix, 2)
    finally:
        stop.set()
        async with _client(broker) as cleaner:  # leave no retained messages behind
            for pole in site.poles:
                await cleaner.publish(f"{topic_prefix}/{pole.id}/status", b"", qos=1, retain=True)

    assert {p: s["state"] for p, s in online.items()} == dict.fromkeys(ids, "online")
    assert {p: s["state"] for p, s in offline.items()} == dict.fromkeys(ids, "offline")
    for pole in site.poles:
        mine = [(t.rsplit("/", 1)[1], p) for t, p in live if t.split("/")[-2] == pole.id]
        kinds = [kind for kind, _ in mine]
        assert (kinds[0], kinds[-1]) == ("status", "status")
        assert [orjson.loads(p)["state"] for k, p in mine if k == "status"] == ["online", "offline"]
        batches = [orjson.loads(p) for k, p in mine if k == "telemetry"]
        assert len(batches) >= 4
        assert [b["seq"] for b in batches] == list(range(1, len(batches) + 1))
        expected = {d.id for d in pole.devices if d.profile != "sos-button"}
        for kind, payload in mine:
            topic = f"{topic_prefix}/{pole.id}/{kind}"
            decoded = decode_message(topic, payload, registry, prefix=topic_prefix)
            assert decoded.dead_letters == []
            if kind == "telemetry":
                assert set(orjson.loads(payload)["devices"]) == expected
                assert len(decoded.readings) > 40
