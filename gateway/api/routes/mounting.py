"""Mounting capacity per pole (slots, cabinet compartments, tenant power ports), the
poles' budgets, and tenants. Managers write, staff read; a tenant reads the
ports of its own leases only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import psycopg
from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from gateway.adapters import mounting_store as ms
from gateway.api.deps import Context
from gateway.api.errors import bad_param, not_found
from gateway.api.schemas import Page, RequestBody
from gateway.api.security import AnyUser, Audit, Managers, Staff
from gateway.core.site import ID_PATTERN

router = APIRouter(tags=["mounting"])

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
AfterId = Annotated[str | None, Query(max_length=64, description="Cursor: `next` of a page")]
PoleFilter = Annotated[str | None, Query(max_length=64, description="Only this pole's")]
Ident = Annotated[str, Field(pattern=ID_PATTERN)]
Supply = Literal["AC", "DC"]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such record"}}
IN_USE: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such record"},
    409: {"description": "A lease refers to it (it stays as the leases' history)"},
}


# --------------------------------------------------------------------------- models


class Slot(BaseModel):
    id: str
    pole_id: str
    position: str
    slot_type: str
    height_min_m: float | None
    height_max_m: float | None
    max_load_kg: float
    max_wind_area_m2: float
    max_power_w: float
    supply: Supply
    voltage_v: float | None
    created_at: datetime


class SlotPatch(RequestBody):
    position: str | None = Field(None, min_length=1, max_length=64)
    slot_type: str | None = Field(None, min_length=1, max_length=64)
    height_min_m: float | None = Field(None, ge=0, le=100)
    height_max_m: float | None = Field(None, ge=0, le=100)
    max_load_kg: float | None = Field(None, ge=0)
    max_wind_area_m2: float | None = Field(None, ge=0)
    max_power_w: float | None = Field(None, ge=0)
    supply: Supply | None = None
    voltage_v: float | None = Field(None, gt=0)

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"max_load_kg": 30, "max_power_w": 600}]}
    )


class NewSlot(RequestBody):
    id: Ident
    pole_id: str = Field(max_length=64)
    position: str = Field(min_length=1, max_length=64, description="e.g. top, arm-east, mid")
    slot_type: str = Field("standard", min_length=1, max_length=64)
    height_min_m: float | None = Field(None, ge=0, le=100)
    height_max_m: float | None = Field(None, ge=0, le=100)
    max_load_kg: float = Field(ge=0)
    max_wind_area_m2: float = Field(ge=0)
    max_power_w: float = Field(ge=0)
    supply: Supply = "AC"
    voltage_v: float | None = Field(None, gt=0)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "P0001-top",
                    "pole_id": "P0001",
                    "position": "top",
                    "height_min_m": 8,
                    "height_max_m": 10,
                    "max_load_kg": 25,
                    "max_wind_area_m2": 0.5,
                    "max_power_w": 500,
                    "supply": "AC",
                    "voltage_v": 220,
                }
            ]
        }
    )


class Compartment(BaseModel):
    id: str
    pole_id: str
    name: str
    units: int
    created_at: datetime


class NewCompartment(RequestBody):
    id: Ident
    pole_id: str = Field(max_length=64)
    name: str = Field(min_length=1, max_length=64)
    units: int = Field(ge=1, le=100, description="Rack units (or positions)")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"id": "P0001-cab-a", "pole_id": "P0001", "name": "A", "units": 4}]
        }
    )


class CompartmentPatch(RequestBody):
    name: str | None = Field(None, min_length=1, max_length=64)
    units: int | None = Field(None, ge=1, le=100)

    model_config = ConfigDict(json_schema_extra={"examples": [{"units": 6}]})


class Port(BaseModel):
    id: str
    pole_id: str
    meter_device_id: str
    port_no: int
    rated_w: float
    supply: Supply
    created_at: datetime


class NewPort(RequestBody):
    id: Ident
    pole_id: str = Field(max_length=64)
    meter_device_id: str = Field(
        max_length=64, description="A device of the pole whose profile has switch_port"
    )
    port_no: int = Field(ge=1, description="Channel on the meter")
    rated_w: float = Field(gt=0)
    supply: Supply = "AC"

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "P0001-port1",
                    "pole_id": "P0001",
                    "meter_device_id": "P0001-pm",
                    "port_no": 1,
                    "rated_w": 1000,
                }
            ]
        }
    )


class PortPatch(RequestBody):
    rated_w: float | None = Field(None, gt=0)
    supply: Supply | None = None

    model_config = ConfigDict(json_schema_extra={"examples": [{"rated_w": 1500}]})


class Capacity(BaseModel):
    pole_id: str
    max_load_kg: float | None
    max_wind_area_m2: float | None
    power_budget_w: float | None


class CapacityPut(RequestBody):
    max_load_kg: float | None = Field(None, gt=0, description="Null: not checked")
    max_wind_area_m2: float | None = Field(None, gt=0)
    power_budget_w: float | None = Field(None, gt=0)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"max_load_kg": 120, "max_wind_area_m2": 2.0, "power_budget_w": 3000}]
        }
    )


class Tenant(BaseModel):
    id: str
    name: str
    created_at: datetime


class NewTenant(RequestBody):
    id: Ident
    name: str = Field(min_length=1, max_length=200)

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"id": "tn-telecom", "name": "City Telecom"}]}
    )


# --------------------------------------------------------------------------- helpers


async def _pole_exists(conn: psycopg.AsyncConnection[Any], pole_id: str) -> None:
    if await ms.pole_row(conn, pole_id) is None:
        raise bad_param("pole_id", "no such pole", where="body")


async def _create(
    ctx: Any, audit: Any, table: str, kind: str, values: dict[str, object]
) -> dict[str, Any]:
    async with ctx.pool.connection() as conn, conn.transaction():
        await _pole_exists(conn, str(values["pole_id"]))
        if await ms.capacity_get(conn, table, str(values["id"])) is not None:
            raise HTTPException(409, detail=f"{kind} {values['id']!r} exists already")
        try:
            async with conn.transaction():
                row = await ms.capacity_insert(conn, table, values)
        except psycopg.errors.UniqueViolation as exc:
            raise HTTPException(
                409, detail=f"conflicts with another {kind}: {exc.diag.message_detail}"
            ) from None
        await audit.record(conn, "create", kind, row["id"], after=row)
    return row


async def _update(
    ctx: Any, audit: Any, table: str, kind: str, ident: str, changes: dict[str, object]
) -> dict[str, Any]:
    async with ctx.pool.connection() as conn, conn.transaction():
        before = await ms.capacity_get(conn, table, ident, lock=True)
        if before is None:
            raise not_found(kind, ident)
        if not changes:
            return before
        try:
            async with conn.transaction():
                row = await ms.capacity_update(conn, table, ident, changes)
        except psycopg.errors.UniqueViolation as exc:
            raise HTTPException(
                409, detail=f"conflicts with another {kind}: {exc.diag.message_detail}"
            ) from None
        await audit.record(conn, "update", kind, ident, before=before, after=row)
    return row


async def _delete(ctx: Any, audit: Any, table: str, kind: str, ident: str) -> None:
    async with ctx.pool.connection() as conn, conn.transaction():
        before = await ms.capacity_get(conn, table, ident, lock=True)
        if before is None:
            raise not_found(kind, ident)
        if await ms.capacity_in_use(conn, table, ident):
            raise HTTPException(409, detail=f"{kind} {ident!r} is named by a lease; it stays")
        await ms.capacity_delete(conn, table, ident)
        await audit.record(conn, "delete", kind, ident, before=before)


T = TypeVar("T", bound=BaseModel)


def _page(items: list[T], limit: int, key: str) -> Page[T]:
    return Page[T](items=items, next=str(getattr(items[-1], key)) if len(items) == limit else None)


# --------------------------------------------------------------------------- slots


@router.get("/slots", summary="Mounting slots, by pole")
async def list_slots(
    ctx: Context, _: Staff, pole_id: PoleFilter = None, limit: Limit = 100, after: AfterId = None
) -> Page[Slot]:
    async with ctx.pool.connection() as conn:
        rows = await ms.capacity_list(conn, "slots", pole_id=pole_id, after=after, limit=limit)
    return _page([Slot.model_validate(r) for r in rows], limit, "id")


@router.post("/slots", status_code=201, summary="Add a mounting slot to a pole (managers)")
async def create_slot(ctx: Context, _: Managers, audit: Audit, body: NewSlot) -> Slot:
    lo, hi = body.height_min_m, body.height_max_m
    if lo is not None and hi is not None and lo > hi:
        raise bad_param("height_max_m", "below height_min_m", where="body")
    return Slot.model_validate(await _create(ctx, audit, "slots", "slot", body.model_dump()))


@router.get("/slots/{slot_id}", summary="One mounting slot", responses=NOT_FOUND)
async def get_slot(ctx: Context, _: Staff, slot_id: str) -> Slot:
    async with ctx.pool.connection() as conn:
        row = await ms.capacity_get(conn, "slots", slot_id)
    if row is None:
        raise not_found("slot", slot_id)
    return Slot.model_validate(row)


@router.patch("/slots/{slot_id}", summary="Change a slot's limits (managers)", responses=NOT_FOUND)
async def patch_slot(
    ctx: Context, _: Managers, audit: Audit, slot_id: str, body: SlotPatch
) -> Slot:
    changes = body.model_dump(exclude_unset=True)
    return Slot.model_validate(await _update(ctx, audit, "slots", "slot", slot_id, changes))


@router.delete(
    "/slots/{slot_id}", status_code=204, summary="Remove an unused slot", responses=IN_USE
)
async def delete_slot(ctx: Context, _: Managers, audit: Audit, slot_id: str) -> None:
    await _delete(ctx, audit, "slots", "slot", slot_id)


# --------------------------------------------------------------------------- compartments


@router.get("/compartments", summary="Cabinet compartments, by pole")
async def list_compartments(
    ctx: Context, _: Staff, pole_id: PoleFilter = None, limit: Limit = 100, after: AfterId = None
) -> Page[Compartment]:
    async with ctx.pool.connection() as conn:
        rows = await ms.capacity_list(
            conn, "compartments", pole_id=pole_id, after=after, limit=limit
        )
    return _page([Compartment.model_validate(r) for r in rows], limit, "id")


@router.post("/compartments", status_code=201, summary="Add a cabinet compartment (managers)")
async def create_compartment(
    ctx: Context, _: Managers, audit: Audit, body: NewCompartment
) -> Compartment:
    row = await _create(ctx, audit, "compartments", "compartment", body.model_dump())
    return Compartment.model_validate(row)


@router.get("/compartments/{compartment_id}", summary="One compartment", responses=NOT_FOUND)
async def get_compartment(ctx: Context, _: Staff, compartment_id: str) -> Compartment:
    async with ctx.pool.connection() as conn:
        row = await ms.capacity_get(conn, "compartments", compartment_id)
    if row is None:
        raise not_found("compartment", compartment_id)
    return Compartment.model_validate(row)


@router.patch(
    "/compartments/{compartment_id}", summary="Change a compartment (managers)", responses=NOT_FOUND
)
async def patch_compartment(
    ctx: Context, _: Managers, audit: Audit, compartment_id: str, body: CompartmentPatch
) -> Compartment:
    changes = body.model_dump(exclude_unset=True)
    row = await _update(ctx, audit, "compartments", "compartment", compartment_id, changes)
    return Compartment.model_validate(row)


@router.delete(
    "/compartments/{compartment_id}",
    status_code=204,
    summary="Remove an unused compartment",
    responses=IN_USE,
)
async def delete_compartment(ctx: Context, _: Managers, audit: Audit, compartment_id: str) -> None:
    await _delete(ctx, audit, "compartments", "compartment", compartment_id)


# --------------------------------------------------------------------------- ports


def _check_meter(ctx: Any, pole_id: str, meter: str, port_no: int) -> None:
    device = ctx.registry().device(meter)
    if device is None or device.pole_id != pole_id:
        raise bad_param("meter_device_id", "not a device of this pole", where="body")
    command = device.profile.commands.get("switch_port")
    if command is None:
        raise bad_param(
            "meter_device_id", f"{device.profile.profile} has no switch_port", where="body"
        )
    arg = command.args.get("port")
    if arg is not None and arg.max is not None and port_no > arg.max:
        raise bad_param("port_no", f"the meter has ports 1..{arg.max:g}", where="body")


@router.get("/ports", summary="Tenant power ports (tenants: the ports of their leases)")
async def list_ports(
    ctx: Context,
    principal: AnyUser,
    pole_id: PoleFilter = None,
    limit: Limit = 100,
    after: AfterId = None,
) -> Page[Port]:
    async with ctx.pool.connection() as conn:
        if principal.tenant_id is not None:
            mine = await ms.tenant_port_ids(conn, principal.tenant_id)
            rows = [
                r
                for r in await ms.capacity_list(
                    conn, "ports", pole_id=pole_id, after=after, limit=10_000
                )
                if r["id"] in mine
            ][:limit]
        else:
            rows = await ms.capacity_list(conn, "ports", pole_id=pole_id, after=after, limit=limit)
    return _page([Port.model_validate(r) for r in rows], limit, "id")


@router.post("/ports", status_code=201, summary="Add a tenant power port (managers)")
async def create_port(ctx: Context, _: Managers, audit: Audit, body: NewPort) -> Port:
    _check_meter(ctx, body.pole_id, body.meter_device_id, body.port_no)
    return Port.model_validate(await _create(ctx, audit, "ports", "port", body.model_dump()))


@router.get("/ports/{port_id}", summary="One tenant power port", responses=NOT_FOUND)
async def get_port(ctx: Context, principal: AnyUser, port_id: str) -> Port:
    async with ctx.pool.connection() as conn:
        row = await ms.capacity_get(conn, "ports", port_id)
        tenant = principal.tenant_id
        if row is not None and tenant and port_id not in await ms.tenant_port_ids(conn, tenant):
            row = None
    if row is None:
        raise not_found("port", port_id)
    return Port.model_validate(row)


@router.patch("/ports/{port_id}", summary="Change a port's rating (managers)", responses=NOT_FOUND)
async def patch_port(
    ctx: Context, _: Managers, audit: Audit, port_id: str, body: PortPatch
) -> Port:
    changes = body.model_dump(exclude_unset=True)
    return Port.model_validate(await _update(ctx, audit, "ports", "port", port_id, changes))


@router.delete(
    "/ports/{port_id}", status_code=204, summary="Remove an unused port", responses=IN_USE
)
async def delete_port(ctx: Context, _: Managers, audit: Audit, port_id: str) -> None:
    await _delete(ctx, audit, "ports", "port", port_id)


# --------------------------------------------------------------------------- pole budgets


@router.get(
    "/slots/pole-budget/{pole_id}",
    summary="A pole's own load, wind and power budget",
    responses=NOT_FOUND,
)
async def get_capacity(ctx: Context, _: Staff, pole_id: str) -> Capacity:
    async with ctx.pool.connection() as conn:
        row = await ms.pole_row(conn, pole_id)
    if row is None:
        raise not_found("pole", pole_id)
    return Capacity(
        pole_id=row["id"],
        **{k: row[k] for k in ("max_load_kg", "max_wind_area_m2", "power_budget_w")},
    )


@router.put(
    "/slots/pole-budget/{pole_id}", summary="Set a pole's budget (managers)", responses=NOT_FOUND
)
async def put_capacity(
    ctx: Context, _: Managers, audit: Audit, pole_id: str, body: CapacityPut
) -> Capacity:
    async with ctx.pool.connection() as conn, conn.transaction():
        before = await ms.pole_row(conn, pole_id)
        if before is None:
            raise not_found("pole", pole_id)
        await conn.execute(
            "UPDATE poles SET max_load_kg = %s, max_wind_area_m2 = %s, power_budget_w = %s,"
            " updated_at = now() WHERE id = %s",
            (body.max_load_kg, body.max_wind_area_m2, body.power_budget_w, pole_id),
        )
        after = {"pole_id": pole_id, **body.model_dump()}
        await audit.record(conn, "update", "pole_capacity", pole_id, before=before, after=after)
    return Capacity.model_validate(after)


# --------------------------------------------------------------------------- tenants


@router.get("/tenants", summary="Tenants (user units) (managers)")
async def list_tenants(
    ctx: Context, _: Managers, limit: Limit = 100, after: AfterId = None
) -> Page[Tenant]:
    async with ctx.pool.connection() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT id, name, created_at FROM tenants WHERE (%s::text IS NULL OR id > %s)"
            " ORDER BY id LIMIT %s",
            (after, after, limit),
        )
        rows = await cur.fetchall()
    items = [Tenant(id=r[0], name=r[1], created_at=r[2]) for r in rows]
    return _page(items, limit, "id")


@router.post(
    "/tenants",
    status_code=201,
    summary="Add a tenant (managers)",
    responses={409: {"description": "The id exists already"}},
)
async def create_tenant(ctx: Context, _: Managers, audit: Audit, body: NewTenant) -> Tenant:
    async with ctx.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "INSERT INTO tenants (id, name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING"
            " RETURNING id, name, created_at",
            (body.id, body.name),
        )
        row = await cur.fetchone()
        if row is None:
            raise HTTPException(409, detail=f"tenant {body.id!r} exists already")
        out = Tenant(id=row[0], name=row[1], created_at=row[2])
        await audit.record(conn, "create", "tenant", body.id, after=out.model_dump(mode="json"))
    return out
