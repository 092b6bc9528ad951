"""Tenant isolation (issue 5): tenant A reads nothing of tenant B.

Two walls, each tested on its own:

- the routes filter by the caller's tenant: every tenant route, driven from the
  ROUTES table below, answers 404 (or leaves B out of a list) for B's objects,
  while B itself gets them;
- PostgreSQL row-level security (migration 0013): a connection serving a tenant
  runs as the role polegw_tenant with the tenant in polegw.tenant_id and sees
  only that tenant's rows, even through a query that forgets the tenant filter.

Tenant A leases on pole M1 (port M1-p1), B on M2 (M2-p1); each has an
application, a lease in service with its history, meter readings, a usage flag,
a bill with a line, a user and an API key, all written as the owner.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from gateway.adapters.db import (
    TENANT_ROLE,
    TENANT_SETTING,
    TenantScopedPool,
    current_tenant,
    tenant_scope,
)
from gateway.api.app import create_app
from gateway.api.deps import Context
from gateway.api.security import AnyUser
from gateway.config import Settings
from gateway.core.auth import Role
from gateway.core.site import (
    CapacitySpec,
    CompartmentSpec,
    DeviceSpec,
    PoleSpec,
    PortSpec,
    SiteSpec,
    SlotSpec,
    TenantSpec,
)
from gateway.service import open_pool
from tests.support import add_user, api_context, api_routes, bearer, prepare_database

A, B = "tn-a", "tn-b"
T0 = datetime(2026, 11, 10, tzinfo=UTC)  # readings: six hours from here


def pole(pid: str) -> PoleSpec:
    return PoleSpec(
        id=pid,
        devices=[DeviceSpec(id=f"{pid}-pm", profile="port-meter-4")],
        capacity=CapacitySpec(max_load_kg=100, max_wind_area_m2=1.0, power_budget_w=2000),
        slots=[
            SlotSpec(
                id=f"{pid}-{pos}",
                position=pos,
                max_load_kg=30,
                max_wind_area_m2=0.5,
                max_power_w=600,
            )
            for pos in ("top", "mid")
        ],
        compartments=[CompartmentSpec(id=f"{pid}-cab", name="A", units=4)],
        ports=[PortSpec(id=f"{pid}-p{n}", meter=f"{pid}-pm", port=n, rated_w=600) for n in (1, 2)],
    )


SITE = SiteSpec(
    tenants=[TenantSpec(id=A, name="A Telecom"), TenantSpec(id=B, name="B Cams")],
    poles=[pole("M1"), pole("M2")],
)


def equipment() -> dict[str, Any]:
    return {
        "devices": [
            {
                "type": "camera",
                "model": "C1",
                "quantity": 1,
                "weight_kg": 5,
                "wind_area_m2": 0.1,
                "power_w": 100,
            }
        ],
        "voltage_v": 220,
    }


def application_body(pole_id: str, slots: list[str] | None = None) -> dict[str, Any]:
    return equipment() | {"poles": [{"pole_id": pole_id, "slots": slots or []}]}


@dataclass(frozen=True)
class Tenant:
    """One tenant's objects, and a bearer token of one of its users."""

    id: str
    pole: str
    port: str
    application: int
    lease: int
    bill: int
    api_key: str
    user_id: int
    headers: dict[str, str]


def seed(url: str, tenant: str, pole_id: str) -> Tenant:
    user = add_user(url, "tenant", tenant=tenant)
    port = f"{pole_id}-p1"
    with psycopg.connect(url, autocommit=True) as conn:

        def one(query: LiteralString, *args: object) -> Any:
            row = conn.execute(query, args).fetchone()
            assert row is not None
            return row[0]

        app = one(
            "INSERT INTO applications (tenant_id, state, devices, poles, created_by)"
            " VALUES (%s, 'returned', %s, %s, %s) RETURNING id",
            tenant,
            Jsonb(equipment()["devices"]),
            Jsonb([{"pole_id": pole_id, "slots": [f"{pole_id}-top"]}]),
            user.user_id,
        )
        conn.execute(
            "INSERT INTO application_history (application_id, by, to_state, note)"
            " VALUES (%s, %s, 'submitted', 'submitted')",
            (app, user.user_id),
        )
        conn.execute(
            "INSERT INTO application_overrides (application_id, pole_id, check_name, reason, by)"
            " VALUES (%s, %s, 'slot_wind_area', 'report 7', %s)",
            (app, pole_id, user.user_id),
        )
        lease = one(
            "INSERT INTO leases (tenant_id, pole_id, state, application_id, slot_id,"
            " compartment_id, port_id, load_kg, power_w, cabinet_units, rates)"
            " VALUES (%s, %s, 'in_service', %s, %s, %s, %s, 5, 100, 1, %s) RETURNING id",
            tenant,
            pole_id,
            app,
            f"{pole_id}-top",
            f"{pole_id}-cab",
            port,
            Jsonb({"tariff": "default"}),
        )
        conn.execute(
            "INSERT INTO lease_history (lease_id, state, since) VALUES (%s, 'contracted', %s),"
            " (%s, 'in_service', %s)",
            (lease, T0 - timedelta(days=3), lease, T0 - timedelta(days=1)),
        )
        conn.execute(
            'INSERT INTO usage_flags (port_id, start, "end", excess_kwh, lease_id)'
            " VALUES (%s, %s, %s, 0.5, %s)",
            (port, T0, T0 + timedelta(minutes=15), lease),
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO telemetry (ts, device_id, metric, value) VALUES (%s, %s, %s, %s)",
                [
                    (T0 + timedelta(minutes=15 * i), f"{pole_id}-pm", "port1_energy_kwh", i / 4)
                    for i in range(25)
                ],
            )
        bill = one(
            "INSERT INTO bills (tenant_id, month, total_amount) VALUES (%s, '2026-10', 12.50)"
            " RETURNING id",
            tenant,
        )
        conn.execute(
            "INSERT INTO bill_lines (bill_id, kind, lease_id, label, quantity, unit,"
            " unit_price, amount) VALUES (%s, 'rent', %s, 'rent', 31, 'day', 0.4, 12.50)",
            (bill, lease),
        )
        key = f"key{tenant.replace('-', '')}"
        conn.execute(
            "INSERT INTO api_keys (id, user_id, name, secret_sha256) VALUES (%s, %s, 'ci', %s)",
            (key, user.user_id, b"\0" * 32),
        )
    return Tenant(tenant, pole_id, port, app, lease, bill, key, user.user_id, bearer(user))


@dataclass
class Env:
    url: str
    app: FastAPI
    client: httpx.AsyncClient
    pool: TenantScopedPool
    a: Tenant
    b: Tenant
    operator: dict[str, str]


async def probe(ctx: Context, principal: AnyUser) -> dict[str, Any]:
    """Who the request's connections are, and what an unfiltered query returns,
    directly and from a task the endpoint starts (as a store might)."""
    return {
        "scope": current_tenant(),
        "direct": await whoami(ctx.pool),
        "task": await asyncio.create_task(whoami(ctx.pool)),
    }


async def probe_stream(ctx: Context, principal: AnyUser) -> StreamingResponse:
    """The same, from inside a streamed body (sent after the endpoint returned)."""

    async def body() -> AsyncIterator[str]:
        yield str(await whoami(ctx.pool))

    return StreamingResponse(body(), media_type="text/plain")


async def whoami(pool: Any) -> list[Any]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT current_user::text, current_setting(%s, true),"
            " (SELECT coalesce(array_agg(DISTINCT tenant_id ORDER BY tenant_id), '{}')"
            "  FROM leases)",
            (TENANT_SETTING,),
        )
        row = await cur.fetchone()
    assert row is not None
    return list(row)


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    await prepare_database(database_url, SITE)
    a = seed(database_url, A, "M1")
    b = seed(database_url, B, "M2")
    pool = open_pool(database_url)
    assert isinstance(pool, TenantScopedPool)  # what the gateway serves the API with
    await pool.open()
    app = create_app(api_context(Settings(database_url=database_url), pool))
    app.add_api_route("/api/v1/_probe", probe, methods=["GET"])
    app.add_api_route("/api/v1/_probe_stream", probe_stream, methods=["GET"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api/api/v1") as client:
        operator = bearer(add_user(database_url, "operator"))
        yield Env(database_url, app, client, pool, a, b, operator)
    await pool.close()


# --------------------------------------------------------------------------- the API


@dataclass(frozen=True)
class Route:
    """A tenant route on another tenant's object: {application}, {lease}, {port},
    {bill}, {pole}, {api_key}, {id} are filled in from the object's owner."""

    method: str
    path: str
    body: dict[str, Any] | None = None
    params: dict[str, str] | None = None


WINDOW = {"start": T0.isoformat(), "end": (T0 + timedelta(hours=6)).isoformat()}

# B's objects asked for by A: 404 each (and B itself gets them). Writes come last
# in their group: B's own call may change the object's state.
ROUTES = [
    Route("GET", "/applications/{application}"),
    Route("GET", "/applications/{application}/history"),
    Route("GET", "/applications/{application}/review"),
    Route("PUT", "/applications/{application}", body=application_body("M2")),
    Route("POST", "/applications/{application}/transitions", body={"to": "withdrawn"}),
    Route("GET", "/leases/{lease}"),
    Route("GET", "/leases/{lease}/history"),
    Route("POST", "/leases/{lease}/changes", body=equipment()),
    Route("GET", "/ports/{port}"),
    Route("GET", "/usage", params={"port": "{port}", **WINDOW}),
    Route("GET", "/bills/{bill}"),
    Route("GET", "/bills/{bill}/lines.csv"),
    Route("GET", "/bills/{bill}/invoice.html"),
    Route("GET", "/poles/{pole}"),
    Route("DELETE", "/api-keys/{api_key}"),
]


@dataclass(frozen=True)
class Listing:
    """A tenant list route: what it lists (`items` of a page, or the body), the
    field that names each entry, and the Tenant attribute it is compared with."""

    path: str
    field: str
    attr: str
    params: dict[str, str] | None = None
    items: str | None = "items"


# A's lists: A's own entry is there, none of B's, even when A asks for B's.
LISTINGS = [
    Listing("/applications", "id", "application"),
    Listing("/leases", "id", "lease"),
    Listing("/leases", "id", "lease", params={"pole_id": "{pole}"}),
    Listing("/ports", "id", "port"),
    Listing("/usage", "port_id", "port", params=WINDOW, items="ports"),
    Listing("/usage", "port_id", "port", params={"tenant": "{id}", **WINDOW}, items="ports"),
    Listing("/bills", "id", "bill"),
    Listing("/bills", "id", "bill", params={"tenant": "{id}"}),
    Listing("/poles", "id", "pole"),
    Listing("/api-keys", "id", "api_key", items=None),
]


def fill(template: str, owner: Tenant) -> str:
    return template.format(
        application=owner.application,
        lease=owner.lease,
        port=owner.port,
        bill=owner.bill,
        pole=owner.pole,
        api_key=owner.api_key,
        id=owner.id,
    )


async def call(env: Env, route: Route, owner: Tenant, headers: dict[str, str]) -> httpx.Response:
    params = {k: fill(v, owner) for k, v in (route.params or {}).items()}
    return await env.client.request(
        route.method, fill(route.path, owner), params=params, json=route.body, headers=headers
    )


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_another_tenants_object_is_not_found(env: Env, route: Route) -> None:
    r = await call(env, route, env.b, env.a.headers)
    assert r.status_code == 404, r.text
    assert env.b.id not in r.text
    mine = await call(env, route, env.b, env.b.headers)  # the route does work for B
    assert mine.status_code != 404, mine.text
    assert mine.status_code < (300 if route.method == "GET" else 500), mine.text


def entries(listing: Listing, body: Any) -> set[str]:
    rows = body if listing.items is None else body[listing.items]
    return {str(row[listing.field]) for row in rows}


@pytest.mark.parametrize("listing", LISTINGS, ids=lambda x: f"{x.path}?{','.join(x.params or {})}")
async def test_lists_hold_only_the_callers_own(env: Env, listing: Listing) -> None:
    for caller, other in ((env.a, env.b), (env.b, env.a)):
        own = {k: fill(v, caller) for k, v in (listing.params or {}).items()}
        r = await env.client.get(listing.path, params=own, headers=caller.headers)
        assert r.status_code == 200, r.text
        assert str(getattr(caller, listing.attr)) in entries(listing, r.json())
        theirs = {k: fill(v, other) for k, v in (listing.params or {}).items()}
        r = await env.client.get(listing.path, params=theirs, headers=caller.headers)
        assert r.status_code == 200, r.text
        assert str(getattr(other, listing.attr)) not in entries(listing, r.json())
        assert other.id not in r.text


# Tenant routes that name no other tenant's object: what they do is the caller's own.
OWN_ONLY = {
    ("GET", "/auth/me"),
    ("POST", "/applications"),  # submits for the caller's tenant
    ("POST", "/api-keys"),  # for another user: 403 unless admin
    ("GET", "/events"),  # a tenant's stream carries no staff events: tests/test_live_events.py
    # Name poles, not objects; that they tell nothing of others: the capacity tests below.
    ("GET", "/capacity/free"),
    ("POST", "/applications/check"),
}
PARAMS = {
    "application_id": "application",
    "lease_id": "lease",
    "port_id": "port",
    "bill_id": "bill",
    "pole_id": "pole",
    "key_id": "api_key",
}


def _walk(dependant: Any) -> Iterator[Any]:
    for d in dependant.dependencies:
        yield d
        yield from _walk(d)


def _admits_tenants(route: Any) -> bool:
    """Whether the route's role check (`require(roles)`) lets a tenant in."""
    for d in _walk(route.dependant):
        for cell in getattr(d.call, "__closure__", None) or ():
            value = cell.cell_contents
            if isinstance(value, frozenset) and Role.TENANT in value:
                return True
    return False


def v1_routes(app: FastAPI) -> Iterator[tuple[str, APIRoute]]:
    for path, route in api_routes(app):
        if path.startswith("/api/v1/"):
            yield path, route


def test_every_tenant_route_is_covered(env: Env) -> None:
    """A tenant route added later needs a row in ROUTES or LISTINGS (or OWN_ONLY)."""
    covered = {(r.method, r.path) for r in ROUTES} | {("GET", x.path) for x in LISTINGS}
    tenant_routes = set()
    for path, route in v1_routes(env.app):
        if path.startswith("/api/v1/_probe") or not _admits_tenants(route):
            continue
        short = path.removeprefix("/api/v1")
        for name, attr in PARAMS.items():
            short = short.replace("{" + name + "}", "{" + attr + "}")
        tenant_routes |= {(m, short) for m in route.methods or () if m != "HEAD"}
    assert len(tenant_routes) >= len(ROUTES)  # the role check was found
    missing = tenant_routes - covered - OWN_ONLY
    assert missing == set(), f"tenant routes without an isolation check: {sorted(missing)}"


# --------------------------------------------------------------------------- the request's scope


async def test_a_tenant_request_runs_as_the_tenant(env: Env) -> None:
    """The authentication dependency scopes the request: the endpoint, a task it
    starts and a streamed body all query as A and see A's rows through a query
    without any tenant filter; staff are not scoped; nothing outlives the request."""
    r = await env.client.get("/_probe", headers=env.a.headers)
    assert r.status_code == 200, r.text
    mine = [TENANT_ROLE, A, [A]]
    assert r.json() == {"scope": A, "direct": mine, "task": mine}
    r = await env.client.get("/_probe_stream", headers=env.a.headers)
    assert r.text == str(mine)
    r = await env.client.get("/_probe", headers=env.operator)
    staff = r.json()
    assert staff["scope"] is None
    assert staff["direct"][0] != TENANT_ROLE
    assert staff["direct"][2] == [A, B]
    # The request's scope was lifted when it ended (httpx runs the app in this task).
    assert current_tenant() is None
    async with env.pool.connection() as conn:
        cur = await conn.execute("SELECT count(DISTINCT tenant_id) FROM leases")
        assert await cur.fetchone() == (2,)


async def scoped_pool(url: str) -> TenantScopedPool:
    pool = TenantScopedPool(url, min_size=1, max_size=1, open=False)
    await pool.open(wait=True)
    return pool


async def whoami_now(pool: TenantScopedPool) -> tuple[Any, ...]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT current_user = session_user, current_setting(%s, true),"
            " (SELECT count(*) FROM leases)",
            (TENANT_SETTING,),
        )
        row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def test_the_pool_resets_a_returned_connection(env: Env) -> None:
    """One connection, so each checkout gets the one returned before: returned
    idle, inside a transaction or after an error, it comes back as the owner."""
    pool = await scoped_pool(env.url)
    try:
        owner = await whoami_now(pool)
        assert owner[0] is True
        assert owner[2] == 2
        with tenant_scope(A):
            assert await whoami_now(pool) == (False, A, 1)
        assert await whoami_now(pool) == (True, "", 2)
        with tenant_scope(B):
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")  # returned inside a transaction
                assert conn.info.transaction_status == TransactionStatus.INTRANS
        assert await whoami_now(pool) == (True, "", 2)
        with tenant_scope(A), pytest.raises(psycopg.errors.DivisionByZero):
            async with pool.connection() as conn:
                await conn.execute("SELECT 1 / 0")
        assert await whoami_now(pool) == (True, "", 2)
        with tenant_scope(A):
            conn = await pool.getconn()  # the other way to check out
            try:
                cur = await conn.execute("SELECT count(*) FROM leases")
                assert await cur.fetchone() == (1,)
            finally:
                await pool.putconn(conn)
        assert await whoami_now(pool) == (True, "", 2)
    finally:
        await pool.close()


async def test_scoping_leaves_transactions_as_they_were(env: Env) -> None:
    """The scope is set outside any transaction: a route's `conn.transaction()`
    still commits at its end, whatever happens after it on the connection."""
    pool = await scoped_pool(env.url)
    try:

        async def write_then_fail() -> None:
            async with pool.connection() as conn:
                assert conn.info.transaction_status == TransactionStatus.IDLE
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO application_history (application_id, note)"
                        " VALUES (%s, 'kept')",
                        (env.a.application,),
                    )
                raise RuntimeError("after the transaction")

        with tenant_scope(A), pytest.raises(RuntimeError):
            await write_then_fail()
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM application_history WHERE note = 'kept'")
            assert await cur.fetchone() == (1,)
    finally:
        await pool.close()


async def test_the_wall_holds_when_a_filter_is_forgotten(env: Env) -> None:
    """Queries without any tenant filter, through the API's pool, scoped to A."""
    with tenant_scope(A):
        async with env.pool.connection() as conn:
            for table in ("applications", "leases", "bills"):
                query = sql.SQL("SELECT DISTINCT tenant_id FROM {}").format(sql.Identifier(table))
                cur = await conn.execute(query)
                assert await cur.fetchall() == [(A,)], table
            cur = await conn.execute(
                "SELECT DISTINCT l.tenant_id FROM lease_history h JOIN leases l"
                " ON l.id = h.lease_id"
            )
            assert await cur.fetchall() == [(A,)]
            cur = await conn.execute("SELECT count(*) FROM lease_history")
            assert await cur.fetchone() == (2,)
            cur = await conn.execute("SELECT bill_id FROM bill_lines")
            assert await cur.fetchall() == [(env.a.bill,)]
            # Writing B's rows: invisible to update, refused to insert.
            cur = await conn.execute(
                "UPDATE applications SET state = 'withdrawn' WHERE id = %s", (env.b.application,)
            )
            assert cur.rowcount == 0
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level"):
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO applications (tenant_id, devices, poles)"
                        " VALUES (%s, '[]', '[]')",
                        (B,),
                    )


# --------------------------------------------------------------------------- SQL as the role

# As the owner: each row of each tenant table (a key), and whose it is. Written
# apart from the policies on purpose; a new table with RLS must be added here.
ROWS_OF: dict[str, tuple[LiteralString, LiteralString]] = {
    "tenants": ("id", "SELECT id, id FROM tenants"),
    "users": ("id::text", "SELECT id::text, tenant_id FROM users"),
    "api_keys": (
        "id",
        "SELECT k.id, u.tenant_id FROM api_keys k JOIN users u ON u.id = k.user_id",
    ),
    "applications": ("id::text", "SELECT id::text, tenant_id FROM applications"),
    "application_history": (
        "id::text",
        "SELECT h.id::text, a.tenant_id FROM application_history h"
        " JOIN applications a ON a.id = h.application_id",
    ),
    "application_overrides": (
        "id::text",
        "SELECT o.id::text, a.tenant_id FROM application_overrides o"
        " JOIN applications a ON a.id = o.application_id",
    ),
    "leases": ("id::text", "SELECT id::text, tenant_id FROM leases"),
    "lease_history": (
        "id::text",
        "SELECT h.id::text, l.tenant_id FROM lease_history h JOIN leases l ON l.id = h.lease_id",
    ),
    "usage_flags": (
        "id::text",
        "SELECT f.id::text, l.tenant_id FROM usage_flags f LEFT JOIN leases l ON l.id = f.lease_id",
    ),
    "bills": ("id::text", "SELECT id::text, tenant_id FROM bills"),
    "bill_lines": (
        "id::text",
        "SELECT b_l.id::text, b.tenant_id FROM bill_lines b_l JOIN bills b ON b.id = b_l.bill_id",
    ),
}

# Everything the role may read: a new grant is a decision made here too.
READABLE = {
    "application_history",
    "application_overrides",
    "applications",
    "api_keys",
    "bill_lines",
    "bills",
    "compartments",
    "devices",
    "handovers",  # the cut-overs its usage and bills stop or start at (migration 0025)
    "lease_history",
    "lease_reservations",
    "leases",
    "meter_held",  # the ledger (migration 0019): per port, as telemetry_15m
    "meter_ledger",
    "meter_replacements",
    "meter_slots",
    "pole_presence",
    "poles",
    "ports",
    "slots",
    "tariffs",
    "telemetry_15m",
    "tenants",
    "usage_flags",  # its own flags (migration 0016: the policy of 0013 had no grant)
    "users",
}


@contextmanager
def as_owner(url: str, *, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(url, autocommit=autocommit) as conn:
        yield conn


def rls_tables(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        " AND relkind = 'r' AND relrowsecurity"
    ).fetchall()
    return {r[0] for r in rows}


def test_every_table_with_tenant_data_has_rls(env: Env) -> None:
    with as_owner(env.url) as conn:
        with_tenant = {
            r[0]
            for r in conn.execute(
                "SELECT c.table_name FROM information_schema.columns c"
                " JOIN information_schema.tables t USING (table_schema, table_name)"
                " WHERE c.table_schema = 'public' AND c.column_name = 'tenant_id'"
                " AND t.table_type = 'BASE TABLE'"
            ).fetchall()
        }
        assert {"leases", "applications", "bills", "users"} <= with_tenant
        walled = rls_tables(conn)
        assert with_tenant - walled == set(), "tables with tenant_id but no RLS"
        # A table the role may read that points at a walled table holds that
        # tenant's data too (history, lines, flags): walled as well.
        linked = conn.execute(
            "SELECT DISTINCT c.relname FROM pg_constraint k"
            " JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class p ON p.oid = k.confrelid"
            " WHERE k.contype = 'f' AND p.relrowsecurity AND NOT c.relrowsecurity"
            " AND c.relnamespace = 'public'::regnamespace"
            " AND has_any_column_privilege(%s, c.oid, 'SELECT')",
            (TENANT_ROLE,),
        ).fetchall()
        assert linked == [], "readable tables linked to tenant tables without RLS"
        # Each walled table has the policy for the role, and the test knows whose rows are whose.
        policies = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_policies WHERE schemaname = 'public' AND %s = ANY(roles)",
                (TENANT_ROLE,),
            ).fetchall()
        }
        assert walled == policies
        assert walled == set(ROWS_OF), "add the new table to ROWS_OF"


def test_the_role_cannot_bypass_the_policies(env: Env) -> None:
    with as_owner(env.url) as conn:
        row = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s",
            (TENANT_ROLE,),
        ).fetchone()
        assert row == (False, False, False)
        owned = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relowner = %s::regrole", (TENANT_ROLE,)
        ).fetchone()
        assert owned == (0,)
        forced = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relforcerowsecurity"
            " AND relnamespace = 'public'::regnamespace"
        ).fetchone()
        assert forced == (0,)  # the owner (the gateway's staff and system work) is not walled
        readable = {
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
                " AND relkind IN ('r', 'v', 'm', 'p')"
                " AND has_any_column_privilege(%s, oid, 'SELECT')",
                (TENANT_ROLE,),
            ).fetchall()
        }
        assert readable == READABLE


def visible(conn: psycopg.Connection[Any], table: str, key: LiteralString) -> set[str]:
    query = sql.SQL("SELECT " + key + " FROM {}").format(sql.Identifier(table))
    return {r[0] for r in conn.execute(query).fetchall()}


def test_sql_as_the_role_sees_only_the_tenants_rows(env: Env) -> None:
    """Every walled table, read as polegw_tenant: A's rows for A, B's for B,
    nothing without the setting. SELECT on all of them is granted for the
    length of the test's transaction, so the policies are tested whatever the
    role is granted (usage_flags, say, it may not read at all)."""
    with as_owner(env.url) as conn:
        expected: dict[str, dict[str, set[str]]] = {}
        for table, (_, owned) in ROWS_OF.items():
            mine: dict[str, set[str]] = {A: set(), B: set()}
            for ident, tenant in conn.execute(owned).fetchall():
                if tenant in mine:
                    mine[tenant].add(ident)
            assert mine[A], f"{table}: the test has rows of A"
            assert mine[B], f"{table}: the test has rows of B"
            expected[table] = mine
        role = sql.Identifier(TENANT_ROLE)
        for table in ROWS_OF:
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), role))
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(role))
        for table, (key, _) in ROWS_OF.items():
            assert visible(conn, table, key) == set(), f"{table}: rows without a tenant set"
        for tenant in (A, B):
            conn.execute("SELECT set_config(%s, %s, true)", (TENANT_SETTING, tenant))
            for table, (key, _) in ROWS_OF.items():
                assert visible(conn, table, key) == expected[table][tenant], (table, tenant)
        conn.execute("SELECT set_config(%s, 'tn-nobody', true)", (TENANT_SETTING,))
        for table, (key, _) in ROWS_OF.items():
            assert visible(conn, table, key) == set(), table
        conn.rollback()


def test_sql_as_the_role_with_its_own_grants(env: Env) -> None:
    """What the application role really holds: SET ROLE, set the tenant, read."""
    with as_owner(env.url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(TENANT_ROLE)))
        for table in ("applications", "leases", "bills", "bill_lines", "lease_history"):
            assert visible(conn, table, "1") == set(), table
        conn.execute("SELECT set_config(%s, %s, false)", (TENANT_SETTING, A))
        rows = conn.execute("SELECT tenant_id FROM leases").fetchall()
        assert rows == [(A,)]
        rows = conn.execute("SELECT id FROM applications").fetchall()
        assert rows == [(env.a.application,)]
        rows = conn.execute("SELECT id, tenant_id FROM bills").fetchall()
        assert rows == [(env.a.bill, A)]
        rows = conn.execute("SELECT tenant_id FROM users").fetchall()
        assert {r[0] for r in rows} == {A}
        # Its own usage flags, as the README says (issue 16, item 18), and no others.
        rows = conn.execute("SELECT port_id, lease_id FROM usage_flags").fetchall()
        assert rows == [(env.a.port, env.a.lease)]
        # Secrets and other tables' data are not readable at all.
        denied: tuple[LiteralString, ...] = (
            "SELECT password_hash FROM users",
            "SELECT secret_sha256 FROM api_keys",
            "SELECT * FROM audit_log",
            "SELECT * FROM telemetry",
        )
        for query in denied:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(query)
        conn.execute("RESET ROLE")


def test_reservations_show_capacity_not_whose(env: Env) -> None:
    """A tenant's capacity review needs every live lease's slot, port and budget
    on the pole: the view lease_reservations has them, and nothing about whose."""
    with as_owner(env.url) as conn:
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'lease_reservations'"
            ).fetchall()
        }
        assert "tenant_id" not in columns
        assert "rates" not in columns
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(TENANT_ROLE)))
        conn.execute("SELECT set_config(%s, %s, false)", (TENANT_SETTING, A))
        rows = conn.execute("SELECT id, slot_id FROM lease_reservations ORDER BY id").fetchall()
        assert rows == [(env.a.lease, "M1-top"), (env.b.lease, "M2-top")]
        conn.execute("RESET ROLE")


async def test_a_tenants_review_counts_other_tenants_leases(env: Env) -> None:
    """A applies for M2, whose top slot B holds: A's review agrees with staff's."""
    r = await env.client.post(
        "/applications", json=application_body("M2", ["M2-top"]), headers=env.a.headers
    )
    assert r.status_code == 201, r.text
    app_id = r.json()["id"]
    staff = await env.client.get(f"/applications/{app_id}/review", headers=env.operator)
    mine = await env.client.get(f"/applications/{app_id}/review", headers=env.a.headers)
    assert staff.status_code == mine.status_code == 200
    assert staff.json()["poles"][0]["assignment"]["slot_id"] == "M2-mid"
    assert mine.json() == staff.json()


# --------------------------------------------------------------------------- free capacity


async def test_free_capacity_counts_other_tenants_without_naming_them(env: Env) -> None:
    """A sees what B holds on M2 as taken (through the view, not B's rows: under
    row-level security a read of `leases` would show M2 empty), and nothing of whose."""
    r = await env.client.get("/capacity/free", headers=env.a.headers)
    assert r.status_code == 200, r.text
    poles = {p["pole_id"]: p for p in r.json()}
    assert set(poles) == {"M1", "M2"}
    for pid in ("M1", "M2"):  # each tenant holds top, cab (1 U), p1, 5 kg and 100 W
        p = poles[pid]
        assert [s["id"] for s in p["slots"]] == [f"{pid}-mid"]
        assert [x["id"] for x in p["ports"]] == [f"{pid}-p2"]
        assert (p["free_load_kg"], p["free_power_w"], p["free_cabinet_units"]) == (95, 1900, 3)
    text = r.text
    for secret in (B, A, "B Cams", "camera", "C1", "lease", "tenant"):
        assert secret not in text, secret
    # Staff see the same numbers: nothing depends on who asks.
    staff = await env.client.get("/capacity/free", headers=env.operator)
    assert staff.json() == r.json()
    one = await env.client.get("/capacity/free", params={"pole": "M2"}, headers=env.a.headers)
    assert [p["pole_id"] for p in one.json()] == ["M2"]


async def test_a_dry_run_check_reviews_without_storing_or_naming_anyone(env: Env) -> None:
    before = await env.client.get("/applications", headers=env.a.headers)
    body = application_body("M2", ["M2-top"])
    r = await env.client.post("/applications/check", json=body, headers=env.a.headers)
    assert r.status_code == 200, r.text
    (review,) = r.json()["poles"]
    # B's slot is taken, so the check suggests the free one; B's port likewise.
    assert review["assignment"] == {
        "slot_id": "M2-mid",
        "compartment_id": None,
        "port_id": "M2-p2",
    }
    assert review["approvable"] is True
    assert r.json()["approvable"] is True
    assert B not in r.text
    assert "B Cams" not in r.text
    heavy = equipment()
    heavy["devices"][0]["weight_kg"] = 40
    r = await env.client.post(
        "/applications/check",
        json=heavy | {"poles": [{"pole_id": "M2", "slots": ["M2-mid"]}]},
        headers=env.a.headers,
    )
    (review,) = r.json()["poles"]
    assert r.json()["approvable"] is False
    assert "slot_load" in review["blocking"]
    after = await env.client.get("/applications", headers=env.a.headers)
    assert after.json() == before.json()  # nothing stored
    r = await env.client.post(
        "/applications/check", json=application_body("NOPE"), headers=env.a.headers
    )
    assert r.status_code == 422
    assert "poles[0].pole_id" in r.text
