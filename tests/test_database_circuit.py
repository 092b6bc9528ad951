"""The database circuit (issue 16 item 14): once the probe has seen the database
fail, /readyz and every /api/v1 request answer 503 at once (not after the pool's
5 s), /healthz stays instant, and all answer 200 again once the database is back.

The outage is a TCP gate in front of the test's PostgreSQL (tests/faults.py)."""

from __future__ import annotations

import asyncio
import time

import httpx
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.db import DatabaseHealth
from gateway.api.app import create_app
from gateway.service import open_pool
from tests.faults import gated
from tests.support import (
    TEST_PASSWORD,
    add_user,
    api_context,
    bearer,
    eventually,
    gateway_settings,
)


async def timed(
    client: httpx.AsyncClient, method: str, path: str, **kw: object
) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await client.request(method, path, **kw)  # type: ignore[arg-type]
    return response, time.perf_counter() - started


async def test_an_open_circuit_answers_503_at_once_and_closes_when_the_database_returns(
    database_url: str, pool: AsyncConnectionPool, mqtt_url: str, topic_prefix: str
) -> None:
    admin = add_user(database_url, "admin")
    headers = bearer(admin)
    login = {"data": {"username": admin.name, "password": TEST_PASSWORD}}
    async with gated(database_url) as (gate, url):
        settings = gateway_settings(url, mqtt_url, topic_prefix)
        health = DatabaseHealth(url, every_s=0.5)
        stop = asyncio.Event()
        probe = asyncio.create_task(health.run(stop))
        api_pool = open_pool(url)
        await api_pool.open()
        app = create_app(api_context(settings, api_pool, database=health))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                assert (await client.get("/readyz")).status_code == 200
                assert (await client.get("/api/v1/poles", headers=headers)).status_code == 200

                await gate.close()
                await eventually(lambda: not health.up, within=5, what="the circuit to open")
                for method, path, kw in (
                    ("GET", "/readyz", {}),
                    ("GET", "/api/v1/poles", {"headers": headers}),
                    ("GET", "/api/v1/overview", {"headers": headers}),
                    ("POST", "/api/v1/auth/token", login),
                ):
                    r, seconds = await timed(client, method, path, **kw)
                    assert r.status_code == 503, (path, r.text)
                    assert seconds < 0.5, (path, seconds)
                    assert "database" in r.text, r.text
                    if path != "/readyz":
                        assert r.headers["retry-after"] == "5"
                # A database that accepts and never answers: the answer still comes
                # at once (a request waits at most 0.3 s for a fresh probe).
                await gate.stall()
                for path in ("/readyz", "/api/v1/poles"):
                    r, seconds = await timed(client, "GET", path, headers=headers)
                    assert r.status_code == 503, (path, r.text)
                    assert seconds < 0.5, (path, seconds)
                r, seconds = await timed(client, "GET", "/healthz")
                assert r.status_code == 200
                assert seconds < 0.5
                assert "unreachable" in (await client.get("/readyz")).json()["checks"]["database"]

                # Back: the very first request is served (it probes afresh).
                await gate.open()
                assert (await client.get("/readyz")).status_code == 200
                assert health.up
                r = await client.get("/api/v1/poles", headers=headers, timeout=15)
                assert r.status_code == 200, r.text
        finally:
            stop.set()
            await probe
            await api_pool.close()
