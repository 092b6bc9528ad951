"""Liveness, readiness and Prometheus metrics (outside /api/v1)."""

from __future__ import annotations

import psycopg
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import PoolTimeout

from gateway.api.deps import Context

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Database and broker are reachable",
    responses={503: {"description": "Not ready; the body says which dependency failed"}},
)
async def readyz(ctx: Context) -> JSONResponse:
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
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(ctx: Context) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
