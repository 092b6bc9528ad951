"""The FastAPI application: built from an ApiContext; owns no resources itself."""

from __future__ import annotations

import logging

import psycopg
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import __version__, console
from gateway.adapters.db import DatabaseHealth
from gateway.api.deps import ApiContext
from gateway.api.hardening import SecurityHeaders, harden
from gateway.api.routes import (
    alarms,
    applications,
    archive,
    audit,
    auth,
    billing,
    capacity,
    commands,
    devices,
    docs,
    emergencies,
    events,
    export,
    health,
    inspections,
    leases,
    lighting,
    mounting,
    outages,
    overview,
    poles,
    session,
    tariffs,
    usage,
    work_orders,
)

log = logging.getLogger(__name__)

ROUTERS = (
    auth,
    session,
    poles,
    devices,
    commands,
    archive,
    alarms,
    work_orders,
    inspections,
    emergencies,
    lighting,
    overview,
    events,
    export,
    audit,
    tariffs,
    usage,
    billing,
    mounting,
    applications,
    capacity,
    leases,
    outages,
)


async def _refused_value(request: Request, exc: Exception) -> JSONResponse:
    """The database refused a value the request carried (a NUL character in text,
    a number out of its column's range, a constraint): the caller's input, so a
    4xx naming the problem, never a 500. Routes validate first; this is the net
    under them, and it is logged so a missing check gets noticed."""
    log.warning("%s %s: the database refused a value: %s", request.method, request.url.path, exc)
    diag = getattr(exc, "diag", None)
    constraint = getattr(diag, "constraint_name", None)
    if isinstance(exc, psycopg.errors.UniqueViolation):
        status, msg = 409, "conflicts with an existing record"
    elif isinstance(exc, psycopg.errors.ForeignKeyViolation):
        status, msg = 422, "refers to something that does not exist"
    elif isinstance(exc, psycopg.IntegrityError):
        status, msg = 422, "breaks a rule of the record"
    else:
        status, msg = 422, "a value cannot be stored (out of range, or a NUL character)"
    detail = getattr(diag, "message_detail", None) or str(exc).splitlines()[0]
    loc = ["body", constraint] if constraint else ["request"]
    body = {"detail": [{"loc": loc, "msg": f"{msg}: {detail}", "type": "value_error"}]}
    return JSONResponse(body, status_code=status)


UNAVAILABLE = {"detail": "the database is unavailable; try again shortly"}


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """No connection to the database (down, restarting, pool exhausted): a 503 the
    client may retry, not a 500. Data already accepted is not affected."""
    log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
    ctx: ApiContext = request.app.state.ctx
    if ctx.database is not None:
        ctx.database.suspect()  # the probe confirms (or not) and opens the circuit
    return JSONResponse(UNAVAILABLE, status_code=503, headers={"Retry-After": "5"})


class DatabaseCircuit:
    """While the database probe says the database is down, a request under
    /api/v1 (every one of them reads or writes the database, login included) is
    answered 503 at once instead of waiting the pool's timeout (after a fresh
    probe of at most 0.3 s, shared by concurrent requests, so that the first
    request after the database is back is served). /healthz,
    /readyz, /metrics and the documentation never wait on it."""

    def __init__(self, app: ASGIApp, health: DatabaseHealth) -> None:
        self._app = app
        self._health = health

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and not self._health.up
            and str(scope.get("path", "")).startswith("/api/v1/")
            and not await self._health.recheck()
        ):
            response = JSONResponse(UNAVAILABLE, status_code=503, headers={"Retry-After": "5"})
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="polegw",
        version=__version__,
        summary="Telemetry gateway and operations back end for smart multi-function poles",
        description=(
            "API of polegw (GB/T 40994-2021): monitoring, operations and the mounting "
            "service. Log in with POST /api/v1/auth/token (or send an API key) and pass "
            "the token as `Authorization: Bearer …`. Lists are paginated: pass the `next` "
            "value of a page as `after` for the next one."
        ),
        # Served by routes/docs.py with assets from this app (no CDN).
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.add_exception_handler(psycopg.DataError, _refused_value)
    app.add_exception_handler(psycopg.IntegrityError, _refused_value)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)
    if ctx.database is not None:
        app.add_middleware(DatabaseCircuit, health=ctx.database)
    app.include_router(health.router)
    app.include_router(docs.router)
    docs.mount_assets(app)
    v1 = APIRouter(prefix="/api/v1")
    for module in ROUTERS:
        v1.include_router(module.router)
    app.include_router(v1)
    console.mount(app, ctx.settings)
    harden(app, ctx.settings)
    return app


def create_internals_app(ctx: ApiContext) -> FastAPI:
    """/healthz, /readyz and /metrics alone, for POLEGW_METRICS_PORT: whoever
    reaches that port (the monitoring network) reads them without login."""
    app = FastAPI(title="polegw internals", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    app.state.internals_open = True
    app.include_router(health.router)
    app.add_middleware(SecurityHeaders)
    return app
