"""Mounting applications, review, approval and leases through the API, on a real database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.command_store import CommandStore
from gateway.adapters.site_store import import_site, load_registry
from gateway.api.app import create_app
from gateway.commands import CommandDispatcher
from gateway.config import Settings
from gateway.core.profiles import load_catalog
from gateway.core.site import (
    CapacitySpec,
    CompartmentSpec,
    DeviceSpec,
    PoleSpec,
    PortSpec,
    SiteSpec,
    SlotSpec,
    TenantSpec,
)
from gateway.service import open_pool
from tests.support import add_user, api_context, bearer, count, prepare_database

POLES = [f"M{i}" for i in range(1, 9)]


def pole(pid: str) -> PoleSpec:
    return PoleSpec(
        id=pid,
        devices=[DeviceSpec(id=f"{pid}-pm", profile="port-meter-4")],
        capacity=CapacitySpec(max_load_kg=100, max_wind_area_m2=1.0, power_budget_w=1000),
        slots=[
            SlotSpec(
                id=f"{pid}-{pos}",
                position=pos,
                max_load_kg=30,
                max_wind_area_m2=0.5,
                max_power_w=600,
                voltage_v=220,
            )
            for pos in ("top", "mid", "low")
        ],
        compartments=[CompartmentSpec(id=f"{pid}-cab", name="A", units=4)],
        ports=[
            PortSpec(id=f"{pid}-p{n}", meter=f"{pid}-pm", port=n, rated_w=600) for n in (1, 2, 3)
        ],
    )


SITE = SiteSpec(
    tenants=[TenantSpec(id="tn-a", name="A Telecom"), TenantSpec(id="tn-b", name="B Cams")],
    poles=[pole(p) for p in POLES],
)


@dataclass
class Env:
    url: str
    client: httpx.AsyncClient
    pool: AsyncConnectionPool
    published: list[tuple[str, dict[str, Any]]]
    tenant_a: dict[str, str]
    tenant_b: dict[str, str]
    operator: dict[str, str]
    maintainer: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    await prepare_database(database_url, SITE)
    settings = Settings(database_url=database_url)
    pool = open_pool(database_url)
    await pool.open()
    catalog = load_catalog()
    async with pool.connection() as conn:
        registry = await load_registry(conn, catalog)
    published: list[tuple[str, dict[str, Any]]] = []

    async def publish(topic: str, payload: bytes, expiry_s: int) -> None:
        published.append((topic, orjson.loads(payload)))

    dispatcher = CommandDispatcher(
        store=CommandStore(pool),
        bus_for=lambda _: None,
        publish=publish,
        prefix="poles",
        timeout_s=0.3,
    )
    ctx = api_context(
        settings, pool, catalog=catalog, registry=lambda: registry, commands=dispatcher
    )
    transport = httpx.ASGITransport(app=create_app(ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://api/api/v1") as client:
        yield Env(
            database_url,
            client,
            pool,
            published,
            bearer(add_user(database_url, "tenant", tenant="tn-a")),
            bearer(add_user(database_url, "tenant", tenant="tn-b")),
            bearer(add_user(database_url, "operator")),
            bearer(add_user(database_url, "maintainer")),
        )
    await dispatcher.close()
    await pool.close()


def application(
    poles: list[str],
    *,
    weight: float = 10,
    wind: float = 0.2,
    power: float = 400,
    cabinet: int = 1,
    slots: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    return {
        "devices": [
            {
                "type": "5G micro station",
                "model": "AAU",
                "quantity": 1,
                "weight_kg": weight,
                "wind_area_m2": wind,
                "power_w": power,
            }
        ],
        "voltage_v": 220,
        "cabinet_units": cabinet,
        "term_start": "2027-01-01",
        "term_end": "2028-12-31",
        "poles": [{"pole_id": p, "slots": (slots or {}).get(p, [])} for p in poles],
    }


async def submit(env: Env, body: dict[str, Any], headers: dict[str, str] | None = None) -> int:
    r = await env.client.post("/applications", json=body, headers=headers or env.tenant_a)
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "submitted"
    return int(r.json()["id"])


async def move(
    env: Env, app_id: int, to: str, headers: dict[str, str], **extra: Any
) -> httpx.Response:
    return await env.client.post(
        f"/applications/{app_id}/transitions", json={"to": to, **extra}, headers=headers
    )


async def to_review(env: Env, app_id: int) -> None:
    for to in ("accepted", "under_review"):
        r = await move(env, app_id, to, env.maintainer)
        assert r.status_code == 200, r.text


async def lease_to(env: Env, lease_id: int, *states: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for to in states:
        r = await env.client.post(
            f"/leases/{lease_id}/transitions", json={"to": to}, headers=env.operator
        )
        assert r.status_code == 200, r.text
        body = r.json()
    return body


async def test_site_import_defines_capacity_idempotently(env: Env) -> None:
    r = await env.client.get("/slots", params={"pole_id": "M1"}, headers=env.operator)
    assert [s["position"] for s in r.json()["items"]] == ["low", "mid", "top"]
    r = await env.client.get("/slots/pole-budget/M1", headers=env.operator)
    assert r.json()["power_budget_w"] == 1000
    counts = await import_site(env.url, SITE)
    assert (counts.created, counts.updated) == (0, 0), counts


async def test_full_flow_from_application_to_port_switched_on(env: Env) -> None:
    app_id = await submit(env, application(["M1"], slots={"M1": ["M1-top"]}))
    await to_review(env, app_id)
    r = await env.client.get(f"/applications/{app_id}/review", headers=env.operator)
    assert r.status_code == 200, r.text
    review = r.json()
    assert review["approvable"] is True
    (pole_review,) = review["poles"]
    assert pole_review["assignment"] == {
        "slot_id": "M1-top",
        "compartment_id": "M1-cab",
        "port_id": "M1-p1",
    }
    assert {c["name"] for c in pole_review["checks"]} >= {"slot_free", "pole_power", "port_power"}
    assert all(c["ok"] for c in pole_review["checks"])

    # maintainers review but do not approve
    r = await env.client.post(f"/applications/{app_id}/approve", json={}, headers=env.maintainer)
    assert r.status_code == 403
    r = await env.client.post(
        f"/applications/{app_id}/approve",
        json={"rates": {"lease_fee_month": 300}},
        headers=env.operator,
    )
    assert r.status_code == 200, r.text
    assert r.json()["application"]["state"] == "approved"
    (lease_id,) = r.json()["lease_ids"]

    r = await env.client.get(f"/leases/{lease_id}", headers=env.tenant_a)
    lease = r.json()
    assert (lease["state"], lease["slot_id"], lease["port_id"]) == (
        "contracted",
        "M1-top",
        "M1-p1",
    )
    assert lease["power_w"] == 400
    assert lease["rates"] == {"lease_fee_month": 300}
    assert lease["starts_on"] == "2027-01-01"

    # contracted -> in_service directly is refused
    r = await env.client.post(
        f"/leases/{lease_id}/transitions", json={"to": "in_service"}, headers=env.operator
    )
    assert r.status_code == 409
    assert "installing" in r.json()["detail"]["allowed"]

    sent_before = len(env.published)
    lease = await lease_to(env, lease_id, "installing", "acceptance_test", "in_service")
    switch = lease["port_switch"]
    assert (switch["on"], switch["sent"]) == (True, True), switch
    assert (
        count(
            env.url,
            "SELECT count(*) FROM device_commands WHERE id = %s AND device_id = 'M1-pm'"
            " AND command = 'switch_port' AND args = '{\"on\": true, \"port\": 1}'::jsonb",
            switch["command_id"],
        )
        == 1
    )
    for _ in range(50):
        if len(env.published) > sent_before:
            break
        await asyncio.sleep(0.02)
    topic, payload = env.published[-1]
    assert topic == "poles/M1/commands/M1-pm"
    assert payload["command"] == "switch_port"
    assert payload["args"] == {"port": 1, "on": True}

    # How the command ended is on the lease too (issue 16, item 18): no pole answers
    # here, so it times out after the dispatcher's 0.3 s.
    for _ in range(100):
        switch = (await env.client.get(f"/leases/{lease_id}", headers=env.tenant_a)).json()[
            "port_switch"
        ]
        if switch["finished_at"] is not None:
            break
        await asyncio.sleep(0.05)
    assert (switch["state"], switch["command_id"]) == (
        "timed_out",
        lease["port_switch"]["command_id"],
    )
    assert "no reply" in switch["command_error"]

    lease = await lease_to(env, lease_id, "suspended")
    assert lease["port_switch"]["on"] is False
    assert lease["port_switch"]["sent"] is True

    r = await env.client.get(f"/leases/{lease_id}/history", headers=env.tenant_a)
    assert [h["state"] for h in r.json()] == [
        "contracted",
        "installing",
        "acceptance_test",
        "in_service",
        "suspended",
    ]
    # the tenant now sees the port of its lease, tenant b does not
    assert (await env.client.get("/ports/M1-p1", headers=env.tenant_a)).status_code == 200
    assert (await env.client.get("/ports/M1-p1", headers=env.tenant_b)).status_code == 404
    mine = await env.client.get("/ports", headers=env.tenant_a)
    assert "M1-p1" in [p["id"] for p in mine.json()["items"]]
    assert count(env.url, "SELECT count(*) FROM audit_log WHERE resource = 'lease'") >= 4


async def test_tenants_see_only_their_own(env: Env) -> None:
    app_id = await submit(env, application(["M2"]))
    r = await env.client.get(f"/applications/{app_id}", headers=env.tenant_b)
    assert r.status_code == 404
    r = await env.client.get(f"/applications/{app_id}/review", headers=env.tenant_b)
    assert r.status_code == 404
    r = await move(env, app_id, "withdrawn", env.tenant_b)
    assert r.status_code == 404
    listed = (await env.client.get("/applications", headers=env.tenant_b)).json()["items"]
    assert all(a["tenant_id"] == "tn-b" for a in listed)
    assert app_id not in [a["id"] for a in listed]
    staff_list = (await env.client.get("/applications", headers=env.operator)).json()["items"]
    assert app_id in [a["id"] for a in staff_list]
    # staff do not apply, and the tenant comes from the caller, never the body
    r = await env.client.post("/applications", json=application(["M2"]), headers=env.operator)
    assert r.status_code == 403
    # (a tenant_id in the body is refused, naming it: no body field is ignored)
    body = application(["M2"]) | {"tenant_id": "tn-b"}
    r = await env.client.post("/applications", json=body, headers=env.tenant_a)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "tenant_id"]
    other = await submit(env, application(["M2"]))
    r = await env.client.get(f"/applications/{other}", headers=env.tenant_a)
    assert r.json()["tenant_id"] == "tn-a"
    r = await env.client.get("/leases", headers=env.tenant_b)
    assert all(lease["tenant_id"] == "tn-b" for lease in r.json()["items"])
    assert (await env.client.get("/slots", headers=env.tenant_a)).status_code == 403


async def test_return_resubmit_and_withdraw_rules(env: Env) -> None:
    app_id = await submit(env, application(["M3"]))
    r = await move(env, app_id, "returned", env.maintainer)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "reasons"]
    r = await move(env, app_id, "returned", env.maintainer, reasons=["wind area missing"])
    assert r.status_code == 200
    assert r.json()["reasons"] == ["wind area missing"]
    r = await move(env, app_id, "accepted", env.maintainer)
    assert r.status_code == 409
    r = await env.client.put(
        f"/applications/{app_id}", json=application(["M3"], wind=0.3), headers=env.tenant_a
    )
    assert r.status_code == 200, r.text
    r = await move(env, app_id, "submitted", env.operator)
    assert r.status_code == 403
    r = await move(env, app_id, "submitted", env.tenant_a)
    assert r.status_code == 200
    await to_review(env, app_id)
    r = await move(env, app_id, "withdrawn", env.operator)
    assert r.status_code == 403
    r = await move(env, app_id, "withdrawn", env.tenant_a)
    assert r.status_code == 200
    assert r.json()["state"] == "withdrawn"
    r = await move(env, app_id, "under_review", env.operator)
    assert r.status_code == 409
    hist = (await env.client.get(f"/applications/{app_id}/history", headers=env.tenant_a)).json()
    assert [h["to_state"] for h in hist if h["to_state"]] == [
        "submitted",
        "returned",
        "submitted",
        "accepted",
        "under_review",
        "withdrawn",
    ]

    # no withdrawal after approval; rejection needs reasons
    approved = await submit(env, application(["M3"], power=100))
    await to_review(env, approved)
    r = await env.client.post(f"/applications/{approved}/approve", json={}, headers=env.operator)
    assert r.status_code == 200, r.text
    assert (await move(env, approved, "withdrawn", env.tenant_a)).status_code == 409
    rejected = await submit(env, application(["M3"]))
    await to_review(env, rejected)
    assert (await move(env, rejected, "rejected", env.maintainer)).status_code == 422
    r = await move(env, rejected, "rejected", env.maintainer, reasons=["no capacity"])
    assert r.status_code == 200
    assert r.json()["state"] == "rejected"


async def test_override_needs_a_reason_and_never_doubles_a_slot(env: Env) -> None:
    # 0.6 m² fits no slot (0.5) on M4
    app_id = await submit(env, application(["M4"], wind=0.6, slots={"M4": ["M4-top"]}))
    await to_review(env, app_id)
    review = (await env.client.get(f"/applications/{app_id}/review", headers=env.operator)).json()
    checks = {c["name"]: c for c in review["poles"][0]["checks"]}
    assert checks["slot_wind_area"]["ok"] is False
    assert checks["slot_wind_area"]["needed"] == pytest.approx(0.6)
    assert review["approvable"] is False
    r = await env.client.post(f"/applications/{app_id}/approve", json={}, headers=env.operator)
    assert r.status_code == 409
    assert [f["check"] for f in r.json()["detail"]["failed"]] == ["slot_wind_area"]

    override = {"pole_id": "M4", "check": "slot_wind_area"}
    r = await env.client.post(
        f"/applications/{app_id}/overrides", json=override, headers=env.operator
    )
    assert r.status_code == 422
    r = await env.client.post(
        f"/applications/{app_id}/overrides", json=override | {"reason": "  "}, headers=env.operator
    )
    assert r.status_code == 422
    r = await env.client.post(
        f"/applications/{app_id}/overrides",
        json=override | {"check": "slot_free", "reason": "please"},
        headers=env.operator,
    )
    assert r.status_code == 409
    r = await env.client.post(
        f"/applications/{app_id}/overrides",
        json=override | {"reason": "bracket rated 0.8 m², report R-12"},
        headers=env.maintainer,
    )
    assert r.status_code == 201, r.text
    review = (await env.client.get(f"/applications/{app_id}/review", headers=env.operator)).json()
    waived = {c["name"]: c for c in review["poles"][0]["checks"]}["slot_wind_area"]
    assert waived["overridden"]["reason"] == "bracket rated 0.8 m², report R-12"
    assert review["approvable"] is True
    r = await env.client.post(
        f"/applications/{app_id}/approve",
        json={"assignments": [{"pole_id": "M4", "slot_id": "M4-top"}]},
        headers=env.operator,
    )
    assert r.status_code == 200, r.text

    # a second application for the same slot: an override cannot make room
    second = await submit(env, application(["M4"], wind=0.1))
    await to_review(env, second)
    r = await env.client.post(
        f"/applications/{second}/approve",
        json={
            "assignments": [{"pole_id": "M4", "slot_id": "M4-top", "port_id": "M4-p2"}],
            "overrides": [{"pole_id": "M4", "check": "slot_free", "reason": "share it"}],
        },
        headers=env.operator,
    )
    assert r.status_code == 409
    r = await env.client.post(
        f"/applications/{second}/approve",
        json={"assignments": [{"pole_id": "M4", "slot_id": "M4-top", "port_id": "M4-p2"}]},
        headers=env.operator,
    )
    assert r.status_code == 409
    assert "slot_free" in [f["check"] for f in r.json()["detail"]["failed"]]
    r = await env.client.post(
        f"/applications/{second}/approve",
        json={"assignments": [{"pole_id": "M1", "slot_id": "M4-top"}]},
        headers=env.operator,
    )
    assert r.status_code == 422


async def _approve_both(env: Env, first: dict[str, Any], second: dict[str, Any]) -> list[int]:
    ids = [await submit(env, application(**first)), await submit(env, application(**second))]
    for app_id in ids:
        await to_review(env, app_id)
    return ids


async def _race(env: Env, ids: list[int], bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    return list(
        await asyncio.gather(
            *(
                env.client.post(f"/applications/{i}/approve", json=b, headers=env.operator)
                for i, b in zip(ids, bodies, strict=True)
            )
        )
    )


async def test_concurrent_approvals_of_one_slot(env: Env) -> None:
    ids = await _approve_both(env, {"poles": ["M5"]}, {"poles": ["M5"], "power": 100})
    bodies = [
        {"assignments": [{"pole_id": "M5", "slot_id": "M5-top", "port_id": f"M5-p{n}"}]}
        for n in (1, 2)
    ]
    results = await _race(env, ids, bodies)
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 409], [r.text for r in results]
    loser = next(r for r in results if r.status_code == 409)
    assert "slot_free" in [f["check"] for f in loser.json()["detail"]["failed"]]
    assert count(env.url, "SELECT count(*) FROM leases WHERE slot_id = 'M5-top'") == 1


async def test_concurrent_approvals_never_exceed_the_power_budget(env: Env) -> None:
    # 600 W each on different slots and ports; the pole's budget is 1000 W
    ids = await _approve_both(
        env,
        {"poles": ["M6"], "power": 600, "cabinet": 0},
        {"poles": ["M6"], "power": 600, "cabinet": 0},
    )
    bodies = [
        {"assignments": [{"pole_id": "M6", "slot_id": "M6-top", "port_id": "M6-p1"}]},
        {"assignments": [{"pole_id": "M6", "slot_id": "M6-mid", "port_id": "M6-p2"}]},
    ]
    results = await _race(env, ids, bodies)
    assert sorted(r.status_code for r in results) == [200, 409], [r.text for r in results]
    loser = next(r for r in results if r.status_code == 409)
    assert [f["check"] for f in loser.json()["detail"]["failed"]] == ["pole_power"]
    reserved = count(
        env.url,
        "SELECT coalesce(sum(power_w), 0)::int FROM leases WHERE pole_id = 'M6'"
        " AND state NOT IN ('terminated', 'removed')",
    )
    assert reserved == 600


async def test_change_application_for_a_lease_in_service(env: Env) -> None:
    app_id = await submit(env, application(["M7"], power=300))
    await to_review(env, app_id)
    r = await env.client.post(f"/applications/{app_id}/approve", json={}, headers=env.operator)
    (lease_id,) = r.json()["lease_ids"]
    change = {
        k: v for k, v in application(["M7"], power=550).items() if k not in ("poles", "term_start")
    }
    r = await env.client.post(f"/leases/{lease_id}/changes", json=change, headers=env.tenant_a)
    assert r.status_code == 409  # not in service yet
    await lease_to(env, lease_id, "installing", "acceptance_test", "in_service")
    r = await env.client.post(f"/leases/{lease_id}/changes", json=change, headers=env.tenant_b)
    assert r.status_code == 404
    r = await env.client.post(f"/leases/{lease_id}/changes", json=change, headers=env.tenant_a)
    assert r.status_code == 201, r.text
    changed = r.json()
    assert (changed["kind"], changed["lease_id"], changed["poles"][0]["pole_id"]) == (
        "change",
        lease_id,
        "M7",
    )
    await to_review(env, changed["id"])
    review = (
        await env.client.get(f"/applications/{changed['id']}/review", headers=env.operator)
    ).json()
    # the lease's own slot and port are not counted against the change
    assert review["approvable"] is True, review
    lease = (await env.client.get(f"/leases/{lease_id}", headers=env.tenant_a)).json()
    assert review["poles"][0]["assignment"]["slot_id"] == lease["slot_id"]
    r = await env.client.post(
        f"/applications/{changed['id']}/approve", json={}, headers=env.operator
    )
    assert r.status_code == 200, r.text
    assert r.json()["lease_ids"] == [lease_id]
    lease = (await env.client.get(f"/leases/{lease_id}", headers=env.tenant_a)).json()
    assert lease["power_w"] == 550
    assert lease["state"] == "in_service"
    assert count(env.url, "SELECT count(*) FROM leases WHERE pole_id = 'M7'") == 1


async def test_capacity_crud_is_for_managers_and_audited(env: Env) -> None:
    slot = {
        "id": "M8-arm",
        "pole_id": "M8",
        "position": "arm",
        "max_load_kg": 10,
        "max_wind_area_m2": 0.2,
        "max_power_w": 100,
    }
    r = await env.client.post("/slots", json=slot, headers=env.maintainer)
    assert r.status_code == 403
    r = await env.client.post("/slots", json=slot, headers=env.operator)
    assert r.status_code == 201, r.text
    r = await env.client.post("/slots", json=slot, headers=env.operator)
    assert r.status_code == 409
    r = await env.client.patch("/slots/M8-arm", json={"max_power_w": 200}, headers=env.operator)
    assert r.json()["max_power_w"] == 200
    port = {
        "id": "M8-p4",
        "pole_id": "M8",
        "meter_device_id": "M8-pm",
        "port_no": 5,
        "rated_w": 100,
    }
    r = await env.client.post("/ports", json=port, headers=env.operator)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "port_no"]
    r = await env.client.post("/ports", json=port | {"port_no": 4}, headers=env.operator)
    assert r.status_code == 201, r.text
    r = await env.client.delete("/slots/M8-arm", headers=env.operator)
    assert r.status_code == 204
    r = await env.client.post(
        "/tenants", json={"id": "tn-c", "name": "C Screens"}, headers=env.operator
    )
    assert r.status_code == 201
    assert (await env.client.get("/tenants", headers=env.maintainer)).status_code == 403
    assert count(env.url, "SELECT count(*) FROM audit_log WHERE resource IN ('slot', 'port')") >= 3
    with psycopg.connect(env.url) as conn:
        row = conn.execute("SELECT count(*) FROM slots WHERE id = 'M8-arm'").fetchone()
    assert row == (0,)
