"""Database connection details shared by the adapters, and the pool that scopes
a tenant's connections for row-level security."""

from __future__ import annotations

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
