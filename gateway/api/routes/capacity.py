"""Free capacity (挂载服务): what a pole in service still offers a new tenant — free
slots, ports and cabinet units, and what is left of its load, wind and power
budget. Nothing says whose the taken capacity is: the leases are read through the
view lease_reservations (no tenant, no equipment), so any user, tenants included,
may call it, and row-level security needs no exception."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from gateway.api.deps import Context
from gateway.api.security import AnyUser

router = APIRouter(prefix="/capacity", tags=["applications"])


class FreeSlot(BaseModel):
    id: str
    position: str
    slot_type: str
    height_min_m: float | None
    height_max_m: float | None
    max_load_kg: float
    max_wind_area_m2: float
    max_power_w: float
    supply: str
    voltage_v: float | None


class FreePort(BaseModel):
    id: str
    rated_w: float
    supply: str


class FreePole(BaseModel):
    pole_id: str
    name: str
    road: str
    lat: float | None
    lon: float | None
    free_load_kg: float | None = Field(description="Null: the pole declares no load budget")
    free_wind_area_m2: float | None = Field(description="Null: no wind-area budget declared")
    free_power_w: float | None = Field(description="Null: no power budget declared")
    free_cabinet_units: int = Field(description="Free units over the pole's compartments")
    slots: list[FreeSlot] = Field(description="Slots no live lease holds")
    ports: list[FreePort] = Field(description="Ports no live lease holds")


def _left(budget: float | None, used: float) -> float | None:
    return None if budget is None else max(0.0, round(budget - used, 6))


@router.get(
    "/free",
    summary="Free capacity of the poles in service (any user; names no tenant)",
    description="Per pole in service: its place, the slots and ports no live lease"
    " holds, the free cabinet units and what is left of its budgets. `pole` limits the"
    " answer to the poles named.",
)
async def free_capacity(
    ctx: Context,
    _: AnyUser,
    pole: Annotated[list[str] | None, Query(max_length=200, description="Pole ids")] = None,
) -> list[FreePole]:
    where, args = "WHERE p.status = 'in_service'", []
    if pole:
        where += " AND p.id = ANY(%s)"
        args.append(pole)
    async with ctx.pool.connection() as conn:
        poles = await (
            await conn.execute(
                "SELECT p.id, p.name, p.road, p.lat, p.lon, p.max_load_kg,"
                " p.max_wind_area_m2, p.power_budget_w FROM poles p " + where + " ORDER BY p.id",
                args,
            )
        ).fetchall()
        ids = [r[0] for r in poles]
        leases = await (
            await conn.execute(
                "SELECT pole_id, slot_id, compartment_id, port_id, load_kg, wind_area_m2,"
                " power_w, cabinet_units FROM lease_reservations WHERE pole_id = ANY(%s)",
                (ids,),
            )
        ).fetchall()
        slots = await (
            await conn.execute(
                "SELECT pole_id, id, position, slot_type, height_min_m, height_max_m,"
                " max_load_kg, max_wind_area_m2, max_power_w, supply, voltage_v"
                " FROM slots WHERE pole_id = ANY(%s) ORDER BY id",
                (ids,),
            )
        ).fetchall()
        ports = await (
            await conn.execute(
                "SELECT pole_id, id, rated_w, supply FROM ports WHERE pole_id = ANY(%s)"
                " ORDER BY id",
                (ids,),
            )
        ).fetchall()
        comps = await (
            await conn.execute(
                "SELECT pole_id, id, units FROM compartments WHERE pole_id = ANY(%s)", (ids,)
            )
        ).fetchall()
    used: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    taken: set[str | None] = set()
    units_taken: dict[str, int] = defaultdict(int)
    for pid, slot_id, comp_id, port_id, load, wind, power, units in leases:
        u = used[pid]
        u[0] += load or 0.0
        u[1] += wind or 0.0
        u[2] += power or 0.0
        taken.update((slot_id, port_id))
        if comp_id:
            units_taken[comp_id] += units or 0
    free_units: dict[str, int] = defaultdict(int)
    for pid, cid, units in comps:
        free_units[pid] += max(0, units - units_taken[cid])
    slots_of: dict[str, list[FreeSlot]] = defaultdict(list)
    names = list(FreeSlot.model_fields)
    for row in slots:
        if row[1] not in taken:
            slots_of[row[0]].append(FreeSlot.model_validate(dict(zip(names, row[1:], strict=True))))
    ports_of: dict[str, list[FreePort]] = defaultdict(list)
    for pid, port_id, rated, supply in ports:
        if port_id not in taken:
            ports_of[pid].append(FreePort(id=port_id, rated_w=rated, supply=supply))
    out = []
    for pid, name, road, lat, lon, max_load, max_wind, max_power in poles:
        load, wind, power = used[pid]
        out.append(
            FreePole(
                pole_id=pid,
                name=name,
                road=road,
                lat=lat,
                lon=lon,
                free_load_kg=_left(max_load, load),
                free_wind_area_m2=_left(max_wind, wind),
                free_power_w=_left(max_power, power),
                free_cabinet_units=free_units[pid],
                slots=slots_of[pid],
                ports=ports_of[pid],
            )
        )
    return out
