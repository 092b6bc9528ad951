"""The web console: a static single-page client of the API, served at /console/.

It holds no logic of its own on the server: the pages are files in `static/`
(our own JavaScript, CSS and the zh-CN and en catalogues), the map library
comes from the XStatic-Leaflet package, and every read and write goes through
the same `/api/v1` routes and permissions as any other client. The only route
here that computes anything is `config.json`, the few settings the pages need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xstatic.pkg.leaflet as leaflet
from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from gateway import __version__
from gateway.config import Settings

STATIC = Path(__file__).parent / "static"
LANGUAGES = ("zh-CN", "en")

# Content-Security-Policy of the console's pages: everything from this origin,
# nothing inline, no frames. Map tiles may come from the operator's own tile
# server (POLEGW_MAP_TILE_URL), so its origin is added to img-src.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: {tiles}; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


def tile_origin(url: str | None) -> str:
    """The origin part of a tile URL template, for the CSP ('' when there is none)."""
    if not url:
        return ""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    # Leaflet's {s} subdomain placeholder: allow any subdomain of the host.
    host = host.replace("{s}", "*")
    return f"{scheme}://{host}" if scheme and host else ""


def console_headers(settings: Settings) -> dict[str, str]:
    return {
        "Content-Security-Policy": _CSP.format(tiles=tile_origin(settings.map_tile_url)).replace(
            "  ", " "
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-cache",
    }


def mount(app: FastAPI, settings: Settings) -> None:
    """Serve the console at /console/ (routes/docs.py sends / there)."""
    router = APIRouter(include_in_schema=False)
    headers = console_headers(settings)

    @router.get("/console")
    async def console_no_slash() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=307)

    @router.get("/console/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=headers)

    @router.get("/console/config.json")
    async def config() -> JSONResponse:
        body: dict[str, Any] = {
            "version": __version__,
            "languages": list(LANGUAGES),
            "map_tile_url": settings.map_tile_url,
            "map_tile_attribution": settings.map_tile_attribution,
            "site_timezone": settings.site_timezone,
            "export_max_range_d": settings.export_max_range_d,
        }
        return JSONResponse(body, headers={"Cache-Control": "no-cache"})

    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.mount(
        "/console/vendor/leaflet",
        StaticFiles(directory=leaflet.BASE_DIR),
        name="console-leaflet",
    )
