"""Alarms and emergencies against the real database: the store (one open alarm per
rule and device, listeners in the transaction, door-open suppression), the runner's
override reload, and the /alarms and /emergencies routes (auth, audit, 404/409/422)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.alarm_store import AlarmStore
from gateway.alarming import AlarmRunner
from gateway.api.security import _audit_trail
from gateway.config import Settings
from gateway.core.alarms import AlarmEngine, Target, compile_rules
from gateway.core.auth import Role
from gateway.core.profiles import load_catalog
from gateway.core.readings import DeviceEvent, Reading
from gateway.core.registry import Registry
from gateway.ops_events import AlarmEvent
from tests.support import (
    api_client,
    api_routes,
    auth_headers,
    count,
    dependency_calls,
)

CATALOG = load_catalog()
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
TARGETS = {
    f"{p}-cab": Target(f"{p}-cab", p, "cabinet-monitor") for p in ("P0001", "P0002", "P0003")
}


class Recorder:
    """A listener that records what it is told and writes in the alarm's transaction."""

    def __init__(self) -> None:
        self.raised: list[AlarmEvent] = []
        self.cleared: list[AlarmEvent] = []

    async def alarm_raised(self, conn: psycopg.AsyncConnection[Any], alarm: AlarmEvent) -> None:
        self.raised.append(alarm)

    async def alarm_cleared(self, conn: psycopg.AsyncConnection[Any], alarm: AlarmEvent) -> None:
        self.cleared.append(alarm)


@pytest.fixture(scope="module")
async def api(database_url: str, pool: AsyncConnectionPool) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url=database_url)
    async with api_client(
        settings, pool, base_url="http://test", headers=auth_headers(database_url)
    ) as client:
        yield client


def engine() -> AlarmEngine:
    return AlarmEngine(compile_rules(CATALOG)[0])


async def test_store_keeps_one_open_alarm_and_calls_listeners(
    pool: AsyncConnectionPool, database_url: str
) -> None:
    recorder = Recorder()
    store = AlarmStore(pool, listeners=[recorder])
    e = engine()
    hot = [Reading(T0 + timedelta(seconds=10 * i), "P0001-cab", "temp_c", 70.0) for i in range(8)]
    await store.apply(e.readings(hot, TARGETS.get, T0))
    rows = await store.page(device="P0001-cab")
    assert len(rows) == 1
    alarm = rows[0]
    assert alarm["state"] == "active"
    assert alarm["rule_key"] == "cabinet-monitor/over_temperature"
    assert alarm["severity"] == "major"
    assert alarm["value"] == 70.0
    assert alarm["pole_id"] == "P0001"
    assert alarm["first_seen"] == T0 + timedelta(seconds=60)
    assert alarm["last_seen"] == T0 + timedelta(seconds=70)
    assert [a.alarm_id for a in recorder.raised] == [alarm["id"]]
    # A second engine (a restart without priming) raising again: the same row, count 2.
    await store.apply(engine().readings(hot, TARGETS.get, T0))
    rows = await store.page(device="P0001-cab")
    assert len(rows) == 1
    assert rows[0]["count"] == 2
    assert len(recorder.raised) == 1  # not a new alarm
    # The open alarm is what a restarted engine primes from.
    assert ("cabinet-monitor/over_temperature", "P0001-cab") in await store.open_keys()
    # Cooling: cleared, kept for history; the listener hears it.
    cool = [Reading(T0 + timedelta(seconds=100), "P0001-cab", "temp_c", 40.0)]
    await store.apply(e.readings(cool, TARGETS.get, T0))
    row = (await store.page(device="P0001-cab"))[0]
    assert row["state"] == "cleared"
    assert row["cleared_at"] is not None
    assert [a.state for a in recorder.cleared] == ["cleared"]
    # Hot again: a new alarm, the old one stays cleared.
    again = [
        Reading(T0 + timedelta(seconds=200 + 10 * i), "P0001-cab", "temp_c", 70.0) for i in range(7)
    ]
    await store.apply(e.readings(again, TARGETS.get, T0))
    states = [r["state"] for r in await store.page(device="P0001-cab")]
    assert states == ["active", "cleared"]
    # The partial unique index: a second open row for (rule, device) is refused.
    with pytest.raises(psycopg.errors.UniqueViolation), psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO alarms (rule_key, fault, severity, pole_id, device_id, first_seen,"
            " last_seen) VALUES ('cabinet-monitor/over_temperature', 'x', 'major', 'P0001',"
            " 'P0001-cab', now(), now())"
        )


async def test_door_open_suppressed_while_a_work_order_is_open(pool: AsyncConnectionPool) -> None:
    asked: list[str] = []

    async def has_work_order(conn: psycopg.AsyncConnection[Any], pole_id: str) -> bool:
        asked.append(pole_id)
        return pole_id == "P0002"

    store = AlarmStore(pool, suppress=has_work_order)
    e = engine()
    events = [
        DeviceEvent(T0, "P0002", "P0002-cab", "door_open", {}),
        DeviceEvent(T0, "P0003", "P0003-cab", "door_open", {}),
    ]
    await store.apply(e.events(events, TARGETS.get, T0))
    assert sorted(asked) == ["P0002", "P0003"]
    assert await store.page(device="P0002-cab", state="active") == []
    opened = await store.page(device="P0003-cab", state="active")
    assert [r["fault"] for r in opened] == ["door_open"]
    assert opened[0]["message"] == "Cabinet door open without an open work order"


async def test_alarm_routes_filter_page_and_ack(
    api: httpx.AsyncClient, pool: AsyncConnectionPool, database_url: str
) -> None:
    store = AlarmStore(pool)
    e = engine()
    smoke = [Reading(T0, f"{p}-cab", "smoke_detected", 1.0) for p in ("P0001", "P0002", "P0003")]
    await store.apply(e.readings(smoke, TARGETS.get, T0))

    got = await api.get("/api/v1/alarms", params={"severity": "critical", "limit": 2})
    assert got.status_code == 200, got.text
    page = got.json()
    assert len(page["items"]) == 2
    assert page["next"]
    rest = (
        await api.get("/api/v1/alarms", params={"severity": "critical", "after": page["next"]})
    ).json()
    ids = [a["id"] for a in page["items"] + rest["items"]]
    assert len(ids) == 3 == len(set(ids))
    assert ids == sorted(ids, reverse=True)
    one = (await api.get("/api/v1/alarms", params={"pole": "P0002", "severity": "critical"})).json()
    assert [a["device_id"] for a in one["items"]] == ["P0002-cab"]
    assert (await api.get("/api/v1/alarms", params={"since": "2030-01-01T00:00:00Z"})).json()[
        "items"
    ] == []
    naive = await api.get("/api/v1/alarms", params={"since": "2026-01-01T00:00:00"})
    assert naive.status_code == 422
    assert naive.json()["detail"][0]["loc"] == ["query", "since"]
    bad_state = await api.get("/api/v1/alarms", params={"state": "sleeping"})
    assert bad_state.status_code == 422

    alarm_id = one["items"][0]["id"]
    maintainer = auth_headers(database_url, Role.MAINTAINER)
    acked = await api.post(f"/api/v1/alarms/{alarm_id}/ack", headers=maintainer)
    assert acked.status_code == 200, acked.text
    body = acked.json()
    assert body["state"] == "acknowledged"
    assert body["acknowledged_by"].startswith("maintainer-")
    again = await api.post(f"/api/v1/alarms/{alarm_id}/ack", headers=maintainer)
    assert again.status_code == 409
    assert again.json()["detail"]["state"] == "acknowledged"
    assert (await api.post("/api/v1/alarms/999999/ack")).status_code == 404
    assert (await api.get("/api/v1/alarms/999999")).status_code == 404
    assert (await api.get(f"/api/v1/alarms/{alarm_id}")).json()["state"] == "acknowledged"
    assert (
        count(
            database_url,
            "SELECT count(*) FROM audit_log WHERE action = 'acknowledge' AND resource = 'alarm'"
            " AND resource_id = %s",
            str(alarm_id),
        )
        == 1
    )
    # An acknowledged alarm still clears when the condition ends; a cleared one cannot be acked.
    dry = [Reading(T0 + timedelta(seconds=5), "P0002-cab", "smoke_detected", 0.0)]
    await store.apply(e.readings(dry, TARGETS.get, T0))
    assert (await api.get(f"/api/v1/alarms/{alarm_id}")).json()["state"] == "cleared"
    assert (await api.post(f"/api/v1/alarms/{alarm_id}/ack")).status_code == 409
    tenant = auth_headers(database_url, Role.TENANT, tenant="tn-telecom")
    assert (await api.get("/api/v1/alarms", headers=tenant)).status_code == 403


async def test_rule_overrides(
    api: httpx.AsyncClient, pool: AsyncConnectionPool, database_url: str
) -> None:
    rules = (await api.get("/api/v1/alarms/rules")).json()
    by_key = {r["key"]: r for r in rules}
    temp = by_key["cabinet-monitor/over_temperature"]
    assert (temp["limit"], temp["clear"], temp["for_s"]) == (60, 55, 60)
    assert by_key["sos-button/sos"]["emergency"] == "sos_call"
    assert by_key["pole-tilt/offline"]["after_intervals"] == 3

    key = "cabinet-monitor/over_temperature"
    put = await api.put(f"/api/v1/alarms/rules/{key}", json={"above": 65, "severity": "critical"})
    assert put.status_code == 200, put.text
    # the clear level it did not give stays the profile's (issue 16, item 9)
    assert (put.json()["limit"], put.json()["clear"], put.json()["severity"]) == (
        65,
        55,
        "critical",
    )
    listed = {r["key"]: r for r in (await api.get("/api/v1/alarms/rules")).json()}
    assert listed[key]["limit"] == 65
    assert listed[key]["override"] == {
        "above": 65,
        "severity": "critical",
    }

    unfit = await api.put(f"/api/v1/alarms/rules/{key}", json={"above": 50})
    assert unfit.status_code == 422
    assert unfit.json()["detail"][0]["loc"] == ["body", "clear_below"]
    bad = await api.put(f"/api/v1/alarms/rules/{key}", json={"clear_below": 70})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "clear_below"]
    offline = await api.put("/api/v1/alarms/rules/cabinet-monitor/offline", json={"above": 3})
    assert offline.status_code == 422
    assert offline.json()["detail"][0]["loc"] == ["body", "above"]
    assert (await api.put("/api/v1/alarms/rules/cabinet-monitor/nope", json={})).status_code == 404
    maintainer = auth_headers(database_url, Role.MAINTAINER)
    denied = await api.put(f"/api/v1/alarms/rules/{key}", json={"above": 1}, headers=maintainer)
    assert denied.status_code == 403

    # The running engine picks the override up on reload.
    runner = AlarmRunner(
        pool=pool, store=AlarmStore(pool), catalog=CATALOG, registry=lambda: Registry((), ())
    )
    before = runner.engine.rule(key)
    assert before is not None
    assert before.limit == 60
    await runner.reload()
    rule = runner.engine.rule(key)
    assert rule is not None
    assert (rule.limit, rule.severity) == (65, "critical")

    gone = await api.delete(f"/api/v1/alarms/rules/{key}")
    assert gone.status_code == 200
    assert gone.json()["limit"] == 60
    assert gone.json()["override"] is None
    assert (await api.delete(f"/api/v1/alarms/rules/{key}")).status_code == 404
    assert count(database_url, "SELECT count(*) FROM audit_log WHERE resource = 'alarm_rule'") == 2


async def test_emergency_lifecycle_by_hand(
    api: httpx.AsyncClient, pool: AsyncConnectionPool, database_url: str
) -> None:
    new = {
        "type": "severe_weather",
        "title": "Typhoon",
        "description": "Level II",
        "pole_id": "P0003",
    }
    made = await api.post("/api/v1/emergencies", json=new)
    assert made.status_code == 201, made.text
    em = made.json()
    assert em["state"] == "open"
    assert [e["kind"] for e in em["timeline"]] == ["raised"]
    dup = await api.post("/api/v1/emergencies", json=new)
    assert dup.status_code == 409
    no_pole = await api.post("/api/v1/emergencies", json={**new, "pole_id": "P9999"})
    assert no_pole.status_code == 422
    assert no_pole.json()["detail"][0]["loc"] == ["body", "pole_id"]
    eid = em["id"]

    maintainer = auth_headers(database_url, Role.MAINTAINER)
    entry = await api.post(
        f"/api/v1/emergencies/{eid}/timeline",
        json={"kind": "dispatched", "text": "Crew 2 sent"},
        headers=maintainer,
    )
    assert entry.status_code == 201, entry.text
    assert entry.json()["author"].startswith("maintainer-")
    # Maintainers may not change the emergency's state.
    denied = await api.post(
        f"/api/v1/emergencies/{eid}/resolve", json={"text": "x"}, headers=maintainer
    )
    assert denied.status_code == 403
    early = await api.post(f"/api/v1/emergencies/{eid}/close", json={"report": "done"})
    assert early.status_code == 409
    assert early.json()["detail"]["state"] == "open"

    alarm_id = (await AlarmStore(pool).page(limit=1))[0]["id"]
    linked = await api.post(
        f"/api/v1/emergencies/{eid}/links", json={"alarm_ids": [alarm_id], "work_order_ids": [42]}
    )
    assert linked.status_code == 200, linked.text
    assert linked.json()["alarm_ids"] == [alarm_id]
    assert linked.json()["work_order_ids"] == [42]
    missing = await api.post(f"/api/v1/emergencies/{eid}/links", json={"alarm_ids": [999999]})
    assert missing.status_code == 422

    resolved = await api.post(f"/api/v1/emergencies/{eid}/resolve", json={"text": "Storm passed"})
    assert resolved.status_code == 200
    assert resolved.json()["state"] == "resolved"
    closed = await api.post(f"/api/v1/emergencies/{eid}/close", json={"report": "No damage."})
    assert closed.status_code == 200
    done = closed.json()
    assert done["state"] == "closed"
    assert done["report"] == "No damage."
    assert [e["kind"] for e in done["timeline"]] == ["raised", "dispatched", "resolved", "closed"]
    late = await api.post(f"/api/v1/emergencies/{eid}/timeline", json={"kind": "note", "text": "x"})
    assert late.status_code == 409
    assert (await api.get("/api/v1/emergencies/999999")).status_code == 404
    listed = (
        await api.get("/api/v1/emergencies", params={"state": "closed", "pole": "P0003"})
    ).json()
    assert [e["id"] for e in listed["items"]] == [eid]
    # Closed: the same type may open again on the pole.
    assert (await api.post("/api/v1/emergencies", json=new)).status_code == 201
    assert (
        count(
            database_url,
            "SELECT count(*) FROM audit_log WHERE resource = 'emergency' AND resource_id = %s",
            str(eid),
        )
        == 5
    )  # create, add_entry, link, resolve, close


async def test_plans_and_drills(api: httpx.AsyncClient) -> None:
    plan = await api.post(
        "/api/v1/emergencies/plans",
        json={"type": "flooding", "title": "Flooded cabinets", "body": "1. Cut ports."},
    )
    assert plan.status_code == 201, plan.text
    pid = plan.json()["id"]
    drill = await api.post(
        "/api/v1/emergencies/drills",
        json={
            "type": "flooding",
            "plan_id": pid,
            "held_at": "2026-11-20T09:30:00Z",
            "participants": ["li.wei"],
            "report": "ok",
        },
    )
    assert drill.status_code == 201, drill.text
    bad = await api.post(
        "/api/v1/emergencies/drills",
        json={"type": "flooding", "plan_id": 999999, "held_at": "2026-11-20T09:30:00Z"},
    )
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "plan_id"]
    plans = (await api.get("/api/v1/emergencies/plans", params={"type": "flooding"})).json()
    assert [p["id"] for p in plans["items"]] == [pid]
    assert (await api.get("/api/v1/emergencies/plans", params={"type": "sos_call"})).json()[
        "items"
    ] == []
    drills = (await api.get("/api/v1/emergencies/drills")).json()
    assert drills["items"][0]["plan_id"] == pid


def test_every_write_route_is_audited() -> None:
    writes = [
        (path, route)
        for path, route in api_routes()
        if path.startswith(("/api/v1/alarms", "/api/v1/emergencies"))
        and set(route.methods or ()) - {"GET", "HEAD"}
    ]
    assert len(writes) == 10
    for path, route in writes:
        assert _audit_trail in dependency_calls(route.dependant), path


STAFF = {Role.ADMIN, Role.OPERATOR, Role.MAINTAINER}
MANAGERS = {Role.ADMIN, Role.OPERATOR}
# (path prefix, reads, writes): first match wins. For tests/test_auth.py's POLICY too.
POLICY = [
    ("/api/v1/alarms/rules", STAFF, MANAGERS),
    ("/api/v1/alarms", STAFF, STAFF),
    ("/api/v1/emergencies/{emergency_id}/timeline", STAFF, STAFF),
    ("/api/v1/emergencies", STAFF, MANAGERS),
]


def my_routes() -> list[tuple[str, str]]:
    return sorted(
        (method, path)
        for path, route in api_routes()
        if path.startswith(("/api/v1/alarms", "/api/v1/emergencies"))
        for method in route.methods or ()
    )


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.MAINTAINER, Role.TENANT])
async def test_roles_of_every_route(api: httpx.AsyncClient, database_url: str, role: Role) -> None:
    headers = auth_headers(
        database_url, role, **({"tenant": "tn-telecom"} if role is Role.TENANT else {})
    )
    for method, path in my_routes():
        reads, writes = next((r, w) for prefix, r, w in POLICY if path.startswith(prefix))
        allowed = writes if method != "GET" else reads
        url = "/".join("999999" if part.startswith("{") else part for part in path.split("/"))
        got = await api.request(method, url, headers=headers)
        if role in allowed:
            assert got.status_code not in (401, 403), (role, method, path, got.text)
        else:
            assert got.status_code == 403, (role, method, path, got.text)
