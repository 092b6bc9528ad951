"""Logging in, users and API keys."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.adapters.credentials import hash_password, new_api_key, verify_password
from gateway.adapters.users import Row, UnknownTenant, UserExists, principal_of
from gateway.api.deps import Context
from gateway.api.errors import bad_param, not_found
from gateway.api.schemas import Page, RequestBody
from gateway.api.security import Admin, AnyUser, Audit
from gateway.core.auth import Role

router = APIRouter(tags=["auth"])


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds until the token expires")


class User(BaseModel):
    id: int
    name: str
    role: Role
    tenant_id: str | None
    disabled: bool
    created_at: datetime


class NewUser(RequestBody):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[\w.@-]+$")
    role: Role
    tenant_id: str | None = Field(None, max_length=64, description="Required for role tenant")
    password: str = Field(min_length=10, max_length=200)

    @model_validator(mode="after")
    def _tenant(self) -> NewUser:
        if (self.role is Role.TENANT) != (self.tenant_id is not None):
            raise ValueError("tenant_id is required for role tenant and not allowed otherwise")
        return self

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "li.wei", "role": "maintainer", "password": "correct horse battery"}
            ]
        }
    )


class UserPatch(RequestBody):
    disabled: bool

    model_config = ConfigDict(json_schema_extra={"examples": [{"disabled": True}]})


class NewKey(RequestBody):
    name: str = Field(min_length=1, max_length=100, description="What the key is for")
    user_id: int | None = Field(None, description="Admins may create a key for another user")

    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "SCADA export"}]})


class ApiKey(BaseModel):
    id: str
    user_id: int
    name: str
    created_at: datetime
    revoked_at: datetime | None


class CreatedKey(ApiKey):
    key: str = Field(description="The key itself: shown only now, store it safely")


@router.post(
    "/auth/token",
    summary="Log in (OAuth2 password flow); returns a short-lived bearer token",
    responses={
        401: {"description": "Wrong user name or password"},
        429: {"description": "Too many failed attempts; see Retry-After"},
    },
)
async def login(
    request: Request, ctx: Context, form: Annotated[OAuth2PasswordRequestForm, Depends()]
) -> Token:
    found = await check_login(request, ctx, form.username, form.password)
    token = ctx.tokens.issue(principal_of(found))
    return Token(access_token=token, expires_in=int(ctx.tokens.ttl.total_seconds()))


async def check_login(request: Request, ctx: Context, username: str, password: str) -> Row:
    """The enabled user `username` if `password` is theirs; 401 if not, 429 while
    the user name or the client's address has failed too often (one throttle for
    every way of logging in)."""
    now = time.monotonic()
    client = request.client.host if request.client else "?"
    per_user = ctx.settings.login_max_failures
    # One address may be a whole office behind NAT: it gets ten users' worth.
    keys = ((f"user:{username}", per_user), (f"addr:{client}", per_user * 10))
    wait = max(ctx.throttle.retry_after(k, limit, now) for k, limit in keys)
    if wait > 0:
        raise HTTPException(
            429,
            detail="too many failed logins; try again later",
            headers={"Retry-After": str(int(wait) + 1)},
        )
    # Count the attempt before the (slow) check, so a burst of parallel guesses
    # cannot all pass the throttle; a success takes it back below.
    for k, limit in keys:
        ctx.throttle.failed(k, limit, now)
    found = await ctx.users.credentials(username)
    ok = await anyio.to_thread.run_sync(verify_password, found[1] if found else None, password)
    if not ok or found is None:
        raise HTTPException(
            401, detail="wrong user name or password", headers={"WWW-Authenticate": "Bearer"}
        )
    ctx.throttle.succeeded(keys[0][0])
    ctx.throttle.forgive(keys[1][0])  # the address keeps earlier failures: others may be guessing
    return found[0]


@router.get("/auth/me", summary="Who the token, key or browser session belongs to")
async def me(ctx: Context, principal: AnyUser) -> User:
    row = await ctx.users.get(principal.user_id)
    if row is None:
        raise not_found("user", str(principal.user_id))
    return User.model_validate(row)


@router.get("/users", summary="List users (admin)")
async def list_users(
    ctx: Context,
    _: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> Page[User]:
    items = [User.model_validate(r) for r in await ctx.users.page(after=after, limit=limit)]
    return Page[User](items=items, next=str(items[-1].id) if len(items) == limit else None)


@router.post("/users", status_code=201, summary="Create a user (admin)")
async def create_user(ctx: Context, _: Admin, audit: Audit, body: NewUser) -> User:
    hashed = await anyio.to_thread.run_sync(hash_password, body.password)
    async with ctx.pool.connection() as conn, conn.transaction():
        try:
            row = await ctx.users.create(body.name, body.role, hashed, body.tenant_id, conn=conn)
        except UserExists:
            raise HTTPException(
                409, detail=[{"loc": ["body", "name"], "msg": "a user of that name exists"}]
            ) from None
        except UnknownTenant:
            raise bad_param("tenant_id", "no such tenant", where="body") from None
        user = User.model_validate(row)
        await audit.record(conn, "create", "user", user.id, after=user.model_dump(mode="json"))
    return user


@router.patch(
    "/users/{user_id}",
    summary="Disable or enable a user (admin); their API keys stop working with them",
    responses={404: {"description": "No such user"}},
)
async def patch_user(
    ctx: Context, principal: Admin, audit: Audit, user_id: int, body: UserPatch
) -> User:
    if user_id == principal.user_id and body.disabled:
        raise bad_param("disabled", "you cannot disable yourself", where="body")
    async with ctx.pool.connection() as conn, conn.transaction():
        before = await ctx.users.get(user_id)
        row = await ctx.users.set_disabled(conn, user_id, body.disabled)
        if row is None or before is None:
            raise not_found("user", str(user_id))
        user = User.model_validate(row)
        await audit.record(
            conn,
            "update",
            "user",
            user_id,
            before=User.model_validate(before).model_dump(mode="json"),
            after=user.model_dump(mode="json"),
        )
    return user


@router.get("/api-keys", summary="Your API keys (admins see everyone's)")
async def list_keys(ctx: Context, principal: AnyUser) -> list[ApiKey]:
    owner = None if principal.role is Role.ADMIN else principal.user_id
    return [ApiKey.model_validate(r) for r in await ctx.users.keys(owner)]


@router.post("/api-keys", status_code=201, summary="Create an API key; the key is shown once")
async def create_key(ctx: Context, principal: AnyUser, audit: Audit, body: NewKey) -> CreatedKey:
    owner = principal.user_id if body.user_id is None else body.user_id
    if owner != principal.user_id and principal.role is not Role.ADMIN:
        raise HTTPException(403, detail="only an admin may create a key for another user")
    if await ctx.users.get(owner) is None:
        raise bad_param("user_id", "no such user", where="body")
    key = new_api_key()
    async with ctx.pool.connection() as conn, conn.transaction():
        row = await ctx.users.add_key(conn, owner, body.name, key)
        record = ApiKey.model_validate(row)
        await audit.record(
            conn, "create", "api_key", key.key_id, after=record.model_dump(mode="json")
        )
    return CreatedKey(**record.model_dump(), key=key.token)


@router.delete(
    "/api-keys/{key_id}",
    summary="Revoke an API key (your own; admins any)",
    responses={404: {"description": "No such key"}},
)
async def revoke_key(ctx: Context, principal: AnyUser, audit: Audit, key_id: str) -> ApiKey:
    found = await ctx.users.key(key_id)
    if found is None or (
        found["user_id"] != principal.user_id and principal.role is not Role.ADMIN
    ):
        raise not_found("API key", key_id)  # another user's key does not exist for you
    async with ctx.pool.connection() as conn, conn.transaction():
        row = await ctx.users.revoke_key(conn, key_id)
        assert row is not None
        record = ApiKey.model_validate(row)
        await audit.record(
            conn,
            "revoke",
            "api_key",
            key_id,
            before=ApiKey.model_validate(found).model_dump(mode="json"),
            after=record.model_dump(mode="json"),
        )
    return record
