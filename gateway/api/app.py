"""The FastAPI application: built from an ApiContext; owns no resources itself."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from gateway import __version__
from gateway.api.deps import ApiContext
from gateway.api.routes import audit, auth, commands, devices, health, poles


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="polegw",
        version=__version__,
        summary="Telemetry gateway and operations back end for smart multi-function poles",
        description=(
            "Monitoring API of polegw (GB/T 40994-2021). Everything under /api/v1 is "
            "paginated: pass the `next` value of a page as `after` for the next one."
        ),
    )
    app.state.ctx = ctx
    app.include_router(health.router)
    v1 = APIRouter(prefix="/api/v1")
    v1.include_router(auth.router)
    v1.include_router(poles.router)
    v1.include_router(devices.router)
    v1.include_router(commands.router)
    v1.include_router(audit.router)
    app.include_router(v1)
    return app
