"""Authentication and authorisation: logins, tokens, API keys, the role of every
route, tenants kept apart, and the audit log that no API call can rewrite."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest
from fastapi.routing import APIRoute

from gateway.adapters.site_store import import_site
from gateway.api.security import _audit_trail
from gateway.config import Settings
from gateway.core.auth import LoginThrottle, Role
from gateway.core.site import PoleSpec, SiteSpec, TenantSpec
from tests.support import (
    TEST_PASSWORD,
    add_user,
    api_client,
    api_routes,
    bearer,
    dependency_calls,
    prepare_database,
)

# Which roles each route group admits: (path prefix, reads, writes). Every
# /api/v1 route must fall under one entry (the test says which one does not).
STAFF = {Role.ADMIN, Role.OPERATOR, Role.MAINTAINER}
MANAGERS = {Role.ADMIN, Role.OPERATOR}
ALL = set(Role)
ADMIN = {Role.ADMIN}
POLICY: list[tuple[str, set[Role], set[Role]]] = [
    ("/api/v1/auth/me", ALL, ALL),
    ("/api/v1/api-keys", ALL, ALL),
    # Every role may open the stream; what it carries depends on the role.
    ("/api/v1/events", ALL, ALL),
    ("/api/v1/users", ADMIN, ADMIN),
    ("/api/v1/audit", ADMIN, ADMIN),
    # A pole's device events are the operator's business (door openings, SOS).
    ("/api/v1/poles/{pole_id}/events", STAFF, STAFF),
    ("/api/v1/poles", ALL, MANAGERS),
    # Free capacity, tenant-safe (no other tenant's names), for choosing poles to apply for.
    ("/api/v1/capacity", ALL, ALL),
    ("/api/v1/devices/{device_id}/commands", STAFF, STAFF),
    ("/api/v1/devices", STAFF, MANAGERS),
    # Maintainers move their own orders along (the route checks whose), add notes,
    # attachments and inspection records; creating and planning is for managers.
    ("/api/v1/work-orders/", STAFF, STAFF),
    ("/api/v1/work-orders", STAFF, MANAGERS),
    ("/api/v1/inspections/records", STAFF, STAFF),
    ("/api/v1/inspections/plans", STAFF, MANAGERS),
    ("/api/v1/lighting", STAFF, MANAGERS),
    ("/api/v1/archive", STAFF, MANAGERS),
    ("/api/v1/export", STAFF, MANAGERS),
    ("/api/v1/overview", STAFF, MANAGERS),
    # Any staff member acknowledges alarms and adds to an emergency's timeline;
    # rule overrides and the emergency record itself are for managers.
    ("/api/v1/alarms/rules", STAFF, MANAGERS),
    ("/api/v1/alarms", STAFF, STAFF),
    ("/api/v1/emergencies/{emergency_id}/timeline", STAFF, STAFF),
    ("/api/v1/emergencies", STAFF, MANAGERS),
    # The mounting service: tenants apply, read their leases, ports, usage and bills.
    ("/api/v1/slots", STAFF, MANAGERS),
    ("/api/v1/compartments", STAFF, MANAGERS),
    ("/api/v1/ports/{port_id}/meter-replacements", MANAGERS, MANAGERS),
    ("/api/v1/ports", ALL, MANAGERS),
    ("/api/v1/tenants", MANAGERS, MANAGERS),
    ("/api/v1/applications/{application_id}/overrides", STAFF, STAFF),
    ("/api/v1/applications/{application_id}/approve", MANAGERS, MANAGERS),
    ("/api/v1/applications", ALL, ALL),
    ("/api/v1/leases/{lease_id}/changes", ALL, ALL),
    ("/api/v1/leases", ALL, STAFF),
    ("/api/v1/tariffs", STAFF, MANAGERS),
    ("/api/v1/usage", ALL, ALL),
    ("/api/v1/bills", ALL, MANAGERS),
    ("/api/v1/outages", STAFF, MANAGERS),
]
PUBLIC = {"/api/v1/auth/token", "/api/v1/auth/session"}
# POSTs that change nothing (a body too rich for a query string): no audit entry.
DRY_RUNS = {"/api/v1/applications/check"}
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass
class Api:
    client: httpx.AsyncClient
    database_url: str
    settings: Settings

    def headers(self, role: Role | str, **kw: str) -> dict[str, str]:
        return bearer(add_user(self.database_url, role, **kw))


@pytest.fixture(scope="module")
async def api(database_url: str) -> AsyncIterator[Api]:
    await prepare_database(database_url)
    site = SiteSpec(
        tenants=[TenantSpec(id="tn-a", name="A"), TenantSpec(id="tn-b", name="B")],
        poles=[PoleSpec(id="P1"), PoleSpec(id="P2")],
    )
    await import_site(database_url, site)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO leases (tenant_id, pole_id, state) VALUES"
            " ('tn-a', 'P1', 'in_service'), ('tn-b', 'P2', 'in_service'),"
            " ('tn-a', 'P2', 'terminated')"
        )
    settings = Settings(database_url=database_url, login_max_failures=3)
    async with api_client(settings) as client:
        yield Api(client, database_url, settings)


def v1_routes() -> Iterator[tuple[str, str, APIRoute]]:
    for path, route in api_routes():
        if path.startswith("/api/v1"):
            for method in sorted(route.methods or ()):
                yield method, path, route


def concrete(path: str) -> str:
    """A path with every parameter filled (numbers pass int and str parameters)."""
    out = []
    for part in path.split("/"):
        out.append("999999" if part.startswith("{") else part)
    return "/".join(out)


def policy_for(path: str) -> tuple[set[Role], set[Role]]:
    for prefix, reads, writes in POLICY:
        if path.startswith(prefix):
            return reads, writes
    raise AssertionError(f"{path}: no entry in POLICY; decide who may use it")


ROUTES = sorted((m, p) for m, p, _ in v1_routes() if p not in PUBLIC)


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_needs_credentials(api: Api, method: str, path: str) -> None:
    r = await api.client.request(method, concrete(path))
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    r = await api.client.request(
        method, concrete(path), headers={"Authorization": "Bearer not-a-token"}
    )
    assert r.status_code == 401


@pytest.mark.parametrize("role", list(Role))
async def test_each_role_against_each_route_group(api: Api, role: Role) -> None:
    headers = api.headers(role, tenant="tn-a") if role is Role.TENANT else api.headers(role)
    for method, path in ROUTES:
        reads, writes = policy_for(path)
        allowed = writes if method in WRITES else reads
        r = await api.client.request(method, concrete(path), headers=headers)
        if role in allowed:
            assert r.status_code not in (401, 403), (role, method, path, r.text)
        else:
            assert r.status_code == 403, (role, method, path, r.text)
            assert "roles" in r.json()["detail"]


def test_every_write_is_audited() -> None:
    """Every route that changes something records it (the Audit dependency)."""

    missing = [
        f"{method} {path}"
        for method, path, route in v1_routes()
        if method in WRITES
        and path not in PUBLIC | DRY_RUNS
        and _audit_trail not in dependency_calls(route.dependant)
    ]
    assert not missing, f"write routes without `audit: Audit`: {missing}"


async def test_login_token_and_wrong_credentials(api: Api) -> None:
    user = add_user(api.database_url, Role.OPERATOR)
    r = await api.client.post(
        "/api/v1/auth/token", data={"username": user.name, "password": TEST_PASSWORD}
    )
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert r.json()["expires_in"] == api.settings.token_ttl_s
    me = await api.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["name"] == user.name
    assert me.json()["role"] == "operator"

    wrong = await api.client.post(
        "/api/v1/auth/token", data={"username": user.name, "password": "not-the-password"}
    )
    assert wrong.status_code == 401
    unknown = await api.client.post(
        "/api/v1/auth/token", data={"username": "nobody-here", "password": TEST_PASSWORD}
    )
    assert unknown.status_code == 401
    assert unknown.json() == wrong.json()  # no hint whether the user exists


async def test_expired_and_foreign_tokens_are_refused(api: Api) -> None:
    user = add_user(api.database_url, Role.ADMIN)
    expired = await api.client.get("/api/v1/auth/me", headers=bearer(user, ttl_s=-10))
    assert expired.status_code == 401
    assert "expired" in expired.json()["detail"]
    forged = bearer(user, secret="another-secret-of-at-least-32-characters!")
    assert (await api.client.get("/api/v1/auth/me", headers=forged)).status_code == 401


async def test_failed_logins_are_throttled(api: Api) -> None:
    user = add_user(api.database_url, Role.MAINTAINER)
    for _ in range(api.settings.login_max_failures):
        r = await api.client.post(
            "/api/v1/auth/token", data={"username": user.name, "password": "wrong-password"}
        )
        assert r.status_code == 401
    r = await api.client.post(
        "/api/v1/auth/token", data={"username": user.name, "password": TEST_PASSWORD}
    )
    assert r.status_code == 429  # even the right password waits out the window
    assert int(r.headers["retry-after"]) > 0
    other = add_user(api.database_url, Role.MAINTAINER)
    ok = await api.client.post(
        "/api/v1/auth/token", data={"username": other.name, "password": TEST_PASSWORD}
    )
    assert ok.status_code == 200  # another user from the same address is not held up


def test_the_throttle_forgets_after_its_window() -> None:
    throttle = LoginThrottle(window_s=60)
    for t in range(3):
        throttle.failed("user:a", 3, now=100.0 + t)
    assert throttle.retry_after("user:a", 3, now=103.0) == pytest.approx(57.0)
    assert throttle.retry_after("user:a", 4, now=103.0) == 0.0  # a looser limit: not yet
    assert throttle.retry_after("user:a", 3, now=160.5) == 0.0  # the first one aged out
    throttle.succeeded("user:a")
    assert throttle.retry_after("user:a", 1, now=161.0) == 0.0
    throttle.failed("addr:x", 2, now=0.0)
    throttle.failed("addr:x", 2, now=1.0)
    throttle.forgive("addr:x")  # the newest attempt succeeded
    assert throttle.retry_after("addr:x", 2, now=2.0) == 0.0
    small = LoginThrottle(max_keys=2)
    for key in ("k1", "k2", "k3"):
        small.failed(key, 1, now=0.0)
    assert small.retry_after("k1", 1, now=1.0) == 0.0  # forgotten first
    assert small.retry_after("k3", 1, now=1.0) > 0


async def test_api_keys_work_until_revoked(api: Api) -> None:
    owner = api.headers(Role.OPERATOR)
    created = await api.client.post("/api/v1/api-keys", json={"name": "SCADA"}, headers=owner)
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert key.startswith("pgw_")
    for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
        r = await api.client.get("/api/v1/poles", headers=headers)
        assert r.status_code == 200, r.text
    listed = (await api.client.get("/api/v1/api-keys", headers=owner)).json()
    assert [k["id"] for k in listed] == [created.json()["id"]]
    assert "key" not in listed[0]  # the secret is never shown again

    stranger = api.headers(Role.OPERATOR)
    r = await api.client.delete(f"/api/v1/api-keys/{created.json()['id']}", headers=stranger)
    assert r.status_code == 404  # another user's key does not exist for you
    r = await api.client.delete(f"/api/v1/api-keys/{created.json()['id']}", headers=owner)
    assert r.status_code == 200
    assert r.json()["revoked_at"] is not None
    r = await api.client.get("/api/v1/poles", headers={"X-API-Key": key})
    assert r.status_code == 401
    tampered = key[:-2] + ("AA" if not key.endswith("AA") else "BB")
    assert (
        await api.client.get("/api/v1/poles", headers={"X-API-Key": tampered})
    ).status_code == 401


async def test_a_tenant_sees_only_the_poles_it_leases_on(api: Api) -> None:
    tenant_a = api.headers(Role.TENANT, tenant="tn-a")
    poles = (await api.client.get("/api/v1/poles", headers=tenant_a)).json()["items"]
    assert [p["id"] for p in poles] == ["P1"]  # P2's lease of tn-a was terminated
    assert (await api.client.get("/api/v1/poles/P1", headers=tenant_a)).status_code == 200
    r = await api.client.get("/api/v1/poles/P2", headers=tenant_a)
    assert r.status_code == 404  # tn-b's pole: not there, not forbidden
    staff = api.headers(Role.MAINTAINER)
    seen = {p["id"] for p in (await api.client.get("/api/v1/poles", headers=staff)).json()["items"]}
    assert {"P1", "P2"} <= seen


async def test_users_are_created_by_admins_and_audited(api: Api) -> None:
    admin = api.headers(Role.ADMIN)
    body = {
        "name": "zhang.min",
        "role": "tenant",
        "tenant_id": "tn-b",
        "password": "long-enough-pw",
    }
    r = await api.client.post("/api/v1/users", json=body, headers=admin)
    assert r.status_code == 201, r.text
    again = await api.client.post("/api/v1/users", json=body, headers=admin)
    assert again.status_code == 409
    no_tenant = await api.client.post(
        "/api/v1/users", json={**body, "name": "x.y", "tenant_id": None}, headers=admin
    )
    assert no_tenant.status_code == 422
    bad_tenant = await api.client.post(
        "/api/v1/users", json={**body, "name": "x.z", "tenant_id": "tn-nope"}, headers=admin
    )
    assert bad_tenant.status_code == 422
    assert bad_tenant.json()["detail"][0]["loc"] == ["body", "tenant_id"]

    login = await api.client.post(
        "/api/v1/auth/token", data={"username": "zhang.min", "password": "long-enough-pw"}
    )
    assert login.status_code == 200
    audit = await api.client.get(
        "/api/v1/audit",
        params={"resource": "user", "resource_id": str(r.json()["id"])},
        headers=admin,
    )
    entries = audit.json()["items"]
    assert len(entries) == 1
    assert entries[0]["action"] == "create"
    assert entries[0]["after"]["name"] == "zhang.min"
    assert "password" not in str(entries[0])

    disabled = await api.client.patch(
        f"/api/v1/users/{r.json()['id']}", json={"disabled": True}, headers=admin
    )
    assert disabled.status_code == 200
    login = await api.client.post(
        "/api/v1/auth/token", data={"username": "zhang.min", "password": "long-enough-pw"}
    )
    assert login.status_code == 401


async def test_the_audit_log_cannot_be_changed(api: Api) -> None:
    admin = api.headers(Role.ADMIN)
    await api.client.post("/api/v1/api-keys", json={"name": "to audit"}, headers=admin)
    entries = (await api.client.get("/api/v1/audit", headers=admin)).json()["items"]
    assert entries
    first = entries[0]["id"]
    for method in ("PUT", "PATCH", "DELETE"):
        r = await api.client.request(method, f"/api/v1/audit/{first}", headers=admin)
        assert r.status_code in (404, 405)
        r = await api.client.request(method, "/api/v1/audit", headers=admin)
        assert r.status_code == 405
    # Not even SQL through the application's own connection can rewrite it.
    with psycopg.connect(api.database_url, autocommit=True) as conn:
        for sql in (
            "UPDATE audit_log SET actor = 'someone else'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
        count = conn.execute("SELECT count(*) FROM audit_log").fetchone()
    assert count is not None
    assert count[0] >= len(entries)


def test_user_add_from_the_command_line(migrated_database_url: str) -> None:
    env = {"POLEGW_DATABASE_URL": migrated_database_url, "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "gateway", "user", "add"]
    ok = subprocess.run(
        [*cmd, "first.admin", "--role", "admin", "--password-stdin"],
        input="a-good-long-password\n",
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "created" in ok.stdout
    with psycopg.connect(migrated_database_url) as conn:
        row = conn.execute(
            "SELECT role, password_hash FROM users WHERE name = 'first.admin'"
        ).fetchone()
    assert row is not None
    assert row[0] == "admin"
    assert row[1].startswith("$argon2id$")

    for args, stdin, message in (
        (["first.admin", "--role", "admin"], "a-good-long-password\n", "exists already"),
        (["t.user", "--role", "tenant"], "a-good-long-password\n", "--tenant"),
        (["t.user", "--role", "tenant", "--tenant", "nope"], "a-good-long-password\n", "no tenant"),
        (["x.user", "--role", "king"], "a-good-long-password\n", "--role"),
        (["x.user", "--role", "operator"], "short\n", "at least"),
    ):
        r = subprocess.run(
            [*cmd, *args, "--password-stdin"],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
