"""Lighting against a real database: the API, the energy report, and the dispatcher
surviving restarts in the middle of the night (fake clock, fake command dispatcher)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.lighting_store import LightingStore
from gateway.api.security import _audit_trail
from gateway.config import Settings
from gateway.core.lighting import sun_time
from gateway.core.profiles import ArgValue, load_catalog
from gateway.core.registry import DeviceRef, Registry
from gateway.core.site import DeviceSpec, Location, PoleSpec, SiteSpec
from gateway.lighting import LightingDispatcher, SiteDefaults
from tests.support import api_client, auth_headers, dependency_calls, opened_pool, prepare_database
from tests.test_auth import v1_routes

SH = ZoneInfo("Asia/Shanghai")
LAT, LON = 30.66, 104.07  # Chengdu
ROAD = "Renmin Rd"
NIGHTLY = {
    "rules": [
        {
            "steps": [
                {"at": "dusk", "level": 100},
                {"at": "23:00", "level": 60},
                {"at": "01:00", "level": 40},
                {"at": "dawn", "level": 0},
            ]
        }
    ]
}


def site() -> SiteSpec:
    poles = [
        PoleSpec(
            id=f"P{i}",
            road=ROAD if i < 3 else "Other Rd",
            location=Location(lat=LAT, lon=LON),
            devices=[
                DeviceSpec(id=f"P{i}-lamp", profile="lamp-controller"),
                DeviceSpec(id=f"P{i}-env", profile="env-station"),
            ],
        )
        for i in range(1, 4)
    ]
    return SiteSpec(poles=poles)


def local(d: int, h: int, mi: int = 0) -> datetime:
    """2026-11-{d} h:mi in Asia/Shanghai, as UTC."""
    return datetime(2026, 11, d, h, mi, tzinfo=SH).astimezone(UTC)


@pytest.fixture
async def pool(fresh_database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    await prepare_database(fresh_database_url, site())
    async with opened_pool(fresh_database_url) as pool:
        yield pool


@pytest.fixture
async def api(
    fresh_database_url: str, pool: AsyncConnectionPool
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url=fresh_database_url, lighting_rated_w=150.0)
    headers = auth_headers(fresh_database_url, "operator")
    async with api_client(settings, pool, headers=headers) as client:
        yield client


def test_every_write_route_takes_audit() -> None:
    writes = [
        (method, path, route)
        for method, path, route in v1_routes()
        if path.startswith("/api/v1/lighting") and method not in ("GET", "HEAD")
    ]
    assert len(writes) >= 7
    for method, path, route in writes:
        assert _audit_trail in dependency_calls(route.dependant), (method, path)
        assert route.summary, (method, path)


async def test_groups_schedules_overrides_and_audit(
    api: httpx.AsyncClient, fresh_database_url: str
) -> None:
    # Groups: by road, by pole, errors naming the field.
    made = await api.post(
        "/api/v1/lighting/groups", json={"id": "renmin", "name": "Renmin", "road": ROAD}
    )
    assert made.status_code == 201, made.text
    dup = await api.post(
        "/api/v1/lighting/groups", json={"id": "renmin", "name": "x", "road": ROAD}
    )
    assert dup.status_code == 409
    bad = await api.post(
        "/api/v1/lighting/groups", json={"id": "g2", "name": "x", "poles": ["NOPE"]}
    )
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "poles"]
    assert (
        await api.post("/api/v1/lighting/groups", json={"id": "p3", "name": "P3", "poles": ["P3"]})
    ).status_code == 201
    page = (await api.get("/api/v1/lighting/groups", params={"limit": 1})).json()
    assert [g["id"] for g in page["items"]] == ["p3"]
    page = (await api.get("/api/v1/lighting/groups", params={"after": page["next"]})).json()
    assert [g["id"] for g in page["items"]] == ["renmin"]
    assert (await api.get("/api/v1/lighting/groups/nope")).status_code == 404
    updated = await api.put(
        "/api/v1/lighting/groups/p3", json={"name": "P3 lamp", "devices": ["P3-lamp"]}
    )
    assert updated.json()["devices"] == ["P3-lamp"]
    assert updated.json()["poles"] == []

    # Schedule: invalid steps name the field; a valid one shows the next 24 h.
    bad = await api.put(
        "/api/v1/lighting/groups/renmin/schedule",
        json={"rules": [{"steps": [{"at": "dusk+999", "level": 50}]}]},
    )
    assert bad.status_code == 422
    assert "at" in bad.json()["detail"][0]["loc"]
    assert (await api.put("/api/v1/lighting/groups/nope/schedule", json=NIGHTLY)).status_code == 404
    put = await api.put("/api/v1/lighting/groups/renmin/schedule", json=NIGHTLY)
    assert put.status_code == 200, put.text
    body = put.json()
    assert body["site"] == {
        "lat": pytest.approx(LAT),
        "lon": pytest.approx(LON),
        "timezone": "Asia/Shanghai",
    }
    upcoming = body["upcoming"]
    # Within 24 h: the schedule's start (current level), then the four steps (one may
    # fall just beyond 24 h); never out of order.
    assert 4 <= len(upcoming) <= 5
    assert upcoming[0]["source"] == "schedule-start"
    times = [datetime.fromisoformat(s["at"]) for s in upcoming]
    assert times == sorted(times)
    assert {s["level"] for s in upcoming[1:]} <= {100, 60, 40, 0}
    listed = (await api.get("/api/v1/lighting/schedules")).json()["items"]
    assert [s["group_id"] for s in listed] == ["renmin"]

    # Override: wins at once, listed, ended early.
    until = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    bad = await api.post(
        "/api/v1/lighting/groups/renmin/overrides", json={"level": 101, "until": until}
    )
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "level"]
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    bad = await api.post(
        "/api/v1/lighting/groups/renmin/overrides", json={"level": 10, "until": past}
    )
    assert bad.json()["detail"][0]["loc"] == ["body", "until"]
    ov = await api.post(
        "/api/v1/lighting/groups/renmin/overrides",
        json={"level": 100, "until": until, "reason": "fair"},
    )
    assert ov.status_code == 201, ov.text
    oid = ov.json()["id"]
    sched = (await api.get("/api/v1/lighting/groups/renmin/schedule")).json()
    assert any(s["source"] == "override-end" for s in sched["upcoming"])
    active = (
        await api.get("/api/v1/lighting/groups/renmin/overrides", params={"active": True})
    ).json()
    assert [o["id"] for o in active["items"]] == [oid]
    ended = await api.delete(f"/api/v1/lighting/groups/renmin/overrides/{oid}")
    assert ended.status_code == 200
    assert ended.json()["ended_early_at"] is not None
    active = (
        await api.get("/api/v1/lighting/groups/renmin/overrides", params={"active": True})
    ).json()
    assert active["items"] == []
    assert (await api.delete("/api/v1/lighting/groups/renmin/overrides/999")).status_code == 404

    # A maintainer may read but not write.
    maint = auth_headers(fresh_database_url, "maintainer")
    assert (await api.get("/api/v1/lighting/groups", headers=maint)).status_code == 200
    assert (
        await api.put("/api/v1/lighting/groups/renmin/schedule", json=NIGHTLY, headers=maint)
    ).status_code == 403

    # Every write is in the audit log.
    with psycopg.connect(fresh_database_url) as conn:
        actions = conn.execute(
            "SELECT action, resource FROM audit_log WHERE resource LIKE 'lighting%' ORDER BY id"
        ).fetchall()
    assert actions == [
        ("create", "lighting_group"),
        ("create", "lighting_group"),
        ("update", "lighting_group"),
        ("update", "lighting_schedule"),
        ("create", "lighting_override"),
        ("end", "lighting_override"),
    ]
    assert (await api.delete("/api/v1/lighting/groups/p3")).status_code == 204
    assert (await api.get("/api/v1/lighting/groups/p3")).status_code == 404


async def test_energy_report(api: httpx.AsyncClient, fresh_database_url: str) -> None:
    await api.post("/api/v1/lighting/groups", json={"id": "renmin", "name": "R", "road": ROAD})
    t0 = datetime(2026, 11, 22, 10, tzinfo=UTC)
    copy_sql = "COPY telemetry (ts, device_id, metric, value) FROM STDIN"
    with psycopg.connect(fresh_database_url) as conn, conn.cursor().copy(copy_sql) as copy:
        for minute in range(0, 10 * 60 + 1, 10):  # 10 hours, every 10 minutes
            ts = t0 + timedelta(minutes=minute)
            # P1: lit for 10 h at 60 W (its peak 120 W seen once): 0.6 kWh used.
            copy.write_row((ts, "P1-lamp", "lamp_on", 1.0))
            copy.write_row((ts, "P1-lamp", "energy_kwh", 100 + 0.06 * minute / 60))
            copy.write_row((ts, "P1-lamp", "power_w", 120.0 if minute == 0 else 60.0))
            # P2: lit 5 h, no power readings (default 150 W), 0.5 kWh.
            copy.write_row((ts, "P2-lamp", "lamp_on", float(minute < 300)))
            copy.write_row((ts, "P2-lamp", "energy_kwh", 5 + 0.1 * min(minute, 300) / 60))
            # P3 is on another road: not counted.
            copy.write_row((ts, "P3-lamp", "energy_kwh", 1000 + minute))
    end = t0 + timedelta(hours=10)
    got = await api.get(
        "/api/v1/lighting/groups/renmin/energy",
        params={"start": t0.isoformat(), "end": end.isoformat()},
    )
    assert got.status_code == 200, got.text
    body = got.json()
    lamps = {lamp["device_id"]: lamp for lamp in body["lamps"]}
    assert set(lamps) == {"P1-lamp", "P2-lamp"}
    assert lamps["P1-lamp"]["used_kwh"] == pytest.approx(0.6)
    assert lamps["P1-lamp"]["lit_hours"] == pytest.approx(10)
    assert (lamps["P1-lamp"]["rated_w"], lamps["P1-lamp"]["rated_from"]) == (120, "peak_observed")
    assert lamps["P2-lamp"]["lit_hours"] == pytest.approx(5)
    assert (lamps["P2-lamp"]["rated_w"], lamps["P2-lamp"]["rated_from"]) == (150, "default")
    assert body["used_kwh"] == pytest.approx(1.1)
    assert body["baseline_kwh"] == pytest.approx(1.2 + 0.75)
    assert body["saved_kwh"] == pytest.approx(1.95 - 1.1)
    bad = await api.get(
        "/api/v1/lighting/groups/renmin/energy",
        params={"start": end.isoformat(), "end": t0.isoformat()},
    )
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "end"]
    assert (
        await api.get(
            "/api/v1/lighting/groups/nope/energy",
            params={"start": t0.isoformat(), "end": end.isoformat()},
        )
    ).status_code == 404


# --------------------------------------------------------------------------- dispatcher


@dataclass
class FakeCommands:
    """Stands in for CommandDispatcher: records what would be sent, and when."""

    clock: list[datetime]
    sent: list[tuple[datetime, str, str, dict[str, ArgValue]]] = field(default_factory=list)

    async def submit(
        self, device: DeviceRef, name: str, args: dict[str, ArgValue]
    ) -> dict[str, Any]:
        self.sent.append((self.clock[0], device.id, name, dict(args)))
        return {"id": uuid.uuid4()}

    def levels(self, device: str = "P1-lamp") -> list[tuple[datetime, object]]:
        out: list[tuple[datetime, object]] = []
        for at, dev, name, args in self.sent:
            if dev != device or name == "switch_on":
                continue
            out.append((at, 0 if name == "switch_off" else args["pct"]))
        return out


def registry() -> Registry:
    lamp = load_catalog()["lamp-controller"]
    env = load_catalog()["env-station"]
    devices = [DeviceRef(f"P{i}-lamp", f"P{i}", lamp) for i in range(1, 4)]
    devices += [DeviceRef(f"P{i}-env", f"P{i}", env) for i in range(1, 4)]
    return Registry([f"P{i}" for i in range(1, 4)], devices)


def dispatcher(
    pool: AsyncConnectionPool, clock: list[datetime], fake: FakeCommands
) -> LightingDispatcher:
    """A new dispatcher instance: what a restarted gateway builds."""
    return LightingDispatcher(
        pool=pool,
        registry=registry,
        commands=fake,
        defaults=SiteDefaults(39.9, 116.4, "Asia/Shanghai"),
        clock=lambda: clock[0],
    )


async def _setup_group(pool: AsyncConnectionPool) -> None:
    store = LightingStore(pool)
    async with pool.connection() as conn, conn.transaction():
        await store.save_group(conn, "renmin", "Renmin", ROAD, [], [], create=True)
        await store.put_schedule(conn, "renmin", NIGHTLY, local(20, 12), "test")


DUSK = sun_time(LAT, LON, datetime(2026, 11, 22).date(), "dusk", SH)
DAWN = sun_time(LAT, LON, datetime(2026, 11, 23).date(), "dawn", SH)


async def test_dispatcher_restarts_neither_skip_nor_repeat(pool: AsyncConnectionPool) -> None:
    assert DUSK is not None
    assert DAWN is not None
    await _setup_group(pool)
    clock = [local(22, 12)]
    fake = FakeCommands(clock)

    # First run from noon: applies the current level (off since this morning's dawn),
    # then wakes at dusk and at 23:00.
    first = dispatcher(pool, clock, fake)
    nxt = await first.tick()
    assert nxt == DUSK  # it will sleep until dusk, not poll
    clock[0] = DUSK
    assert await first.tick() == local(22, 23)
    clock[0] = local(22, 23)
    await first.tick()
    # Crash. A new instance at 00:30: nothing new is due, nothing repeated.
    clock[0] = local(23, 0, 30)
    second = dispatcher(pool, clock, fake)
    assert await second.tick() == local(23, 1)
    # 01:00 applies once, even with two ticks (another wake-up at the same time).
    clock[0] = local(23, 1)
    await second.tick()
    await second.tick()
    # Crash again; down until after dawn: only "off" is applied when it comes back.
    clock[0] = DAWN + timedelta(minutes=30)
    third = dispatcher(pool, clock, fake)
    await third.tick()

    assert fake.levels() == [
        (local(22, 12), 0),
        (DUSK, 100),
        (local(22, 23), 60),
        (local(23, 1), 40),
        (DAWN + timedelta(minutes=30), 0),
    ]
    # Every lamp of the road (P1, P2; not P3 nor the env stations) gets every step.
    assert fake.levels("P2-lamp") == fake.levels()
    assert fake.levels("P3-lamp") == []
    assert {dev for _, dev, _, _ in fake.sent} == {"P1-lamp", "P2-lamp"}
    # Switched on (before dimming) only when coming from off.
    names = [name for _, dev, name, _ in fake.sent if dev == "P1-lamp"]
    assert names == ["switch_off", "switch_on", "set_dim", "set_dim", "set_dim", "switch_off"]
    # Each step is recorded once with its command ids.
    rows = await LightingStore(pool).dispatches("renmin", before=None, limit=100)
    assert [r["level"] for r in reversed(rows)] == [0, 100, 60, 40, 0]
    assert all(r["issued_at"] is not None and len(r["commands"]) >= 2 for r in rows)


async def test_a_long_outage_applies_only_the_current_level(pool: AsyncConnectionPool) -> None:
    assert DUSK is not None
    await _setup_group(pool)
    clock = [DUSK]
    fake = FakeCommands(clock)
    await dispatcher(pool, clock, fake).tick()
    # Down from just after dusk to 01:30: 23:00 (60) is not replayed, 40 applies.
    clock[0] = local(23, 1, 30)
    await dispatcher(pool, clock, fake).tick()
    assert fake.levels() == [(DUSK, 100), (local(23, 1, 30), 40)]


async def test_a_step_claimed_but_not_issued_is_issued_after_a_restart(
    pool: AsyncConnectionPool,
) -> None:
    await _setup_group(pool)
    store = LightingStore(pool)
    # A run claimed 23:00 and died before sending anything.
    assert await store.claim("renmin", local(22, 23), 60, "schedule")
    assert not await store.claim("renmin", local(22, 23), 60, "schedule")  # once only
    assert not await store.claim("renmin", local(22, 22), 80, "schedule")  # nor older
    clock = [local(22, 23, 20)]
    fake = FakeCommands(clock)
    await dispatcher(pool, clock, fake).tick()
    assert fake.levels() == [(local(22, 23, 20), 60)]
    await dispatcher(pool, clock, fake).tick()  # and only once
    assert len(fake.levels()) == 1


async def test_run_wakes_for_an_override_and_stops(pool: AsyncConnectionPool) -> None:
    await _setup_group(pool)
    clock = [local(22, 23, 30)]
    fake = FakeCommands(clock)
    d = dispatcher(pool, clock, fake)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    for _ in range(50):
        if fake.sent:
            break
        await asyncio.sleep(0.05)
    assert fake.levels() == [(local(22, 23, 30), 60)]
    # An operator's override (written by the API), then a poke: applied at once.
    async with pool.connection() as conn, conn.transaction():
        await LightingStore(pool).add_override(
            conn, "renmin", 100, local(22, 23, 31), local(23, 2), "event", "test"
        )
    clock[0] = local(22, 23, 31)
    d.poke()
    for _ in range(50):
        if len(fake.levels()) == 2:
            break
        await asyncio.sleep(0.05)
    assert fake.levels()[-1] == (local(22, 23, 31), 100)
    stop.set()
    async with asyncio.timeout(5):
        await task
