"""The database circuit (issue 16 item 14): once the probe has seen the database
fail, /readyz and every /api/v1 request answer 503 at once (not after the pool's
5 s), /healthz stays instant, and all answer 200 again once the database is back.

The outage is a TCP gate in front of the test's PostgreSQL: closed, it cuts the
open connections and refuses new ones, as a stopped server would."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import httpx
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.db import DatabaseHealth
from gateway.api.app import create_app
from gateway.service import open_pool
from tests.support import (
    TEST_PASSWORD,
    add_user,
    api_context,
    bearer,
    eventually,
    free_port,
    gateway_settings,
)


class TcpGate:
    """A TCP forwarder on 127.0.0.1:`port` to `host`:`target`; `close()` cuts every
    connection and stops listening, `open()` listens again on the same port."""

    def __init__(self, host: str, target: int) -> None:
        self.host, self.target = host, target
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{user}127.0.0.1:{port}", *parts[2:]))


@contextlib.asynccontextmanager
async def gated(database_url: str) -> AsyncIterator[tuple[TcpGate, str]]:
    parts = urlsplit(database_url)
    gate = TcpGate(parts.hostname or "127.0.0.1", parts.port or 5432)
    await gate.open()
    try:
        yield gate, through(database_url, gate.port)
    finally:
        if gate._server is not None:
            await gate.close()


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
                r, seconds = await timed(client, "GET", "/healthz")
                assert r.status_code == 200
                assert seconds < 0.5
                assert "unreachable" in (await client.get("/readyz")).json()["checks"]["database"]

                await gate.open()
                await eventually(lambda: health.up, within=5, what="the circuit to close")
                assert (await client.get("/readyz")).status_code == 200
                r = await client.get("/api/v1/poles", headers=headers, timeout=15)
                assert r.status_code == 200, r.text
        finally:
            stop.set()
            await probe
            await api_pool.close()
