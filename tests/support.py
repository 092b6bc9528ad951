"""Helpers shared by the integration tests: a small site, a gateway in-process, a publisher."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as paho
import psycopg
from fastapi import FastAPI, routing
from fastapi.routing import APIRoute
from paho.mqtt.enums import CallbackAPIVersion
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.credentials import TokenIssuer, hash_password
from gateway.adapters.migrate import upgrade
from gateway.adapters.site_store import import_site
from gateway.api.app import create_app
from gateway.api.deps import ApiContext
from gateway.config import MqttEndpoint, Settings
from gateway.core.auth import Principal, Role
from gateway.core.profiles import load_catalog
from gateway.core.registry import Registry
from gateway.core.site import DeviceSpec, PoleSpec, SiteSpec, TenantSpec
from gateway.metrics import Metrics
from gateway.service import open_pool, run_gateway

POLES = ("P0001", "P0002", "P0003")
TEST_SECRET = "polegw-test-secret-not-for-production-0123456789"
TEST_PASSWORD = "test-password-123"


def poles_with(poles: Iterable[str], **devices: str) -> SiteSpec:
    """A site of `poles`, each with one device per keyword: `poles_with(["P1"],
    lamp="lamp-controller")` is pole P1 with device P1-lamp of that profile."""
    return SiteSpec(
        poles=[
            PoleSpec(
                id=pole,
                devices=[
                    DeviceSpec(id=f"{pole}-{suffix}", profile=profile)
                    for suffix, profile in devices.items()
                ],
            )
            for pole in poles
        ]
    )


def small_site() -> SiteSpec:
    """Three poles, each with a lamp and an environmental station over MQTT."""
    return SiteSpec(
        tenants=[TenantSpec(id="tn-telecom", name="City Telecom")],
        poles=[
            PoleSpec(
                id=pole,
                name=f"Renmin Rd {i}",
                devices=[
                    DeviceSpec(id=f"{pole}-lamp", profile="lamp-controller"),
                    DeviceSpec(id=f"{pole}-env", profile="env-station"),
                    DeviceSpec(id=f"{pole}-cab", profile="cabinet-monitor"),
                ],
            )
            for i, pole in enumerate(POLES, start=1)
        ],
    )


def telemetry_message(pole: str, ts: datetime, seq: int) -> bytes:
    """A batch message with 8 readings (5 lamp, 3 env)."""
    x = seq % 50
    return orjson.dumps(
        {
            "ts": ts.isoformat().replace("+00:00", "Z"),
            "seq": seq,
            "devices": {
                f"{pole}-lamp": {
                    "voltage_v": 229.0 + x / 10,
                    "power_w": 90.0 + x,
                    "energy_kwh": 1000 + seq / 100,
                    "dim_pct": 80,
                    "lamp_on": True,
                },
                f"{pole}-env": {"pm25_ugm3": 30.0 + x, "temp_c": 12.5, "noise_dba": 61.2},
            },
        }
    )


READINGS_PER_MESSAGE = 8


def stream(prefix: str, count: int, *, start: datetime | None = None) -> list[tuple[str, bytes]]:
    """`count` telemetry messages spread over the three poles, all readings distinct."""
    t0 = start or datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
    out = []
    for seq in range(count):
        pole = POLES[seq % len(POLES)]
        out.append(
            (
                f"{prefix}/{pole}/telemetry",
                telemetry_message(pole, t0 + timedelta(seconds=seq), seq),
            )
        )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_SPOOLS = tempfile.TemporaryDirectory(prefix="polegw-test-spools-")  # removed at exit


def gateway_settings(database_url: str, mqtt_url: str, prefix: str, **extra: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "mqtt_url": mqtt_url,
        "mqtt_topic_prefix": prefix,
        "mqtt_client_id": f"polegw-test-{secrets.token_hex(4)}",
        "api_port": free_port(),
        "registry_refresh_s": 0.5,
        # Sessions of test gateways should not outlive the test run on a shared broker.
        "mqtt_session_expiry_s": 120,
        "secret_key": TEST_SECRET,
        # Each gateway its own spool: a shared one would drain one test's batches
        # into another test's database.
        "spool_dir": Path(_SPOOLS.name) / secrets.token_hex(4),
    }
    values.update(extra)
    return Settings(**values)  # type: ignore[arg-type]


def add_user(
    database_url: str, role: Role | str, *, tenant: str | None = None, name: str | None = None
) -> Principal:
    """A user in the database (password TEST_PASSWORD), as the principal a token names."""
    role = Role(role)
    name = name or f"{role.value}-{secrets.token_hex(4)}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO users (name, role, tenant_id, password_hash) VALUES (%s, %s, %s, %s)"
            " RETURNING id",
            (name, role.value, tenant, _TEST_HASH),
        ).fetchone()
    assert row is not None
    return Principal(int(row[0]), name, role, tenant)


_TEST_HASH = hash_password(TEST_PASSWORD)


def bearer(principal: Principal, *, ttl_s: int = 900, secret: str = TEST_SECRET) -> dict[str, str]:
    token = TokenIssuer(secret, timedelta(seconds=ttl_s)).issue(principal)
    return {"Authorization": f"Bearer {token}"}


def auth_headers(database_url: str, role: Role | str = Role.ADMIN, **kw: str) -> dict[str, str]:
    return bearer(add_user(database_url, role, **kw))


def api_context(settings: Settings, pool: AsyncConnectionPool, **extra: object) -> ApiContext:
    """The API's context for a test app built on `pool`, without the gateway around it."""
    values: dict[str, object] = {
        "settings": settings,
        "pool": pool,
        "catalog": load_catalog(),
        "metrics": Metrics(),
        "tokens": TokenIssuer(TEST_SECRET, timedelta(seconds=settings.token_ttl_s)),
        "registry": lambda: Registry((), ()),
        "mqtt_connected": lambda: True,
    }
    values.update(extra)
    return ApiContext(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def opened_pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    """The API's pool (`open_pool`) on `database_url`, open for the block."""
    pool = open_pool(database_url)
    await pool.open()
    try:
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def api_client(
    settings: Settings,
    pool: AsyncConnectionPool | None = None,
    *,
    base_url: str = "http://api",
    headers: dict[str, str] | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the API app of `settings` (context: `api_context`), served
    from `pool`, or from a pool of its own on the settings' database, open for the block."""
    async with contextlib.AsyncExitStack() as stack:
        if pool is None:
            pool = await stack.enter_async_context(opened_pool(settings.require_database_url()))
        transport = httpx.ASGITransport(app=create_app(api_context(settings, pool)))
        yield await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url=base_url, headers=headers)
        )


def api_routes(app: FastAPI | None = None) -> list[tuple[str, APIRoute]]:
    """The API routes of `app` (default: an app on no database) with their full paths."""
    if app is None:
        settings = Settings(database_url="postgresql://unused/")
        app = create_app(api_context(settings, open_pool("postgresql://unused/")))
    # FastAPI >= 0.160 keeps included routers nested; older ones flatten them.
    contexts = getattr(routing, "iter_route_contexts", None)
    pairs = (
        [(c.path, c.route) for c in contexts(app.router.routes)]
        if contexts is not None
        else [(getattr(r, "path", ""), r) for r in app.routes]
    )
    return [(path, route) for path, route in pairs if isinstance(route, APIRoute)]


def dependency_calls(dependant: object) -> set[object]:
    """Every callable a route's dependant (`route.dependant`) depends on, at any depth."""
    found = {getattr(dependant, "call", None)}
    for sub in getattr(dependant, "dependencies", []):
        found |= dependency_calls(sub)
    return found


@dataclass
class RunningGateway:
    settings: Settings
    metrics: Metrics
    stop: asyncio.Event
    task: asyncio.Task[None]
    headers: dict[str, str]  # an admin's bearer token

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"


@contextlib.asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    """Run the gateway in this loop until the block ends; waits until it is subscribed."""
    stop = asyncio.Event()
    subscribed = asyncio.Event()
    metrics = Metrics()
    task = asyncio.create_task(run_gateway(settings, stop, metrics=metrics, subscribed=subscribed))
    try:
        async with asyncio.timeout(15):
            waiter = asyncio.ensure_future(subscribed.wait())
            done, _ = await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()
            await wait_for_port(settings.api_port)
        headers = auth_headers(settings.require_database_url())
        yield RunningGateway(settings, metrics, stop, task, headers)
    finally:
        stop.set()
        async with asyncio.timeout(20):
            await task


async def wait_for_port(port: int) -> None:
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def prepare_database(database_url: str, site: SiteSpec | None = None) -> None:
    """Migrate an empty database and import the site."""
    await asyncio.to_thread(upgrade, database_url)
    await import_site(database_url, site or small_site())


def prepare_database_sync(database_url: str, site: SiteSpec | None = None) -> None:
    """prepare_database for synchronous fixtures."""
    asyncio.run(prepare_database(database_url, site))


def publish(mqtt_url: str, messages: Iterable[tuple[str, bytes]], *, qos: int = 1) -> int:
    """Publish with a real MQTT client and wait until the broker acknowledged each one."""
    endpoint = MqttEndpoint(mqtt_url)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{secrets.token_hex(4)}")
    if endpoint.username:
        client.username_pw_set(endpoint.username, endpoint.password)
    client.max_inflight_messages_set(100)
    client.connect(endpoint.host, endpoint.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=qos) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
        return len(infos)
    finally:
        client.disconnect()
        client.loop_stop()


def count(database_url: str, sql: str, *args: object) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql, args).fetchone()
        assert row is not None
        return int(row[0])


async def eventually(
    check: Callable[[], bool], *, within: float = 20, what: str = "condition"
) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.1)
