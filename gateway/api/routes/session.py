"""Browser sessions: log in and out with cookies (the console at /console/).

`POST /auth/session` checks the password exactly as `POST /auth/token` does
(same throttle) and sets two cookies: `polegw_session`, the signed session
token (HttpOnly, so page scripts never see it), and `polegw_csrf`, a random
value the page reads and sends back as `X-CSRF-Token` on every write. The
session token carries a digest of that value, so a CSRF cookie planted by
another site (or left by another session) does not unlock writes.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.adapters.credentials import new_csrf_token
from gateway.adapters.users import principal_of
from gateway.api.deps import Context
from gateway.api.routes.auth import check_login
from gateway.api.schemas import RequestBody
from gateway.api.security import CSRF_COOKIE, SESSION_COOKIE, start_session
from gateway.core.auth import Role

router = APIRouter(tags=["auth"])


class SessionLogin(RequestBody):
    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=200)

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"username": "li.wei", "password": "correct horse"}]}
    )


class Session(BaseModel):
    name: str
    role: Role
    tenant_id: str | None
    csrf_token: str = Field(
        description="Send it as X-CSRF-Token with every write (also in the polegw_csrf cookie)"
    )
    expires_at: datetime = Field(description="When the session ends: log in again then")


def _secure(request: Request) -> bool:
    # Behind a TLS proxy uvicorn's proxy_headers turn X-Forwarded-Proto into the scheme.
    return request.url.scheme == "https"


@router.post(
    "/auth/session",
    summary="Log in a browser: sets the session cookie and the CSRF cookie",
    responses={
        401: {"description": "Wrong user name or password"},
        429: {"description": "Too many failed attempts; see Retry-After"},
    },
)
async def open_session(
    request: Request, response: Response, ctx: Context, body: SessionLogin
) -> Session:
    found = await check_login(request, ctx, body.username, body.password)
    principal = principal_of(found)
    csrf = new_csrf_token()
    expires_at = start_session(request, response, ctx, principal, csrf)
    return Session(
        name=principal.name,
        role=principal.role,
        tenant_id=principal.tenant_id,
        csrf_token=csrf,
        expires_at=expires_at,
    )


@router.delete(
    "/auth/session",
    status_code=204,
    summary="Log a browser out: clears both cookies (needs no session: clearing always works)",
)
async def close_session(request: Request) -> Response:
    response = Response(status_code=204)
    secure = _secure(request)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=secure)
    response.delete_cookie(CSRF_COOKIE, path="/", samesite="strict", secure=secure)
    return response
