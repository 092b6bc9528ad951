"""Inspections: plans (which poles, how often, what to check) and records
(a checklist result per pole, filed against the plan's work order)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.adapters.inspection_store import InspectionStore
from gateway.adapters.work_orders import WorkOrderStore
from gateway.api.deps import ApiContext, Context
from gateway.api.errors import bad_param, not_found
from gateway.api.schemas import Page, RequestBody
from gateway.api.security import Audit, Managers, Staff
from gateway.core import maintenance as mt

router = APIRouter(prefix="/inspections", tags=["inspections"])

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
After = Annotated[int | None, Query(ge=0, description="Cursor: the `next` of the previous page")]
Checklist = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=100)
]


class Plan(BaseModel):
    id: int
    name: str
    pole_ids: list[str] | None
    road: str | None
    every_days: int
    starts_on: date
    checklist: list[str]
    priority: mt.Priority
    active: bool
    last_period: int | None = Field(description="Index of the newest period generated")
    next_due: date = Field(description="When the next inspection order opens")
    created_at: datetime
    updated_at: datetime


class _Scope(RequestBody):
    @model_validator(mode="after")
    def _one_scope(self) -> Any:
        pole_ids, road = getattr(self, "pole_ids", None), getattr(self, "road", None)
        touched = {"pole_ids", "road"} & self.model_fields_set
        if touched and (pole_ids is None) == (road is None):
            raise ValueError("give either pole_ids or road")
        return self


class NewPlan(_Scope):
    @model_validator(mode="after")
    def _scope_given(self) -> NewPlan:
        if (self.pole_ids is None) == (self.road is None):
            raise ValueError("give either pole_ids or road")
        return self

    name: str = Field(min_length=1, max_length=200)
    pole_ids: list[str] | None = Field(None, min_length=1, max_length=10_000)
    road: str | None = Field(None, min_length=1, max_length=200)
    every_days: int = Field(ge=1, le=3660)
    starts_on: date
    checklist: Checklist = Field(min_length=1)
    priority: mt.Priority = mt.Priority.GENERAL

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Renmin Rd monthly",
                    "road": "Renmin Rd",
                    "every_days": 30,
                    "starts_on": "2026-12-01",
                    "checklist": ["pole upright", "cabinet locked", "lamp lit at dusk"],
                }
            ]
        }
    )


class PlanPatch(_Scope):
    name: str | None = Field(None, min_length=1, max_length=200)
    pole_ids: list[str] | None = Field(None, min_length=1, max_length=10_000)
    road: str | None = Field(None, min_length=1, max_length=200)
    checklist: Checklist | None = None
    priority: mt.Priority | None = None
    active: bool | None = None

    model_config = ConfigDict(json_schema_extra={"examples": [{"active": False}]})


class ItemResult(RequestBody):
    ok: bool
    note: str = Field("", max_length=2000)


class Record(BaseModel):
    id: int
    plan_id: int
    work_order_id: int
    pole_id: str
    results: dict[str, ItemResult]
    passed: bool = Field(description="Every checklist item ok")
    note: str
    by: int
    at: datetime


class NewRecord(RequestBody):
    work_order_id: int
    pole_id: str = Field(min_length=1, max_length=64)
    results: dict[str, ItemResult]
    note: str = Field("", max_length=10_000)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "work_order_id": 12,
                    "pole_id": "P0001",
                    "results": {
                        "pole upright": {"ok": True},
                        "cabinet locked": {"ok": False, "note": "lock broken"},
                        "lamp lit at dusk": {"ok": True},
                    },
                }
            ]
        }
    )


def _plan(row: dict[str, Any]) -> Plan:
    nxt = mt.next_due(
        starts_on=row["starts_on"], every_days=row["every_days"], last_period=row["last_period"]
    )
    return Plan.model_validate({**row, "next_due": nxt})


async def _check_poles(ctx: ApiContext, pole_ids: list[str] | None) -> None:
    if pole_ids:
        unknown = await InspectionStore(ctx.pool).unknown_poles(pole_ids)
        if unknown:
            raise bad_param("pole_ids", f"no such poles: {', '.join(unknown)}", where="body")


@router.get("/plans", summary="List inspection plans")
async def list_plans(
    ctx: Context, _: Staff, active: bool | None = None, limit: Limit = 100, after: After = None
) -> Page[Plan]:
    rows = await InspectionStore(ctx.pool).plans(active=active, after=after, limit=limit)
    items = [_plan(r) for r in rows]
    return Page[Plan](items=items, next=str(items[-1].id) if len(items) == limit else None)


@router.post("/plans", status_code=201, summary="Create an inspection plan (managers)")
async def create_plan(ctx: Context, _: Managers, audit: Audit, body: NewPlan) -> Plan:
    await _check_poles(ctx, body.pole_ids)
    values = body.model_dump(mode="json")
    async with ctx.pool.connection() as conn, conn.transaction():
        row = await InspectionStore(ctx.pool).create_plan(conn, values)
        plan = _plan(row)
        await audit.record(
            conn, "create", "inspection_plan", plan.id, after=plan.model_dump(mode="json")
        )
    return plan


@router.get("/plans/{plan_id}", summary="One inspection plan", responses={404: {}})
async def get_plan(ctx: Context, _: Staff, plan_id: int) -> Plan:
    row = await InspectionStore(ctx.pool).plan(plan_id)
    if row is None:
        raise not_found("inspection plan", str(plan_id))
    return _plan(row)


@router.patch(
    "/plans/{plan_id}",
    summary="Change a plan's poles, checklist, priority or name, or pause it (managers)",
    description="The schedule (starts_on, every_days) is fixed: make a new plan to change it.",
    responses={404: {"description": "No such plan"}},
)
async def patch_plan(
    ctx: Context, _: Managers, audit: Audit, plan_id: int, body: PlanPatch
) -> Plan:
    await _check_poles(ctx, body.pole_ids)
    changes = body.model_dump(exclude_unset=True, mode="json")
    if "pole_ids" in changes:
        changes["road"] = None
    elif "road" in changes:
        changes["pole_ids"] = None
    store = InspectionStore(ctx.pool)
    async with ctx.pool.connection() as conn, conn.transaction():
        before = await store.plan(plan_id, conn=conn)
        if before is None:
            raise not_found("inspection plan", str(plan_id))
        if not changes:
            return _plan(before)
        row = await store.update_plan(conn, plan_id, changes)
        await audit.record(
            conn,
            "update",
            "inspection_plan",
            plan_id,
            before=_plan(before).model_dump(mode="json"),
            after=_plan(row).model_dump(mode="json"),
        )
    return _plan(row)


@router.get("/records", summary="Inspection records, filtered")
async def list_records(
    ctx: Context,
    _: Staff,
    plan: Annotated[int | None, Query(ge=0)] = None,
    pole: Annotated[str | None, Query(max_length=64)] = None,
    work_order: Annotated[int | None, Query(ge=0)] = None,
    limit: Limit = 100,
    after: After = None,
) -> Page[Record]:
    rows = await InspectionStore(ctx.pool).records(
        plan=plan, pole=pole, work_order=work_order, after=after, limit=limit
    )
    items = [Record.model_validate(r) for r in rows]
    return Page[Record](items=items, next=str(items[-1].id) if len(items) == limit else None)


@router.post(
    "/records",
    status_code=201,
    summary="Record one pole's checklist result (managers, or the order's assignee)",
    responses={
        403: {"description": "Not your order"},
        409: {"description": "The order is not being worked on, or the pole is recorded"},
    },
)
async def create_record(ctx: Context, principal: Staff, audit: Audit, body: NewRecord) -> Record:
    order = await WorkOrderStore(ctx.pool).get(body.work_order_id)
    if order is None or order["kind"] != mt.Kind.INSPECTION:
        raise bad_param("work_order_id", "no such inspection work order", where="body")
    if not mt.may_work_on(principal.role, principal.user_id, order["assignee"]):
        raise HTTPException(403, detail="only managers and the order's assignee may record")
    if order["state"] not in (mt.State.ASSIGNED, mt.State.IN_PROGRESS):
        raise HTTPException(409, detail=f"the work order is {order['state']}, not being worked on")
    store = InspectionStore(ctx.pool)
    plan = await store.plan(order["plan_id"])
    assert plan is not None
    if body.pole_id not in await store.plan_poles(plan):
        raise bad_param("pole_id", "the pole is not in this inspection plan", where="body")
    problems = mt.checklist_problems(plan["checklist"], body.results)
    if problems:
        raise bad_param("results", "; ".join(problems), where="body")
    values: dict[str, object] = {
        "plan_id": plan["id"],
        "work_order_id": order["id"],
        "pole_id": body.pole_id,
        "results": {k: v.model_dump() for k, v in body.results.items()},
        "passed": all(v.ok for v in body.results.values()),
        "note": body.note,
        "by": principal.user_id,
    }
    async with ctx.pool.connection() as conn, conn.transaction():
        row = await store.add_record(conn, values)
        if row is None:
            raise HTTPException(409, detail="this pole already has a record on this order")
        record = Record.model_validate(row)
        await audit.record(
            conn, "create", "inspection_record", record.id, after=record.model_dump(mode="json")
        )
    return record
