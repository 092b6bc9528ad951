"""Browser sessions: the cookie login of the console, its CSRF guard, logout,
expiry, disabled users, and a logged-in browser opening API URLs in a tab."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from gateway.adapters.credentials import TokenIssuer, new_csrf_token
from gateway.config import Settings
from gateway.core.auth import Principal, Role
from tests.support import (
    TEST_PASSWORD,
    TEST_SECRET,
    add_user,
    api_client,
    bearer,
    opened_pool,
    prepare_database,
)
from tests.test_billing_settlement import TENANT, seed

SESSION = "/api/v1/auth/session"
CSRF_REFUSED = "CSRF token missing or wrong: send the polegw_csrf cookie's value as X-CSRF-Token"


@dataclass
class Site:
    url: str
    settings: Settings


@pytest.fixture(scope="module")
async def site(database_url: str) -> Site:
    await prepare_database(database_url)
    seed(database_url)  # two tenants' leases on a tariff: bills to open
    return Site(database_url, Settings(database_url=database_url, login_max_failures=3))


@contextlib.asynccontextmanager
async def browser(site: Site, base_url: str = "http://api") -> AsyncIterator[httpx.AsyncClient]:
    """A client that keeps cookies like a browser (a fresh one per call)."""
    async with (
        opened_pool(site.url) as pool,
        api_client(site.settings, pool, base_url=base_url) as c,
    ):
        yield c


async def log_in(client: httpx.AsyncClient, user: Principal) -> dict[str, str]:
    r = await client.post(SESSION, json={"username": user.name, "password": TEST_PASSWORD})
    assert r.status_code == 200, r.text
    return dict(r.json())


def set_cookies(r: httpx.Response) -> dict[str, str]:
    """Each Set-Cookie header by cookie name."""
    return {h.split("=", 1)[0]: h for h in r.headers.get_list("set-cookie")}


async def test_a_browser_logs_in_reads_and_logs_out(site: Site) -> None:
    user = add_user(site.url, Role.OPERATOR)
    async with browser(site) as client:
        r = await client.post(SESSION, json={"username": user.name, "password": TEST_PASSWORD})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["name"], body["role"], body["tenant_id"]) == (user.name, "operator", None)
        expires = datetime.fromisoformat(body["expires_at"])
        ttl = site.settings.session_idle_s
        assert abs((expires - datetime.now(UTC)).total_seconds() - ttl) < 30
        cookies = set_cookies(r)
        session = cookies["polegw_session"].lower()
        for attribute in ("httponly", "samesite=lax", "path=/", f"max-age={ttl}"):
            assert attribute in session, (attribute, session)
        assert "secure" not in session  # plain http: a Secure cookie would never come back
        csrf = cookies["polegw_csrf"].lower()
        assert "samesite=strict" in csrf
        assert "path=/" in csrf
        assert "httponly" not in csrf  # the page's script reads it
        assert client.cookies["polegw_csrf"] == body["csrf_token"]

        me = await client.get("/api/v1/auth/me")  # the cookie alone
        assert me.status_code == 200, me.text
        assert me.json()["name"] == user.name
        assert (await client.get("/api/v1/overview")).status_code == 200

        out = await client.delete(SESSION)
        assert out.status_code == 204
        assert "polegw_session" not in client.cookies
        assert "polegw_csrf" not in client.cookies
        assert (await client.get("/api/v1/auth/me")).status_code == 401


async def test_cookies_are_secure_over_https(site: Site) -> None:
    user = add_user(site.url, Role.MAINTAINER)
    async with browser(site, base_url="https://api") as client:
        r = await client.post(SESSION, json={"username": user.name, "password": TEST_PASSWORD})
        assert r.status_code == 200
        for header in set_cookies(r).values():
            assert "secure" in header.lower(), header
        assert (await client.get("/api/v1/auth/me")).status_code == 200
        out = await client.delete(SESSION)
        assert all("secure" in h.lower() for h in set_cookies(out).values())


async def test_writes_need_the_sessions_csrf_value(site: Site) -> None:
    user = add_user(site.url, Role.OPERATOR)
    key = {"name": "console test"}
    async with browser(site) as client:
        csrf = (await log_in(client, user))["csrf_token"]
        r = await client.post("/api/v1/api-keys", json=key)
        assert r.status_code == 403
        assert r.json() == {"detail": CSRF_REFUSED}
        r = await client.post("/api/v1/api-keys", json=key, headers={"X-CSRF-Token": "guess"})
        assert r.status_code == 403
        # Another site cannot set our cookie, but suppose it planted a value of its
        # own in both places: the session's token names its own value, not this one.
        planted = new_csrf_token()
        client.cookies.set("polegw_csrf", planted)
        r = await client.post("/api/v1/api-keys", json=key, headers={"X-CSRF-Token": planted})
        assert r.status_code == 403
        # The right value in the header but not in the cookie: refused too.
        r = await client.post("/api/v1/api-keys", json=key, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 403
        client.cookies.set("polegw_csrf", csrf)
        r = await client.post("/api/v1/api-keys", json=key, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 201, r.text
        # Reads need no CSRF value.
        assert (await client.get("/api/v1/api-keys")).status_code == 200
    # Machines with a bearer token never send one.
    async with browser(site) as client:
        r = await client.post("/api/v1/api-keys", json=key, headers=bearer(user))
        assert r.status_code == 201, r.text


async def test_a_bearer_token_in_the_cookie_is_no_session(site: Site) -> None:
    """A token without the CSRF binding would let a write through on the cookie alone."""
    user = add_user(site.url, Role.ADMIN)
    token = bearer(user)["Authorization"].removeprefix("Bearer ")
    async with browser(site) as client:
        client.cookies.set("polegw_session", token)
        r = await client.get("/api/v1/auth/me")
        assert r.status_code == 401
        assert r.json()["detail"] == "the session is not valid"


async def test_wrong_passwords_malformed_bodies_and_the_shared_throttle(site: Site) -> None:
    user = add_user(site.url, Role.MAINTAINER)
    async with browser(site) as client:
        r = await client.post(SESSION, json={"username": user.name, "password": "not-it"})
        assert r.status_code == 401
        assert r.json()["detail"] == "wrong user name or password"
        assert "polegw_session" not in client.cookies
        r = await client.post(SESSION, json={"username": user.name})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "password"]
        r = await client.post(SESSION, json={"username": 5, "password": "x"})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "username"]
        # The token login and the session login count failures together.
        for _ in range(site.settings.login_max_failures - 1):
            r = await client.post(
                "/api/v1/auth/token", data={"username": user.name, "password": "wrong-password"}
            )
            assert r.status_code == 401
        r = await client.post(SESSION, json={"username": user.name, "password": TEST_PASSWORD})
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) > 0


async def test_an_expired_session_is_refused(site: Site) -> None:
    user = add_user(site.url, Role.OPERATOR)
    issuer = TokenIssuer(TEST_SECRET, timedelta(seconds=site.settings.token_ttl_s))
    old = datetime.now(UTC) - timedelta(seconds=site.settings.token_ttl_s + 5)
    csrf = new_csrf_token()
    async with browser(site) as client:
        client.cookies.set("polegw_session", issuer.issue(user, old, csrf=csrf))
        client.cookies.set("polegw_csrf", csrf)
        r = await client.get("/api/v1/auth/me")
        assert r.status_code == 401
        assert r.json()["detail"] == "the session has expired"
        client.cookies.set("polegw_session", issuer.issue(user, csrf=csrf))
        assert (await client.get("/api/v1/auth/me")).status_code == 200


async def test_a_disabled_user_is_refused_at_once(site: Site) -> None:
    admin = bearer(add_user(site.url, Role.ADMIN))
    user = add_user(site.url, Role.OPERATOR)
    token = bearer(user)
    async with browser(site) as client:
        await log_in(client, user)
        assert (await client.get("/api/v1/auth/me")).status_code == 200
        assert (await client.get("/api/v1/auth/me", headers=token)).status_code == 200
        r = await client.patch(
            f"/api/v1/users/{user.user_id}", json={"disabled": True}, headers=admin
        )
        assert r.status_code == 200
        for headers in (None, token):  # the cookie, then the bearer token
            r = await client.get("/api/v1/auth/me", headers=headers)
            assert r.status_code == 401
            assert r.json()["detail"] == "the user is disabled"


async def test_a_role_changed_since_login_applies_at_once(site: Site) -> None:
    """The token says operator, the database says tenant now: the database wins."""
    user = add_user(site.url, Role.OPERATOR)
    token = bearer(user)
    with psycopg.connect(site.url, autocommit=True) as conn:
        conn.execute(
            "UPDATE users SET role = 'tenant', tenant_id = %s WHERE id = %s",
            (TENANT, user.user_id),
        )
    async with browser(site) as client:
        assert (await client.get("/api/v1/overview", headers=token)).status_code == 403


async def test_a_logged_in_browser_opens_invoices_and_exports_in_a_tab(site: Site) -> None:
    operator = add_user(site.url, Role.OPERATOR)
    tenant = add_user(site.url, Role.TENANT, tenant=TENANT)
    async with browser(site) as client:
        r = await client.post(
            "/api/v1/bills/generate", json={"month": "2026-11"}, headers=bearer(operator)
        )
        assert r.status_code == 200, r.text
        (bill,) = [g["bill"] for g in r.json() if g["bill"]["tenant_id"] == TENANT]

        await log_in(client, tenant)
        page = await client.get(f"/api/v1/bills/{bill['id']}/invoice.html")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert "300.00" in page.text
        lines = await client.get(f"/api/v1/bills/{bill['id']}/lines.csv")
        assert lines.status_code == 200
        assert lines.headers["content-type"].startswith("text/csv")

    async with browser(site) as client:
        await log_in(client, operator)
        for path in ("telemetry.csv", "alarms.csv", "work-orders.csv"):
            r = await client.get(f"/api/v1/export/{path}")
            assert r.status_code == 200, (path, r.text)
            assert r.headers["content-type"].startswith("text/csv")
            assert r.text.splitlines()[0].startswith(("ts,", "id,")), r.text[:100]


async def test_a_session_in_use_is_renewed_and_an_idle_one_ends(site: Site) -> None:
    user = add_user(site.url, Role.OPERATOR)
    idle = site.settings.session_idle_s
    issuer = TokenIssuer(TEST_SECRET, timedelta(seconds=idle))
    csrf = new_csrf_token()
    async with browser(site) as client:
        # Fresh (more than half its idle time left): used as is, no new cookie.
        client.cookies.set("polegw_session", issuer.issue(user, csrf=csrf))
        client.cookies.set("polegw_csrf", csrf)
        r = await client.get("/api/v1/auth/me")
        assert r.status_code == 200, r.text
        assert "polegw_session" not in set_cookies(r)
        # Past half its idle time: the response renews it for a whole idle time.
        client.cookies.set(
            "polegw_session", issuer.issue(user, csrf=csrf, ttl=timedelta(seconds=idle // 3))
        )
        r = await client.get("/api/v1/auth/me")
        assert r.status_code == 200, r.text
        renewed = set_cookies(r)["polegw_session"].lower()
        assert f"max-age={idle}" in renewed
        _, _, expires = issuer.verify_session(r.cookies["polegw_session"])
        assert (expires - datetime.now(UTC)).total_seconds() > idle - 60
        # The renewed session still unlocks writes with the same CSRF value.
        r = await client.post(
            "/api/v1/api-keys", json={"name": "renewed"}, headers={"X-CSRF-Token": csrf}
        )
        assert r.status_code == 201, r.text
        # Idle past its end: gone.
        client.cookies.clear()
        client.cookies.set("polegw_csrf", csrf)
        client.cookies.set(
            "polegw_session",
            issuer.issue(user, datetime.now(UTC) - timedelta(seconds=idle + 1), csrf=csrf),
        )
        assert (await client.get("/api/v1/auth/me")).status_code == 401
