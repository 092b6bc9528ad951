"""Authentication and authorisation as FastAPI dependencies.

A caller presents either a JWT from `POST /api/v1/auth/token` or an API key
(`pgw_…`), as `Authorization: Bearer …` or, for keys, `X-API-Key: …`; a browser
presents the session cookie of `POST /api/v1/auth/session` instead, and for a
write also the CSRF header that proves the page is ours. Routes
name the roles they admit with the aliases below (`Staff`, `Managers`, …); a
route that writes also takes `Audit`, which appends to the audit log in the
write's own transaction. A tenant's request runs its queries as the tenant
(row-level security is the second wall behind each route's tenant filter).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import psycopg
from fastapi import Depends, HTTPException, Request, Response
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer

from gateway.adapters import audit
from gateway.adapters.credentials import InvalidToken, csrf_matches, split_api_key
from gateway.adapters.db import tenant_scope
from gateway.adapters.users import principal_of
from gateway.api.deps import ApiContext, Context
from gateway.core.auth import ADMINS, EVERYONE, MANAGERS, STAFF, Principal, Role

_bearer = OAuth2PasswordBearer(
    tokenUrl="/api/v1/auth/token",
    auto_error=False,
    description="An access token from POST /api/v1/auth/token, or an API key (pgw_…)",
)
_api_key = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="An API key (pgw_…) for machine clients"
)


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


# The browser session (routes/session.py sets both cookies).
SESSION_COOKIE = "polegw_session"
CSRF_COOKIE = "polegw_csrf"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_REFUSED = "CSRF token missing or wrong: send the polegw_csrf cookie's value as X-CSRF-Token"


async def _principal_of(ctx: ApiContext, credential: str) -> Principal:
    key = split_api_key(credential)
    if key is not None:
        principal = await ctx.users.by_api_key(*key)
        if principal is None:
            raise unauthorized("the API key is not valid or has been revoked")
        return principal
    try:
        principal = ctx.tokens.verify(credential)
    except InvalidToken as exc:
        raise unauthorized(str(exc)) from None
    return await _current(ctx, principal)


def set_session_cookies(
    request: Request, response: Response, token: str, csrf: str, max_age: int
) -> None:
    """The session cookie (HttpOnly) and the CSRF cookie the console's script reads;
    Secure when the request came over https (uvicorn's proxy_headers turn a trusted
    proxy's X-Forwarded-Proto into the scheme)."""
    secure = request.url.scheme == "https"
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure,
    )
    response.set_cookie(
        CSRF_COOKIE, csrf, max_age=max_age, path="/", samesite="strict", secure=secure
    )


def start_session(
    request: Request, response: Response, ctx: ApiContext, principal: Principal, csrf: str
) -> datetime:
    """Issue a browser session for `principal` bound to `csrf`; when it ends."""
    idle = timedelta(seconds=ctx.settings.session_idle_s)
    now = datetime.now(UTC)
    token = ctx.tokens.issue(principal, now, csrf=csrf, ttl=idle)
    set_session_cookies(request, response, token, csrf, int(idle.total_seconds()))
    return now + idle


async def _session_principal(
    ctx: ApiContext, request: Request, response: Response, token: str
) -> Principal:
    """The principal of a session cookie; a write must also carry the CSRF value
    the session was issued with, as header and cookie (double submit, bound to
    the session by the digest in its token). A session past half its idle time is
    renewed on the response, so one in use does not end."""
    try:
        principal, digest, expires = ctx.tokens.verify_session(token)
    except InvalidToken as exc:
        raise unauthorized(str(exc).replace("token", "session")) from None
    cookie = request.cookies.get(CSRF_COOKIE)
    if request.method in UNSAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER)
        if not sent or sent != cookie or not csrf_matches(digest, sent):
            raise HTTPException(403, detail=CSRF_REFUSED)
    current = await _current(ctx, principal)
    left = expires - datetime.now(UTC)
    if (
        cookie
        and csrf_matches(digest, cookie)
        and left < timedelta(seconds=ctx.settings.session_idle_s / 2)
    ):
        start_session(request, response, ctx, current, cookie)
    return current


async def _current(ctx: ApiContext, principal: Principal) -> Principal:
    """The user a token names as the database has them now: a user disabled or
    removed since the token was issued is refused at once, and a changed role or
    tenant applies at once (one primary-key lookup per request)."""
    row = await ctx.users.get(principal.user_id)
    if row is None:
        raise unauthorized("the user no longer exists")
    if row["disabled"]:
        raise unauthorized("the user is disabled")
    return principal_of(row, principal.via)


async def authenticated(
    request: Request,
    response: Response,
    ctx: Context,
    bearer: Annotated[str | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> AsyncIterator[Principal]:
    """The caller. For a tenant, every connection the request then checks out of
    the API pool runs as the tenant (row-level security, migration 0013) until the
    response is sent; staff connections are not scoped."""
    credential = bearer or api_key
    session = request.cookies.get(SESSION_COOKIE)
    if credential:
        principal = await _principal_of(ctx, credential)
    elif session:
        principal = await _session_principal(ctx, request, response, session)
    else:
        raise unauthorized(
            "authentication required: send a bearer token or an X-API-Key,"
            " or log in (POST /api/v1/auth/session)"
        )
    request.state.principal = principal
    with tenant_scope(tenant_of(principal)):
        yield principal


def tenant_of(principal: Principal) -> str | None:
    """The tenant a principal's connections are scoped to; None for staff. A tenant
    user without a tenant (the database forbids it) is scoped to none: sees nothing."""
    if principal.role is Role.TENANT:
        return principal.tenant_id or ""
    return None


def require(roles: frozenset[Role]) -> Callable[..., Awaitable[Principal]]:
    allowed = ", ".join(sorted(r.value for r in roles))

    async def check(principal: Annotated[Principal, Depends(authenticated)]) -> Principal:
        if principal.role not in roles:
            raise HTTPException(403, detail=f"this needs one of the roles: {allowed}")
        return principal

    return check


AnyUser = Annotated[Principal, Depends(require(EVERYONE))]
Staff = Annotated[Principal, Depends(require(STAFF))]
Managers = Annotated[Principal, Depends(require(MANAGERS))]
Admin = Annotated[Principal, Depends(require(ADMINS))]


@dataclass(frozen=True, slots=True)
class AuditTrail:
    """Records what the calling principal changed; pass the write's connection so
    the entry commits (or rolls back) with the change."""

    principal: Principal

    async def record(
        self,
        conn: psycopg.AsyncConnection[Any],
        action: str,
        resource: str,
        resource_id: object,
        *,
        before: object = None,
        after: object = None,
    ) -> None:
        await audit.append(conn, self.principal, action, resource, resource_id, before, after)


async def _audit_trail(principal: Annotated[Principal, Depends(authenticated)]) -> AuditTrail:
    return AuditTrail(principal)


Audit = Annotated[AuditTrail, Depends(_audit_trail)]
