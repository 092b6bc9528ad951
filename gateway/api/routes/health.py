"""Liveness, readiness and Prometheus metrics (outside /api/v1)."""

from __future__ import annotations

from typing import Annotated

import psycopg
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import PoolTimeout

from gateway.adapters.leases import LeaseKeeper
from gateway.api.deps import Context
from gateway.api.hardening import may_see_internals, require_internals_access
from gateway.api.security import _api_key, _bearer

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Database and broker are reachable",
    responses={503: {"description": "Not ready; the body says which dependency failed"}},
)
async def readyz(request: Request, ctx: Context) -> JSONResponse:
    """Which dependency failed is said only where internals may be seen
    (POLEGW_METRICS_PORT, POLEGW_METRICS_ALLOW); elsewhere just ready or not."""
    checks: dict[str, str] = {}
    if ctx.database is not None:
        # The probe's verdict, at once: never the pool's 5 s wait during an outage.
        up = ctx.database.up or await ctx.database.recheck()
        checks["database"] = "ok" if up else f"unreachable: {ctx.database.detail[:200]}"
    else:
        try:
            await ctx.reads.ping()
            checks["database"] = "ok"
        except (psycopg.Error, PoolTimeout) as exc:
            checks["database"] = f"unreachable: {str(exc).strip()[:200]}"
    if ctx.mqtt_connected is not None:
        checks["mqtt"] = "ok" if ctx.mqtt_connected() else "disconnected"
    ready = all(v == "ok" for v in checks.values())
    body: dict[str, object] = {"ready": ready}
    if may_see_internals(request, ctx.settings):
        body["checks"] = checks
        if ctx.leases is not None:
            body["replica"] = replica_details(ctx.leases, ctx.settings.mqtt_share_group)
    return JSONResponse(body, status_code=200 if ready else 503)


def replica_details(leases: LeaseKeeper, share_group: str | None) -> dict[str, object]:
    """Who this replica is and what it holds (docs/scaling.md): a single gateway
    (no share group) holds every leader role without asking anyone."""
    return {
        "id": leases.holder,
        "share_group": share_group,
        "live_replicas": leases.live_replicas,
        "owns": leases.owned(),
    }


@router.get(
    "/metrics",
    summary="Prometheus metrics (POLEGW_METRICS_PORT, POLEGW_METRICS_ALLOW networks, or staff)",
    response_class=Response,
    responses={401: {"description": "Not from an allowed network, and no staff login"}},
)
async def metrics(
    request: Request,
    ctx: Context,
    bearer: Annotated[str | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Response:
    await require_internals_access(request, ctx, bearer or api_key)
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
