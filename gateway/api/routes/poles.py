"""Poles: the site's registry and operation archive (运行档案) as the operator sees it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.adapters import archive_store
from gateway.api.deps import ApiContext, Context
from gateway.api.errors import bad_param, not_found
from gateway.api.schemas import ArchiveStatus, Page, Pole, RequestBody
from gateway.api.security import AnyUser, Audit, AuditTrail, Managers, Staff

router = APIRouter(prefix="/poles", tags=["poles"])

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
After = Annotated[
    str | None, Query(max_length=64, description="Cursor: the `next` of the previous page")
]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such pole"}}

Text = Annotated[str, Field(max_length=200)]
LongText = Annotated[str, Field(max_length=4000)]


class ArchiveFields(RequestBody):
    """Archive fields a manager may set; omitted fields stay as they are, null clears."""

    model_config = ConfigDict(extra="forbid")

    model: Text | None = None
    vendor: Text | None = None
    serial: Text | None = None
    installed_on: date | None = None
    taken_over_on: date | None = None
    taken_over_from: Text | None = None
    warranty_until: date | None = None
    mounting_position: Text | None = None
    status: ArchiveStatus | None = None
    notes: LongText | None = None

    @field_validator("status")
    @classmethod
    def _status_not_null(cls, v: str | None) -> str | None:
        if v is None:
            raise ValueError("may not be null")
        return v


class PolePatch(ArchiveFields):
    name: Text | None = None
    road: Text | None = None
    lat: Annotated[float, Field(ge=-90, le=90)] | None = None
    lon: Annotated[float, Field(ge=-180, le=180)] | None = None
    height_m: Annotated[float, Field(gt=0, le=100)] | None = None

    @field_validator("name", "road")
    @classmethod
    def _text_not_null(cls, v: str | None) -> str | None:
        if v is None:
            raise ValueError("may not be null (use an empty string)")
        return v

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "status": "under_maintenance",
                    "warranty_until": "2030-06-01",
                    "notes": "Cabinet door hinge replaced",
                }
            ]
        },
    )


class NewPole(PolePatch):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "P0101",
                    "name": "Renmin Rd 101",
                    "road": "Renmin Rd",
                    "lat": 30.657,
                    "lon": 104.066,
                    "height_m": 10,
                    "model": "ZHG-10A",
                    "vendor": "Sichuan Smart Pole Co.",
                    "serial": "SP2026-000123",
                    "installed_on": "2026-05-20",
                    "warranty_until": "2029-06-01",
                    "status": "planned",
                }
            ]
        },
    )


class Takeover(RequestBody):
    """The operator accepts the pole from its builder (接管)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "taken_over_from": "Chengdu Municipal Construction",
                    "taken_over_on": "2026-06-01",
                    "notes": "Accepted with cabinet, conduit and 2 lamp heads",
                }
            ]
        },
    )

    taken_over_from: Text = Field(min_length=1, description="Who hands the pole over")
    taken_over_on: date | None = Field(None, description="Default: today (site time zone)")
    notes: LongText | None = Field(None, description="Replaces the archive's notes when given")


def check_dates(record: dict[str, Any]) -> None:
    """422 naming the field when the archive's dates contradict each other."""
    installed = record.get("installed_on")
    if installed is None:
        return
    for name in ("taken_over_on", "warranty_until"):
        value = record.get(name)
        if value is not None and value < installed:
            raise bad_param(name, f"must not be before installed_on ({installed})", where="body")


async def _pole_out(ctx: ApiContext, pole_id: str) -> Pole:
    row = await ctx.reads.pole(pole_id)
    if row is None:  # deleted between the write and this read: not through the API
        raise not_found("pole", pole_id)
    return Pole.model_validate(row)


def _snapshot(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("created_at", "updated_at")}


@router.get("", summary="List poles, optionally by archive status")
async def list_poles(
    ctx: Context,
    principal: AnyUser,
    limit: Limit = 100,
    after: After = None,
    status: Annotated[ArchiveStatus | None, Query(description="Only poles in this status")] = None,
) -> Page[Pole]:
    """Staff see every pole; a tenant sees the poles it leases on."""
    rows = await ctx.reads.poles(
        after=after, limit=limit, tenant=principal.tenant_id, status=status
    )
    items = [Pole.model_validate(r) for r in rows]
    return Page[Pole](items=items, next=items[-1].id if len(items) == limit else None)


@router.get("/{pole_id}", summary="One pole with its archive record", responses=NOT_FOUND)
async def get_pole(ctx: Context, principal: AnyUser, pole_id: str) -> Pole:
    row = await ctx.reads.pole(pole_id, tenant=principal.tenant_id)
    if row is None:
        raise not_found("pole", pole_id)
    skew = ctx.clock_skew(pole_id) if ctx.clock_skew is not None else None
    return Pole.model_validate({**row, "clock_skew_s": skew})


class PoleEvent(BaseModel):
    ts: datetime
    device_id: str
    type: str = Field(description="An event type of the device's profile, e.g. door_open")
    data: dict[str, Any]


@router.get(
    "/{pole_id}/events",
    summary="Events of the pole's devices (door opened, SOS, impact…), newest first (staff)",
    responses=NOT_FOUND,
)
async def pole_events(
    ctx: Context,
    _: Staff,
    pole_id: str,
    limit: Limit = 50,
    after: Annotated[
        datetime | None, Query(description="Cursor: the `next` of the previous page")
    ] = None,
) -> Page[PoleEvent]:
    if after is not None and after.tzinfo is None:
        raise bad_param("after", "must carry a UTC offset (e.g. 2026-11-22T10:00:00Z)")
    if await ctx.reads.pole(pole_id) is None:
        raise not_found("pole", pole_id)
    rows = await ctx.reads.pole_events(pole_id, before=after, limit=limit)
    items = [PoleEvent.model_validate(r) for r in rows]
    return Page[PoleEvent](
        items=items, next=items[-1].ts.isoformat() if len(items) == limit else None
    )


@router.post(
    "",
    status_code=201,
    summary="Create a pole with its archive record (admin, operator)",
    responses={409: {"description": "A pole with that id exists"}},
)
async def create_pole(ctx: Context, principal: Managers, audit: Audit, body: NewPole) -> Pole:
    values = body.model_dump(exclude_unset=True)
    values.setdefault("status", "planned")  # not yet taken over
    check_dates(values)
    async with ctx.pool.connection() as conn, conn.transaction():
        await archive_store.set_actor(conn, principal.name)
        try:
            row = await archive_store.create_pole(conn, values)
        except archive_store.Duplicate:
            raise HTTPException(
                409,
                detail=[{"loc": ["body", "id"], "msg": f"pole {body.id!r} exists already"}],
            ) from None
        await audit.record(conn, "create", "pole", body.id, after=_snapshot(row))
    return await _pole_out(ctx, body.id)


async def _patch(
    ctx: ApiContext,
    principal_name: str,
    audit: AuditTrail,
    pole_id: str,
    values: dict[str, Any],
    action: str,
    *,
    guard: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    async with ctx.pool.connection() as conn, conn.transaction():
        await archive_store.set_actor(conn, principal_name)
        before = await archive_store.locked(conn, "poles", pole_id)
        if before is None:
            raise not_found("pole", pole_id)
        if guard is not None:
            guard(before)
        check_dates({**before, **values})
        after = await archive_store.update(conn, "poles", pole_id, values)
        assert after is not None
        await audit.record(
            conn, action, "pole", pole_id, before=_snapshot(before), after=_snapshot(after)
        )


@router.patch(
    "/{pole_id}",
    summary="Change a pole's record (admin, operator); every change is kept in its history",
    responses=NOT_FOUND,
)
async def patch_pole(
    ctx: Context, principal: Managers, audit: Audit, pole_id: str, body: PolePatch
) -> Pole:
    await _patch(ctx, principal.name, audit, pole_id, body.model_dump(exclude_unset=True), "update")
    return await _pole_out(ctx, pole_id)


@router.post(
    "/{pole_id}/takeover",
    summary="Take a pole over from its builder (admin, operator): sets it in service",
    description=(
        "Records who handed the pole over and when, and sets its status to in_service. "
        "A pole is taken over once (409 after that); correct the record with PATCH."
    ),
    responses={**NOT_FOUND, 409: {"description": "Already taken over, or retired"}},
)
async def take_over(
    ctx: Context, principal: Managers, audit: Audit, pole_id: str, body: Takeover
) -> Pole:
    values: dict[str, Any] = {
        "taken_over_from": body.taken_over_from,
        "taken_over_on": body.taken_over_on
        or datetime.now(ZoneInfo(ctx.settings.site_timezone)).date(),
        "status": "in_service",
    }
    if body.notes is not None:
        values["notes"] = body.notes

    def guard(before: dict[str, Any]) -> None:
        if before["status"] == "retired":
            raise HTTPException(409, detail=f"pole {pole_id!r} is retired")
        if before["taken_over_on"] is not None:
            raise HTTPException(
                409, detail=f"pole {pole_id!r} was taken over on {before['taken_over_on']}"
            )

    await _patch(ctx, principal.name, audit, pole_id, values, "takeover", guard=guard)
    return await _pole_out(ctx, pole_id)
