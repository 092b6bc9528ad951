"""Poles: the site's registry as the operator sees it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from gateway.api.deps import Context
from gateway.api.errors import not_found
from gateway.api.schemas import Page, Pole
from gateway.api.security import AnyUser

router = APIRouter(prefix="/poles", tags=["poles"])

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
After = Annotated[
    str | None, Query(max_length=64, description="Cursor: the `next` of the previous page")
]


@router.get("", summary="List poles")
async def list_poles(
    ctx: Context, principal: AnyUser, limit: Limit = 100, after: After = None
) -> Page[Pole]:
    """Staff see every pole; a tenant sees the poles it leases on."""
    rows = await ctx.reads.poles(after=after, limit=limit, tenant=principal.tenant_id)
    items = [Pole.model_validate(r) for r in rows]
    return Page[Pole](items=items, next=items[-1].id if len(items) == limit else None)


@router.get("/{pole_id}", summary="One pole", responses={404: {"description": "No such pole"}})
async def get_pole(ctx: Context, principal: AnyUser, pole_id: str) -> Pole:
    row = await ctx.reads.pole(pole_id, tenant=principal.tenant_id)
    if row is None:
        raise not_found("pole", pole_id)
    return Pole.model_validate(row)
