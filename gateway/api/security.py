"""Authentication and authorisation as FastAPI dependencies.

A caller presents either a JWT from `POST /api/v1/auth/token` or an API key
(`pgw_…`), as `Authorization: Bearer …` or, for keys, `X-API-Key: …`. Routes
name the roles they admit with the aliases below (`Staff`, `Managers`, …); a
route that writes also takes `Audit`, which appends to the audit log in the
write's own transaction. A tenant's request runs its queries as the tenant
(row-level security is the second wall behind each route's tenant filter).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import psycopg
from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer

from gateway.adapters import audit
from gateway.adapters.credentials import InvalidToken, split_api_key
from gateway.adapters.db import tenant_scope
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


async def _principal_of(ctx: ApiContext, credential: str) -> Principal:
    key = split_api_key(credential)
    if key is not None:
        principal = await ctx.users.by_api_key(*key)
        if principal is None:
            raise unauthorized("the API key is not valid or has been revoked")
        return principal
    try:
        return ctx.tokens.verify(credential)
    except InvalidToken as exc:
        raise unauthorized(str(exc)) from None


async def authenticated(
    request: Request,
    ctx: Context,
    bearer: Annotated[str | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> AsyncIterator[Principal]:
    """The caller. For a tenant, every connection the request then checks out of
    the API pool runs as the tenant (row-level security, migration 0013) until the
    response is sent; staff connections are not scoped."""
    credential = bearer or api_key
    if not credential:
        raise unauthorized("authentication required: send a bearer token or an X-API-Key")
    principal = await _principal_of(ctx, credential)
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
