"""Operation archive: pole/device records, takeover, history, audit, tenant isolation, roles."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, get_args

import httpx
import psycopg
import pytest
from fastapi.routing import APIRoute

from gateway.adapters.site_store import import_site
from gateway.api.routes import archive, poles
from gateway.api.security import Audit
from gateway.config import Settings
from tests.support import add_user, api_client, bearer, prepare_database, small_site

NEW_POLE: dict[str, Any] = {
    "id": "P0101",
    "name": "Renmin Rd 101",
    "road": "Renmin Rd",
    "lat": 30.657,
    "lon": 104.066,
    "height_m": 10,
    "model": "ZHG-10A",
    "vendor": "Sichuan Smart Pole Co.",
    "serial": "SP2026-000123",
    "installed_on": "2026-05-20",
    "warranty_until": "2029-06-01",
}


@dataclass
class Api:
    client: httpx.AsyncClient
    url: str
    operator: dict[str, str]
    operator_name: str
    maintainer: dict[str, str]
    tenant: dict[str, str]


@pytest.fixture(scope="module")
async def api(database_url: str) -> AsyncIterator[Api]:
    await prepare_database(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO leases (tenant_id, pole_id, state) VALUES ('tn-telecom', 'P0002',"
            " 'in_service'), ('tn-telecom', 'P0003', 'terminated')"
        )
    operator = add_user(database_url, "operator")
    async with api_client(Settings(database_url=database_url)) as client:
        yield Api(
            client,
            database_url,
            bearer(operator),
            operator.name,
            bearer(add_user(database_url, "maintainer")),
            bearer(add_user(database_url, "tenant", tenant="tn-telecom")),
        )


def audit_entries(url: str, resource: str, resource_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT action, actor, before, after FROM audit_log"
            " WHERE resource = %s AND resource_id = %s ORDER BY id",
            (resource, resource_id),
        ).fetchall()


async def test_create_and_patch_keep_history_and_audit(api: Api) -> None:
    c, h = api.client, api.operator
    r = await c.post("/api/v1/poles", json=NEW_POLE, headers=h)
    assert r.status_code == 201, r.text
    pole = r.json()
    assert pole["status"] == "planned"  # not taken over yet
    assert pole["model"] == "ZHG-10A"
    assert pole["installed_on"] == "2026-05-20"
    assert pole["device_count"] == 0

    r = await c.patch(
        "/api/v1/poles/P0101",
        json={"status": "faulty", "notes": "arm bent", "warranty_until": None},
        headers=h,
    )
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["notes"], r.json()["warranty_until"]) == (
        "faulty",
        "arm bent",
        None,
    )
    got = (await c.get("/api/v1/poles/P0101", headers=h)).json()
    assert got["status"] == "faulty"
    assert got["serial"] == "SP2026-000123"  # untouched by the patch

    # Patching with the same values changes nothing and adds no history.
    assert (await c.patch("/api/v1/poles/P0101", json={"status": "faulty"}, headers=h)).is_success

    r = await c.get("/api/v1/archive/poles/P0101/history", headers=api.maintainer)
    assert r.status_code == 200, r.text
    entries = r.json()["items"]
    assert [e["action"] for e in entries] == ["update", "create"]  # newest first
    update, create = entries
    assert update["changes"] == {
        "status": ["planned", "faulty"],
        "notes": [None, "arm bent"],
        "warranty_until": ["2029-06-01", None],
    }
    assert update["changed_by"] == api.operator_name
    assert create["changes"]["model"] == [None, "ZHG-10A"]

    audit = audit_entries(api.url, "pole", "P0101")
    assert [a[0] for a in audit] == ["create", "update", "update"]
    assert all(a[1] == api.operator_name for a in audit)
    assert audit[0][3]["vendor"] == "Sichuan Smart Pole Co."
    assert (audit[1][2]["status"], audit[1][3]["status"]) == ("planned", "faulty")


async def test_duplicate_id_is_409(api: Api) -> None:
    body = {**NEW_POLE, "id": "P0102"}
    assert (await api.client.post("/api/v1/poles", json=body, headers=api.operator)).is_success
    r = await api.client.post("/api/v1/poles", json=body, headers=api.operator)
    assert r.status_code == 409
    assert r.json()["detail"][0]["loc"] == ["body", "id"]
    assert (
        await api.client.post("/api/v1/poles", json={**body, "id": "P0001"}, headers=api.operator)
    ).status_code == 409


async def test_takeover_sets_in_service_once(api: Api) -> None:
    c, h = api.client, api.operator
    assert (await c.post("/api/v1/poles", json={**NEW_POLE, "id": "P0103"}, headers=h)).is_success
    body = {"taken_over_from": "Chengdu Municipal Construction", "taken_over_on": "2026-06-01"}
    r = await c.post("/api/v1/poles/P0103/takeover", json=body, headers=h)
    assert r.status_code == 200, r.text
    pole = r.json()
    assert (pole["status"], pole["taken_over_on"], pole["taken_over_from"]) == (
        "in_service",
        "2026-06-01",
        "Chengdu Municipal Construction",
    )
    assert (await c.post("/api/v1/poles/P0103/takeover", json=body, headers=h)).status_code == 409
    assert [a[0] for a in audit_entries(api.url, "pole", "P0103")] == ["create", "takeover"]
    r = await c.post("/api/v1/poles/NOPE/takeover", json=body, headers=h)
    assert r.status_code == 404


async def test_status_filter(api: Api) -> None:
    c, h = api.client, api.operator
    assert (await c.post("/api/v1/poles", json={**NEW_POLE, "id": "P0104"}, headers=h)).is_success
    assert (await c.patch("/api/v1/poles/P0104", json={"status": "retired"}, headers=h)).is_success
    r = await c.get("/api/v1/poles", params={"status": "retired"}, headers=h)
    assert [p["id"] for p in r.json()["items"]] == ["P0104"]
    r = await c.get("/api/v1/poles", params={"status": "in_service"}, headers=h)
    assert {"P0001", "P0002", "P0003"} <= {p["id"] for p in r.json()["items"]}
    assert "P0104" not in {p["id"] for p in r.json()["items"]}
    r = await c.get("/api/v1/poles", params={"status": "broken"}, headers=h)
    assert r.status_code == 422


async def test_device_archive_and_history(api: Api) -> None:
    c, h = api.client, api.operator
    body = {
        "model": "LC-200",
        "vendor": "Hangzhou Lighting",
        "serial": "LC200-778812",
        "installed_on": "2026-05-20",
        "mounting_position": "arm A, 9 m",
        "status": "under_maintenance",
    }
    r = await c.patch("/api/v1/devices/P0001-lamp/archive", json=body, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["mounting_position"] == "arm A, 9 m"
    detail = (await c.get("/api/v1/devices/P0001-lamp", headers=h)).json()
    assert (detail["model"], detail["status"]) == ("LC-200", "under_maintenance")
    assert detail["metrics"]["power_w"]["unit"] == "W"  # the device detail is intact
    listed = (await c.get("/api/v1/devices", params={"pole": "P0001"}, headers=h)).json()
    assert {d["id"]: d["serial"] for d in listed["items"]}["P0001-lamp"] == "LC200-778812"

    hist = (await c.get("/api/v1/archive/devices/P0001-lamp/history", headers=h)).json()
    assert hist["items"][0]["changes"]["status"] == ["in_service", "under_maintenance"]
    assert hist["items"][-1]["action"] == "create"  # from the site import
    audit = audit_entries(api.url, "device", "P0001-lamp")
    assert audit[-1][0] == "update"
    assert (audit[-1][2]["model"], audit[-1][3]["model"]) == (None, "LC-200")

    r = await c.patch("/api/v1/devices/NOPE/archive", json=body, headers=h)
    assert r.status_code == 404
    r = await c.get("/api/v1/archive/devices/NOPE/history", headers=h)
    assert r.status_code == 404


async def test_site_reimport_keeps_archive_fields(api: Api) -> None:
    c, h = api.client, api.operator
    patch = {"model": "ZHG-8", "status": "faulty", "taken_over_from": "Builder Ltd"}
    assert (await c.patch("/api/v1/poles/P0003", json=patch, headers=h)).is_success
    site = small_site()
    renamed = site.poles[2].model_copy(update={"name": "Renmin Rd 3 (renamed)"})
    site = site.model_copy(update={"poles": [*site.poles[:2], renamed]})
    await import_site(api.url, site)
    pole = (await c.get("/api/v1/poles/P0003", headers=h)).json()
    assert pole["name"] == "Renmin Rd 3 (renamed)"
    assert (pole["model"], pole["status"], pole["taken_over_from"]) == (
        "ZHG-8",
        "faulty",
        "Builder Ltd",
    )
    hist = (await c.get("/api/v1/archive/poles/P0003/history", headers=h)).json()["items"]
    assert hist[0]["changes"] == {"name": ["Renmin Rd 3", "Renmin Rd 3 (renamed)"]}
    assert hist[0]["changed_by"].startswith("db:")  # outside the API


async def test_tenant_sees_only_leased_poles(api: Api) -> None:
    c, h = api.client, api.tenant
    listed = (await c.get("/api/v1/poles", headers=h)).json()
    assert [p["id"] for p in listed["items"]] == ["P0002"]  # P0003's lease is terminated
    assert (await c.get("/api/v1/poles/P0002", headers=h)).json()["status"] == "in_service"
    for other in ("P0001", "P0003", "NOPE"):
        r = await c.get(f"/api/v1/poles/{other}", headers=h)
        assert r.status_code == 404, other
    assert (await c.get("/api/v1/archive/poles/P0002/history", headers=h)).status_code == 403
    assert (await c.patch("/api/v1/poles/P0002", json={"notes": "x"}, headers=h)).status_code == 403
    assert (
        await c.post("/api/v1/poles", json={**NEW_POLE, "id": "P0199"}, headers=h)
    ).status_code == 403


async def test_maintainer_reads_but_does_not_write(api: Api) -> None:
    c, h = api.client, api.maintainer
    assert (await c.get("/api/v1/poles/P0001", headers=h)).status_code == 200
    writes = [
        c.post("/api/v1/poles", json={**NEW_POLE, "id": "P0198"}, headers=h),
        c.patch("/api/v1/poles/P0001", json={"notes": "x"}, headers=h),
        c.post("/api/v1/poles/P0001/takeover", json={"taken_over_from": "x"}, headers=h),
        c.patch("/api/v1/devices/P0001-env/archive", json={"notes": "x"}, headers=h),
    ]
    for call in writes:
        r = await call
        assert r.status_code == 403, r.text
    assert (await c.get("/api/v1/poles/P0198", headers=api.operator)).status_code == 404
    assert (await c.post("/api/v1/poles", json=NEW_POLE)).status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("post", "/api/v1/poles", {**NEW_POLE, "id": "P0200", "status": "broken"}, "status"),
        ("post", "/api/v1/poles", {**NEW_POLE, "id": "has space"}, "id"),
        ("post", "/api/v1/poles", {**NEW_POLE, "id": "P0200", "lat": 91}, "lat"),
        ("post", "/api/v1/poles", {**NEW_POLE, "id": "P0200", "colour": "red"}, "colour"),
        (
            "post",
            "/api/v1/poles",
            {**NEW_POLE, "id": "P0200", "warranty_until": "2020-01-01"},
            "warranty_until",
        ),
        ("patch", "/api/v1/poles/P0001", {"status": None}, "status"),
        ("patch", "/api/v1/poles/P0001", {"installed_on": "22/11/2026"}, "installed_on"),
        (
            "patch",
            "/api/v1/poles/P0001",
            {"installed_on": "2026-06-02", "taken_over_on": "2026-06-01"},
            "taken_over_on",
        ),
        ("post", "/api/v1/poles/P0001/takeover", {"taken_over_from": ""}, "taken_over_from"),
        ("patch", "/api/v1/devices/P0001-env/archive", {"serial": "x" * 201}, "serial"),
        ("patch", "/api/v1/devices/P0001-env/archive", {"pole_id": "P0002"}, "pole_id"),
    ],
)
async def test_validation_names_the_field(
    api: Api, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    r = await api.client.request(method, path, json=body, headers=api.operator)
    assert r.status_code == 422, r.text
    assert any(err["loc"][-1] == field for err in r.json()["detail"]), r.json()
    assert (await api.client.get("/api/v1/poles/P0200", headers=api.operator)).status_code == 404


def test_every_archive_write_route_is_audited() -> None:
    writes = [
        r
        for router in (poles.router, archive.router)
        for r in router.routes
        if isinstance(r, APIRoute) and (r.methods or set()) - {"GET", "HEAD"}
    ]
    assert len(writes) == 4
    audit_dependency = get_args(Audit)[1].dependency
    for route in writes:
        calls = {d.call for d in route.dependant.dependencies}
        assert audit_dependency in calls, route.path
