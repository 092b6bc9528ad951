"""Outages the operator caused (works, a power cut of its own): a pole, or a port or
slot on it, unusable for a time. A tariff's credit policy (`rent.credits.outages`)
says which causes credit the leases affected on their monthly bill."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gateway.adapters import outage_store as store
from gateway.adapters.billing_store import dumps
from gateway.api.deps import Context
from gateway.api.errors import bad_param, not_found
from gateway.api.schemas import Page, RequestBody
from gateway.api.security import Audit, Managers, Staff

router = APIRouter(prefix="/outages", tags=["billing"])

CAUSE = r"^[a-z][a-z0-9_]{0,39}$"
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
Before = Annotated[int | None, Query(ge=1, description="The `next` of the previous page")]


class Outage(BaseModel):
    id: int
    pole_id: str
    port_id: str | None = Field(description="Only this port (with slot_id null: the port only)")
    slot_id: str | None = Field(description="Only this slot; both null: the whole pole")
    cause: str
    start: datetime
    end: datetime | None = Field(description="Exclusive; null: still going on")
    description: str
    created_by: str
    created_at: datetime
    updated_by: str | None
    updated_at: datetime


class NewOutage(RequestBody):
    pole_id: str = Field(min_length=1, max_length=64)
    port_id: str | None = Field(None, max_length=64, description="Only this port on the pole")
    slot_id: str | None = Field(None, max_length=64, description="Only this slot on the pole")
    cause: str = Field(
        pattern=CAUSE,
        description="What made it unusable, e.g. maintenance, power_cut, road_works; the"
        " tariff's credit policy names the causes that credit",
    )
    start: AwareDatetime
    end: AwareDatetime | None = Field(None, description="Exclusive; null: still going on")
    description: str = Field("", max_length=2000)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "pole_id": "P0001",
                    "port_id": "P0001-port1",
                    "slot_id": None,
                    "cause": "maintenance",
                    "start": "2026-11-18T09:00:00+08:00",
                    "end": "2026-11-18T12:30:00+08:00",
                    "description": "cabinet breaker replaced; port 1 without power",
                }
            ]
        }
    )


class OutageChange(RequestBody):
    end: AwareDatetime | None = Field(None, description="Exclusive; null: still going on")
    cause: str | None = Field(None, pattern=CAUSE)
    description: str | None = Field(None, max_length=2000)

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"end": "2026-11-18T13:15:00+08:00"}]}
    )


@router.get("", summary="Outages, newest first, by pole and time (staff)")
async def list_outages(
    ctx: Context,
    _: Staff,
    pole: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[AwareDatetime | None, Query(description="Overlapping from")] = None,
    until: Annotated[AwareDatetime | None, Query(description="Overlapping until")] = None,
    limit: Limit = 100,
    before: Before = None,
) -> Page[Outage]:
    async with ctx.pool.connection() as conn:
        rows = await store.page(
            conn, pole=pole, since=since, until=until, before_id=before, limit=limit
        )
    items = [Outage.model_validate(r) for r in rows]
    return Page[Outage](items=items, next=str(items[-1].id) if len(items) == limit else None)


@router.get(
    "/{outage_id}",
    summary="One outage (staff)",
    responses={404: {"description": "No such outage"}},
)
async def get_outage(ctx: Context, _: Staff, outage_id: int) -> Outage:
    async with ctx.pool.connection() as conn:
        row = await store.get(conn, outage_id)
    if row is None:
        raise not_found("outage", str(outage_id))
    return Outage.model_validate(row)


@router.post(
    "",
    status_code=201,
    summary="Record an outage the operator caused on a pole, port or slot (managers)",
)
async def create_outage(ctx: Context, principal: Managers, audit: Audit, body: NewOutage) -> Outage:
    if body.end is not None and body.end <= body.start:
        raise bad_param("end", "must be after start", where="body")
    async with ctx.pool.connection() as conn, conn.transaction():
        found = await store.problems(
            conn, pole_id=body.pole_id, port_id=body.port_id, slot_id=body.slot_id
        )
        if found:
            field, msg = found[0]
            raise bad_param(field, msg, where="body")
        row = await store.create(
            conn,
            pole_id=body.pole_id,
            port_id=body.port_id,
            slot_id=body.slot_id,
            cause=body.cause,
            start=body.start,
            end=body.end,
            description=body.description,
            by=principal.name,
        )
        await audit.record(conn, "create", "outage", row["id"], after=dumps(row))
    return Outage.model_validate(row)


@router.patch(
    "/{outage_id}",
    summary="End an outage, or correct its cause or description (managers)",
    description="Bills issued already keep the credits they were issued with.",
    responses={404: {"description": "No such outage"}},
)
async def change_outage(
    ctx: Context, principal: Managers, audit: Audit, outage_id: int, body: OutageChange
) -> Outage:
    changes = {k: getattr(body, k) for k in body.model_fields_set}
    for name in ("cause", "description"):
        if name in changes and changes[name] is None:
            raise bad_param(name, "may not be null", where="body")
    async with ctx.pool.connection() as conn, conn.transaction():
        before = await store.get(conn, outage_id, lock=True)
        if before is None:
            raise not_found("outage", str(outage_id))
        end = changes.get("end", before["end"])
        if end is not None and end <= before["start"]:
            start = before["start"].isoformat()
            raise bad_param("end", f"must be after the outage's start ({start})", where="body")
        row = await store.update(conn, outage_id, changes, by=principal.name)
        await audit.record(
            conn, "update", "outage", outage_id, before=dumps(before), after=dumps(row)
        )
    return Outage.model_validate(row)
