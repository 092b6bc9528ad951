"""Fixtures for the whole polegw test suite.

The tests use a real PostgreSQL and a real MQTT broker. ``scripts/test`` finds
them (or starts throw-away ones) and exports:

- ``POLEGW_TEST_DATABASE_URL``: an admin URL (a superuser, usually
  ``postgresql://postgres@127.0.0.1:5432/postgres``); each test module gets
  its own database created through it;
- ``POLEGW_TEST_MQTT_URL``: the broker, e.g. ``mqtt://127.0.0.1:1883``;
  tests keep apart on it through the ``topic_prefix`` fixture.

Database fixtures:

- ``pg_admin_url`` (session): the admin URL, checked once.
- ``database_url`` (module): a new empty database ``polegw_test_<hex>``, dropped
  after the module.
- ``fresh_database_url`` (function): the same, new for each test.
- ``migrated_database_url`` (module): a new database migrated to head with
  ``gateway.adapters.migrate.upgrade``; a different database from ``database_url``.

All database URLs are plain ``postgresql://`` URLs (what psycopg takes).

- ``pool`` (module): the API's pool on ``database_url``, migrated, with the site
  the test module's ``site()`` returns (``tests.support.small_site`` if it has
  none); a module may define a ``pool`` of its own instead.
- ``registry`` (module): the gateway's ``RegistrySource`` of that database, loaded.

MQTT fixtures:

- ``mqtt_url`` (session): the broker URL, checked once.
- ``mqtt_broker`` (session): the same URL split into host, port, username,
  password, tls (for aiomqtt / paho).
- ``topic_prefix`` (function): ``test-<hex>/poles``, unique per test; use it
  wherever the gateway would use ``poles``.

An unreachable database or broker fails the tests that need it, with the
reason; nothing is skipped.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from gateway.registry_source import RegistrySource

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
TEST_DATABASE_PREFIX = "polegw_test_"

_HINT = "Run the suite with scripts/test, which finds or starts the services."


# --------------------------------------------------------------------------- PostgreSQL


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _with_database(admin_url: str, dbname: str) -> str:
    """The admin URL pointing at another database (query string kept)."""
    return urlunsplit(urlsplit(admin_url)._replace(path="/" + dbname))


@contextmanager
def _temporary_database(admin_url: str) -> Iterator[str]:
    """Create an empty database, yield its URL, drop it (closing its connections)."""
    name = TEST_DATABASE_PREFIX + secrets.token_hex(6)
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        # template0: nobody is ever connected to it, so parallel creates never
        # collide with "source database is being accessed by other users".
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                sql.Identifier(name)
            )
        )
    try:
        yield _with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """Admin (superuser) URL of the test PostgreSQL; fails if it does not answer."""
    url = os.environ.get("POLEGW_TEST_DATABASE_URL") or DEFAULT_DATABASE_URL
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        pytest.fail(
            f"POLEGW_TEST_DATABASE_URL must be a postgresql:// URL, got {_redact(url)!r}",
            pytrace=False,
        )
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL for the tests is not reachable at {_redact(url)}: {exc}".rstrip()
            + f"\n{_HINT} Or set POLEGW_TEST_DATABASE_URL to a superuser URL.",
            pytrace=False,
        )
    return url


@pytest.fixture(scope="module")
def database_url(pg_admin_url: str) -> Iterator[str]:
    """A new, empty database shared by the tests of one module; dropped afterwards."""
    with _temporary_database(pg_admin_url) as url:
        yield url


@pytest.fixture
def fresh_database_url(pg_admin_url: str) -> Iterator[str]:
    """A new, empty database for this test alone; dropped afterwards."""
    with _temporary_database(pg_admin_url) as url:
        yield url


@pytest.fixture(scope="module")
def migrated_database_url(pg_admin_url: str) -> Iterator[str]:
    """A new database with the project's migrations applied (head), per module."""
    from gateway.adapters.migrate import upgrade

    with _temporary_database(pg_admin_url) as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="module")
async def pool(
    database_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[AsyncConnectionPool]:
    """The API's pool on ``database_url``, migrated, with the test module's ``site()``."""
    from tests.support import opened_pool, prepare_database

    site = getattr(request.module, "site", None)
    await prepare_database(database_url, site() if site is not None else None)
    async with opened_pool(database_url) as pool:
        yield pool


@pytest.fixture(scope="module")
async def registry(database_url: str, pool: AsyncConnectionPool) -> RegistrySource:
    """The gateway's registry of the ``pool`` fixture's database, loaded once (it
    refreshes only every minute)."""
    from gateway.core.profiles import load_catalog
    from gateway.metrics import Metrics
    from gateway.registry_source import RegistrySource

    source = RegistrySource(database_url, load_catalog(), Metrics(), every_s=60)
    await source.load()
    return source


# --------------------------------------------------------------------------- MQTT


class MqttBroker(NamedTuple):
    url: str
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool


def _parse_mqtt_url(url: str) -> MqttBroker:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"not an mqtt:// or mqtts:// URL: {_redact(url)!r}")
    tls = parts.scheme == "mqtts"
    return MqttBroker(
        url=url,
        host=parts.hostname,
        port=parts.port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=tls,
    )


def _mqtt_handshake(broker: MqttBroker, timeout: float = 5.0) -> None:
    """Send an MQTT 3.1.1 CONNECT and expect CONNACK 0 (plain TCP only)."""

    def field(data: bytes) -> bytes:
        return len(data).to_bytes(2, "big") + data

    flags = 0x02  # clean session
    payload = field(f"polegw-probe-{secrets.token_hex(4)}".encode())
    if broker.username is not None:
        flags |= 0x80
        payload += field(broker.username.encode())
        if broker.password is not None:
            flags |= 0x40
            payload += field(broker.password.encode())
    body = field(b"MQTT") + bytes([4, flags]) + (30).to_bytes(2, "big") + payload
    length = bytearray()
    n = len(body)
    while True:  # "remaining length" varint
        n, digit = divmod(n, 128)
        length.append(digit | (0x80 if n else 0))
        if not n:
            break
    with socket.create_connection((broker.host, broker.port), timeout=timeout) as sock:
        sock.sendall(bytes([0x10]) + bytes(length) + body)
        ack = b""
        while len(ack) < 4:
            chunk = sock.recv(4 - len(ack))
            if not chunk:
                break
            ack += chunk
        if len(ack) != 4 or ack[0] != 0x20:
            raise ConnectionError(f"no CONNACK from the broker (got {ack!r})")
        if ack[3] != 0:
            raise ConnectionError(f"the broker refused the connection (CONNACK code {ack[3]})")
        sock.sendall(b"\xe0\x00")  # DISCONNECT


@pytest.fixture(scope="session")
def mqtt_broker() -> MqttBroker:
    """The test broker (from POLEGW_TEST_MQTT_URL); fails if it does not answer."""
    url = os.environ.get("POLEGW_TEST_MQTT_URL") or DEFAULT_MQTT_URL
    try:
        broker = _parse_mqtt_url(url)
    except ValueError as exc:
        pytest.fail(f"POLEGW_TEST_MQTT_URL: {exc}", pytrace=False)
    try:
        if broker.tls:
            socket.create_connection((broker.host, broker.port), timeout=5).close()
        else:
            _mqtt_handshake(broker)
    except OSError as exc:
        pytest.fail(
            f"MQTT broker for the tests is not reachable at {_redact(url)}: {exc}"
            f"\n{_HINT} Or set POLEGW_TEST_MQTT_URL.",
            pytrace=False,
        )
    return broker


@pytest.fixture(scope="session")
def mqtt_url(mqtt_broker: MqttBroker) -> str:
    """URL of the test broker, e.g. mqtt://127.0.0.1:1883 (checked to answer)."""
    return mqtt_broker.url


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test uses, e.g. ``test-1a2b3c4d5e6f/poles``."""
    return f"test-{secrets.token_hex(6)}/poles"
