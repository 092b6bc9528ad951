"""What every response and some routes get beyond authentication: security
headers, CORS only where configured, per-user limits on expensive routes, and
who may read /metrics and /readyz's details without logging in."""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.deps import ApiContext
from gateway.api.security import _principal_of, require, unauthorized
from gateway.config import Settings
from gateway.core.auth import MANAGERS, STAFF, Principal, Role
from gateway.core.rate_limit import TokenBuckets

# Sent with every response unless the response set the header itself (the
# console's pages and /docs send their own Content-Security-Policy).
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
)


class SecurityHeaders:
    """ASGI middleware: adds SECURITY_HEADERS that a response lacks (streamed
    responses too; nothing is buffered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in SECURITY_HEADERS if n not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def harden(app: FastAPI, settings: Settings) -> None:
    """Install the headers, CORS (only for POLEGW_CORS_ORIGINS) and the limits."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            # Tokens and API keys travel in headers; the session cookie is for
            # the console on this origin only.
            allow_credentials=False,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
            max_age=600,
        )
    app.add_middleware(SecurityHeaders)  # outermost: CORS answers get the headers too
    app.state.expensive = (
        TokenBuckets(settings.api_expensive_per_min / 60.0, settings.api_expensive_burst)
        if settings.api_expensive_per_min > 0
        else None
    )


def expensive(roles: frozenset[Role]) -> Callable[..., Awaitable[Principal]]:
    """`require(roles)`, then one token of the caller's bucket for expensive work
    (exports, bill runs): 429 with Retry-After when it is empty."""
    check = require(roles)

    async def limited(request: Request, principal: Principal) -> Principal:
        buckets: TokenBuckets | None = getattr(request.app.state, "expensive", None)
        if buckets is None:
            return principal
        key, now = str(principal.user_id), time.monotonic()
        if not buckets.take(key, now):
            wait = max(1, math.ceil(buckets.retry_after(key, now)))
            raise HTTPException(
                429,
                detail=(
                    "too many exports or bill runs in a short time"
                    f" (POLEGW_API_EXPENSIVE_PER_MIN); try again in {wait} s"
                ),
                headers={"Retry-After": str(wait)},
            )
        return principal

    # A real object, not a string (this module's annotations are postponed, and
    # FastAPI resolves strings in module globals, where `check` is not).
    limited.__annotations__["principal"] = Annotated[Principal, Depends(check)]
    return limited


ExpensiveStaff = Annotated[Principal, Depends(expensive(STAFF))]
ExpensiveManagers = Annotated[Principal, Depends(expensive(MANAGERS))]


def may_see_internals(request: Request, settings: Settings) -> bool:
    """Whether this request may read /metrics and /readyz's details without a
    login: it came to POLEGW_METRICS_PORT, or from a POLEGW_METRICS_ALLOW network."""
    if getattr(request.app.state, "internals_open", False):
        return True
    host = request.client.host if request.client else None
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a Unix socket or a test transport's name
        return False
    return any(address in ipaddress.ip_network(net) for net in settings.metrics_allow)


async def require_internals_access(
    request: Request, ctx: ApiContext, credential: str | None
) -> None:
    """Let the request through to /metrics if `may_see_internals`, or if it
    carries a staff user's token or API key; else 401/403 saying how."""
    if may_see_internals(request, ctx.settings):
        return
    if not credential:
        raise unauthorized(
            "metrics are served without login only on POLEGW_METRICS_PORT or to"
            " POLEGW_METRICS_ALLOW networks; elsewhere send a staff user's token or API key"
        )
    principal = await _principal_of(ctx, credential)
    if principal.role not in STAFF:
        raise HTTPException(403, detail="metrics are for staff users")
