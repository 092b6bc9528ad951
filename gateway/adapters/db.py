"""Database connection details shared by the adapters, and the pool that scopes
a tenant's connections for row-level security."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, LiteralString
from urllib.parse import urlsplit, urlunsplit
from weakref import WeakSet

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from gateway.errors import ConfigError

log = logging.getLogger(__name__)


def libpq_url(url: str) -> str:
    """A URL psycopg accepts: postgresql://… (SQLAlchemy's +driver suffix removed)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        # Never echo the URL: it may hold a password.
        got = f"it starts with {parts.scheme}://" if parts.scheme else "it has no scheme"
        raise ConfigError(
            f"the database URL must look like postgresql://user:password@host:5432/dbname ({got})"
        )
    return urlunsplit(("postgresql", *parts[1:]))


def sqlalchemy_url(url: str) -> str:
    """The same database for SQLAlchemy with the psycopg 3 driver."""
    return "postgresql+psycopg" + libpq_url(url)[len("postgresql") :]


def redacted(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit((parts.scheme, f"{user}@{netloc[-1]}", *parts[2:]))


# --------------------------------------------------------------------------- tenant scope
#
# Row-level security (migration 0013) is the second wall between tenants: a
# connection that serves a tenant's request runs as the role TENANT_ROLE, which
# cannot bypass the policies, with the tenant in the setting TENANT_SETTING.
# The first wall is the tenant filter of every query; this one holds when a
# filter is forgotten. The gateway's own connection (staff, ingest, billing
# runs) owns the tables and is not subject to the policies.

TENANT_ROLE = "polegw_tenant"
TENANT_SETTING = "polegw.tenant_id"

_tenant: ContextVar[str | None] = ContextVar("polegw_tenant", default=None)

_SCOPE = "SELECT set_config('role', %s, false), set_config(%s, %s, false)"
_UNSCOPE = f"RESET ROLE; RESET {TENANT_SETTING}"


def current_tenant() -> str | None:
    """The tenant the connections of this task are scoped to (None: not scoped)."""
    return _tenant.get()


@contextmanager
def tenant_scope(tenant_id: str | None) -> Iterator[None]:
    """Scope the connections this task (and the tasks it starts) checks out of a
    TenantScopedPool to `tenant_id`; None lifts the scope for the block."""
    token = _tenant.set(tenant_id)
    try:
        yield
    finally:
        _tenant.reset(token)


async def _outside_transaction(
    conn: psycopg.AsyncConnection[Any], query: LiteralString, args: Sequence[object] = ()
) -> None:
    """Run a session-level statement in autocommit, so that it is in force at once
    and no later rollback undoes it; the connection is left as it was."""
    if conn.autocommit:
        await conn.execute(query, args or None)
        return
    await conn.set_autocommit(True)
    try:
        await conn.execute(query, args or None)
    finally:
        if conn.pgconn.transaction_status == TransactionStatus.IDLE:
            await conn.set_autocommit(False)


Conn = psycopg.AsyncConnection[TupleRow]


class TenantScopedPool(AsyncConnectionPool[Conn]):
    """A pool whose connections, checked out while a tenant scope is set
    (`tenant_scope`), run as TENANT_ROLE with that tenant; on their return the
    pool rolls back what was left open, then resets role and tenant before anyone
    else gets the connection (a failed reset closes it instead)."""

    def __init__(self, conninfo: str = "", **kwargs: Any) -> None:
        if "reset" in kwargs:
            raise TypeError("TenantScopedPool resets connections itself")
        self._scoped: WeakSet[Conn] = WeakSet()
        super().__init__(conninfo, reset=self._unscope, **kwargs)

    # the signature of AsyncConnectionPool.getconn, timeout included
    async def getconn(self, timeout: float | None = None) -> Conn:  # noqa: ASYNC109
        conn = await super().getconn(timeout)
        tenant = _tenant.get()
        if tenant is not None:
            self._scoped.add(conn)  # before: a half-done scope is undone on return too
            try:
                await _outside_transaction(conn, _SCOPE, (TENANT_ROLE, TENANT_SETTING, tenant))
            except BaseException:
                await self.putconn(conn)
                raise
        return conn

    async def _unscope(self, conn: Conn) -> None:
        if conn in self._scoped:
            await _outside_transaction(conn, _UNSCOPE)
            self._scoped.discard(conn)


# --------------------------------------------------------------------------- health
#
# A circuit in front of the database (issue 16): while PostgreSQL is down, every
# request that needs it would wait the pool's timeout (5 s) before its 503. Once
# the probe has seen the database fail, the API answers 503 at once instead, and
# the probe closes the circuit again within `every_s` of the database's return.


class DatabaseHealth:
    """Whether the database answers, known without waiting: a probe on a
    connection of its own (never one of the pool's, which may all be busy) runs
    `SELECT 1` every `every_s` seconds, and at once when `suspect()` is called
    (a request just failed for want of the database)."""

    def __init__(self, database_url: str, *, every_s: float = 1.0, timeout_s: float = 2.0) -> None:
        self._url = libpq_url(database_url)
        self._every_s = every_s
        self._timeout_s = timeout_s
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None
        self._lock = asyncio.Lock()  # one probe at a time on the one connection
        self._inflight: asyncio.Task[bool] | None = None  # a probe a request started
        self._recheck_started = -math.inf  # monotonic start of `_inflight`
        self._wake = asyncio.Event()
        self.up = True  # until the first probe says otherwise: requests find out themselves
        self.detail = ""  # why the database is down (the probe's last error)
        self.changed = asyncio.Event()  # set on every change of `up` (for waiters)

    def suspect(self) -> None:
        """A request failed for want of the database: probe now."""
        self._wake.set()

    async def recheck(self, *, wait_s: float = 0.3) -> bool:
        """For a request while the circuit is open: the verdict of a probe that
        started after the request arrived, so the first request after the
        database is back is served. Concurrent requests share one probe (one at
        a time), and none waits more than `wait_s` (a database that does not
        answer at all must not make requests hang)."""
        if self.up:
            return True
        asked = time.monotonic()
        try:
            async with asyncio.timeout(wait_s):
                while True:
                    task = self._inflight
                    if task is None or task.done():
                        self._recheck_started = time.monotonic()
                        task = asyncio.create_task(self.probe(), name="database-recheck")
                        self._inflight = task
                    fresh = self._recheck_started >= asked
                    up = await asyncio.shield(task)
                    if up or fresh:
                        return up
        except TimeoutError:
            return self.up

    async def probe(self) -> bool:
        """One probe; updates `up` and `detail` and returns `up`."""
        async with self._lock:
            return await self._probe()

    async def _probe(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self._url,
                        autocommit=True,
                        application_name="polegw-health",
                        connect_timeout=max(2, math.ceil(self._timeout_s)),
                    )
                await self._conn.execute("SELECT 1")
        except (psycopg.Error, OSError, TimeoutError) as exc:
            await self._drop()
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self._set(False, why if not isinstance(exc, TimeoutError) else "no answer in time")
        else:
            self._set(True, "")
        return self.up

    def _set(self, up: bool, detail: str) -> None:
        if up != self.up:
            if up:
                log.info("database reachable again; API requests are served again")
            else:
                log.error("database unreachable (%s); API requests answer 503 at once", detail)
            self.changed.set()
            self.changed = asyncio.Event()
        self.up = up
        self.detail = detail

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Probe until `stop` is set."""
        try:
            while not stop.is_set():
                self._wake.clear()
                await self.probe()
                waiters = {
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(self._wake.wait()),
                }
                try:
                    await asyncio.wait(
                        waiters, timeout=self._every_s, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for w in waiters:
                        w.cancel()
        finally:
            if self._inflight is not None and not self._inflight.done():
                self._inflight.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._inflight
            await self._drop()
