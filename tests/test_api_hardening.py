"""API hardening: security headers on every response, CORS only where configured,
per-user limits on exports and bill runs, /metrics and /readyz's details kept from
outsiders, and a disabled user's token refused at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.api.app import create_app, create_internals_app
from gateway.config import Settings
from gateway.core.auth import Principal
from tests.support import (
    TEST_SECRET,
    add_user,
    api_context,
    bearer,
    opened_pool,
    prepare_database,
)

OUTSIDER = ("203.0.113.7", 40000)  # TEST-NET-3: not loopback, not allowed by default


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    await prepare_database(database_url)
    async with opened_pool(database_url) as p:
        yield p


@asynccontextmanager
async def client(
    pool: AsyncConnectionPool,
    *,
    client_addr: tuple[str, int] = ("127.0.0.1", 50000),
    internals: bool = False,
    **settings: object,
) -> AsyncIterator[httpx.AsyncClient]:
    s = Settings(
        database_url=str(pool.conninfo),
        secret_key=TEST_SECRET,
        **settings,  # type: ignore[arg-type]
    )
    ctx = api_context(s, pool)
    app = create_internals_app(ctx) if internals else create_app(ctx)
    transport = httpx.ASGITransport(app=app, client=client_addr)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        yield c


def staff(pool: AsyncConnectionPool, role: str = "admin") -> Principal:
    return add_user(str(pool.conninfo), role)


async def test_every_response_carries_the_security_headers(pool: AsyncConnectionPool) -> None:
    async with client(pool) as api:
        for path in ("/healthz", "/api/v1/poles", "/no-such-page", "/metrics"):
            r = await api.get(path)
            assert r.headers["x-content-type-options"] == "nosniff", path
            assert r.headers["x-frame-options"] == "DENY", path
            assert r.headers["referrer-policy"] == "no-referrer", path
            assert r.headers["content-security-policy"] == "frame-ancestors 'none'", path
        # Pages with a policy of their own keep it (the console, /docs).
        for path in ("/console/", "/docs"):
            r = await api.get(path, follow_redirects=True)
            assert r.status_code == 200, path
            assert r.headers["x-content-type-options"] == "nosniff"
            csp = r.headers.get_list("content-security-policy")
            assert len(csp) == 1, path
            assert "default-src" in csp[0], path


async def test_a_disabled_users_token_is_refused_on_the_next_request(
    pool: AsyncConnectionPool,
) -> None:
    user = staff(pool, "operator")
    async with client(pool) as api:
        headers = bearer(user)
        assert (await api.get("/api/v1/poles", headers=headers)).status_code == 200
        with psycopg.connect(str(pool.conninfo), autocommit=True) as conn:
            conn.execute("UPDATE users SET disabled = true WHERE id = %s", (user.user_id,))
        r = await api.get("/api/v1/poles", headers=headers)
        assert r.status_code == 401
        assert "disabled" in r.json()["detail"]


async def test_exports_and_bill_runs_are_limited_per_user(pool: AsyncConnectionPool) -> None:
    first, second = staff(pool), staff(pool)
    async with client(pool, api_expensive_per_min=1, api_expensive_burst=2) as api:
        for _ in range(2):
            r = await api.get("/api/v1/export/telemetry.csv", headers=bearer(first))
            assert r.status_code == 200, r.text
        r = await api.post(
            "/api/v1/bills/generate", json={"month": "2026-11"}, headers=bearer(first)
        )
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert "POLEGW_API_EXPENSIVE_PER_MIN" in r.json()["detail"]
        r = await api.get("/api/v1/export/alarms.csv", headers=bearer(first))
        assert r.status_code == 429
        # Another user has a bucket of their own; cheap routes are not limited.
        r = await api.get("/api/v1/export/telemetry.csv", headers=bearer(second))
        assert r.status_code == 200
        assert (await api.get("/api/v1/poles", headers=bearer(first))).status_code == 200


async def test_cors_is_off_unless_origins_are_configured(pool: AsyncConnectionPool) -> None:
    preflight = {
        "Origin": "https://ops.example.net",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "Authorization",
    }
    async with client(pool) as api:
        r = await api.options("/api/v1/poles", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    async with client(pool, cors_origins=["https://ops.example.net"]) as api:
        r = await api.options("/api/v1/poles", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ops.example.net"
        other = await api.options(
            "/api/v1/poles", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers
    with pytest.raises(ValueError, match="not an origin"):
        Settings(cors_origins=["*"])


async def test_metrics_and_readiness_details_are_kept_from_outsiders(
    pool: AsyncConnectionPool,
) -> None:
    async with client(pool, client_addr=OUTSIDER) as api:
        assert (await api.get("/healthz")).status_code == 200
        r = await api.get("/metrics")
        assert r.status_code == 401
        assert "POLEGW_METRICS_PORT" in r.json()["detail"]
        tenant = add_user(str(pool.conninfo), "tenant", tenant="tn-telecom")
        assert (await api.get("/metrics", headers=bearer(tenant))).status_code == 403
        r = await api.get("/metrics", headers=bearer(staff(pool, "operator")))
        assert r.status_code == 200
        assert "polegw_dead_letters_total" in r.text
        r = await api.get("/readyz")
        assert r.json() == {"ready": True}
    # An allowed network sees everything without login.
    async with client(pool, client_addr=OUTSIDER, metrics_allow=["203.0.113.0/24"]) as api:
        assert (await api.get("/metrics")).status_code == 200
        assert (await api.get("/readyz")).json()["checks"]["database"] == "ok"
    # So does whoever reaches the internals port (POLEGW_METRICS_PORT).
    async with client(pool, client_addr=OUTSIDER, internals=True) as api:
        assert (await api.get("/metrics")).status_code == 200
        assert "checks" in (await api.get("/readyz")).json()
        assert (await api.get("/api/v1/poles")).status_code == 404
    with pytest.raises(ValueError, match="not a network"):
        Settings(metrics_allow=["loopback"])
