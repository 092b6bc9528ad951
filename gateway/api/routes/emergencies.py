"""Emergencies (应急管理): records with a timeline, links, closing reports; plans and drills."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.adapters import emergency_store as store
from gateway.adapters.alarm_store import AlarmStore
from gateway.api.deps import Context
from gateway.api.errors import bad_param, not_found
from gateway.api.schemas import Page, RequestBody
from gateway.api.security import Audit, Managers, Staff
from gateway.core.alarms import EmergencyType
from gateway.core.emergencies import DEFAULT_ACTIONS, next_state
from gateway.emergencies import protect

router = APIRouter(prefix="/emergencies", tags=["emergencies"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such emergency"}}


class TimelineEntry(BaseModel):
    id: int
    at: datetime
    kind: Literal["raised", "dispatched", "action", "note", "resolved", "closed"]
    author: str
    text: str
    data: dict[str, Any]


class Emergency(BaseModel):
    id: int
    type: EmergencyType
    state: Literal["open", "resolved", "closed"]
    title: str
    description: str
    pole_id: str | None
    opened_by: str
    opened_at: datetime
    resolved_at: datetime | None
    closed_at: datetime | None
    report: str | None


class EmergencyDetail(Emergency):
    timeline: list[TimelineEntry]
    alarm_ids: list[int]
    work_order_ids: list[int]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 3,
                    "type": "sos_call",
                    "state": "open",
                    "title": "SOS call at pole P0001",
                    "description": "alarm 12: Emergency call button pressed",
                    "pole_id": "P0001",
                    "opened_by": "system (gateway)",
                    "opened_at": "2026-11-22T10:00:00Z",
                    "resolved_at": None,
                    "closed_at": None,
                    "report": None,
                    "timeline": [
                        {
                            "id": 1,
                            "at": "2026-11-22T10:00:00Z",
                            "kind": "raised",
                            "author": "system (gateway)",
                            "text": "alarm 12: Emergency call button pressed",
                            "data": {"alarm_id": 12},
                        }
                    ],
                    "alarm_ids": [12],
                    "work_order_ids": [],
                }
            ]
        }
    )


class NewEmergency(RequestBody):
    type: EmergencyType
    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=5000)
    pole_id: str | None = Field(None, max_length=64, description="Null for an area-wide one")
    protect: bool = Field(
        True, description="Issue the type's protective actions on the pole's devices"
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "severe_weather",
                    "title": "Typhoon warning, Renmin Rd",
                    "description": "Level II typhoon warning from 18:00",
                    "pole_id": "P0001",
                }
            ]
        }
    )


class NewEntry(RequestBody):
    kind: Literal["dispatched", "action", "note"]
    text: str = Field(min_length=1, max_length=5000)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"kind": "dispatched", "text": "Crew 2 (Li Wei) sent, ETA 20 min"}]
        }
    )


class Resolve(RequestBody):
    text: str = Field(min_length=1, max_length=5000, description="How it was resolved")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "Caller assisted; button reset"}]}
    )


class Close(RequestBody):
    report: str = Field(min_length=1, max_length=20000, description="The closing report")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"report": "Cause: pedestrian fall. Response 12 min. No damage."}]
        }
    )


class Links(RequestBody):
    alarm_ids: list[int] = Field(default_factory=list)
    work_order_ids: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some(self) -> Links:
        if not self.alarm_ids and not self.work_order_ids:
            raise ValueError("give alarm_ids or work_order_ids")
        return self

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"alarm_ids": [12], "work_order_ids": [7]}]}
    )


class Plan(BaseModel):
    id: int
    type: EmergencyType
    title: str
    body: str
    version: str
    created_by: str
    created_at: datetime


class NewPlan(RequestBody):
    type: EmergencyType
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=100_000, description="The plan's text")
    version: str = Field("1", max_length=32)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "flooding",
                    "title": "Flooded cabinets",
                    "body": "1. Cut tenant ports. 2. Dispatch crew. 3. Pump out...",
                    "version": "2026-1",
                }
            ]
        }
    )


class Drill(BaseModel):
    id: int
    type: EmergencyType
    plan_id: int | None
    held_at: datetime
    location: str
    participants: list[str]
    report: str
    created_by: str
    created_at: datetime


class NewDrill(RequestBody):
    type: EmergencyType
    plan_id: int | None = None
    held_at: datetime
    location: str = Field("", max_length=200)
    participants: list[str] = Field(default_factory=list, max_length=200)
    report: str = Field("", max_length=20000)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "sos_call",
                    "plan_id": 1,
                    "held_at": "2026-11-20T09:30:00Z",
                    "location": "Renmin Rd P0001",
                    "participants": ["li.wei", "zhang.min"],
                    "report": "Response 8 min; speaker volume raised.",
                }
            ]
        }
    )


def _aware(name: str, value: datetime | None, where: str = "query") -> None:
    if value is not None and value.tzinfo is None:
        raise bad_param(name, "must carry a UTC offset (e.g. 2026-11-22T10:00:00Z)", where=where)


def _conflict(message: str, **extra: object) -> HTTPException:
    return HTTPException(409, detail={"msg": message, **extra})


Limit = Annotated[int, Query(ge=1, le=1000)]
After = Annotated[int | None, Query(ge=1, description="The `next` of the previous page")]


# Plans and drills come before /{emergency_id}, which would otherwise take their paths.


@router.get("/plans", summary="Emergency plans (预案), newest first")
async def list_plans(
    ctx: Context,
    _: Staff,
    type: EmergencyType | None = None,
    limit: Limit = 100,
    after: After = None,
) -> Page[Plan]:
    async with ctx.pool.connection() as conn:
        rows = await store.plans(conn, type=type, before_id=after, limit=limit)
    items = [Plan.model_validate(r) for r in rows]
    return Page[Plan](items=items, next=str(items[-1].id) if len(items) == limit else None)


@router.post("/plans", status_code=201, summary="Store an emergency plan")
async def create_plan(ctx: Context, principal: Managers, audit: Audit, body: NewPlan) -> Plan:
    async with ctx.pool.connection() as conn, conn.transaction():
        row = await store.create_plan(
            conn,
            type=body.type,
            title=body.title,
            body=body.body,
            version=body.version,
            by=principal.name,
        )
        plan = Plan.model_validate(row)
        await audit.record(
            conn, "create", "emergency_plan", plan.id, after=plan.model_dump(mode="json")
        )
    return plan


@router.get("/drills", summary="Emergency drill records, newest first")
async def list_drills(
    ctx: Context,
    _: Staff,
    type: EmergencyType | None = None,
    limit: Limit = 100,
    after: After = None,
) -> Page[Drill]:
    async with ctx.pool.connection() as conn:
        rows = await store.drills(conn, type=type, before_id=after, limit=limit)
    items = [Drill.model_validate(r) for r in rows]
    return Page[Drill](items=items, next=str(items[-1].id) if len(items) == limit else None)


@router.post("/drills", status_code=201, summary="Record an emergency drill")
async def create_drill(ctx: Context, principal: Managers, audit: Audit, body: NewDrill) -> Drill:
    _aware("held_at", body.held_at, where="body")
    async with ctx.pool.connection() as conn, conn.transaction():
        if body.plan_id is not None and not await store.plan_exists(conn, body.plan_id):
            raise bad_param("plan_id", "no such emergency plan", where="body")
        row = await store.create_drill(
            conn,
            type=body.type,
            plan_id=body.plan_id,
            held_at=body.held_at,
            location=body.location,
            participants=body.participants,
            report=body.report,
            by=principal.name,
        )
        drill = Drill.model_validate(row)
        await audit.record(
            conn, "create", "emergency_drill", drill.id, after=drill.model_dump(mode="json")
        )
    return drill


@router.get("", summary="Emergencies, newest first, filtered by state, type, pole, time")
async def list_emergencies(
    ctx: Context,
    _: Staff,
    state: Literal["open", "resolved", "closed"] | None = None,
    type: EmergencyType | None = None,
    pole: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[datetime | None, Query(description="Opened at or after")] = None,
    until: Annotated[datetime | None, Query(description="Opened before")] = None,
    limit: Limit = 100,
    after: After = None,
) -> Page[Emergency]:
    _aware("since", since)
    _aware("until", until)
    async with ctx.pool.connection() as conn:
        rows = await store.page(
            conn,
            state=state,
            type=type,
            pole=pole,
            since=since,
            until=until,
            before_id=after,
            limit=limit,
        )
    items = [Emergency.model_validate(r) for r in rows]
    return Page[Emergency](items=items, next=str(items[-1].id) if len(items) == limit else None)


async def _detail(ctx: Context, eid: int) -> EmergencyDetail:
    async with ctx.pool.connection() as conn:
        row = await store.detail(conn, eid)
    if row is None:
        raise not_found("emergency", str(eid))
    return EmergencyDetail.model_validate(row)


@router.post(
    "",
    status_code=201,
    summary="Open an emergency by hand; its type's protective actions run on the pole",
    responses={409: {"description": "One of that type is already open on the pole"}},
)
async def create_emergency(
    ctx: Context, principal: Managers, audit: Audit, body: NewEmergency
) -> EmergencyDetail:
    if body.pole_id is not None and not ctx.registry().has_pole(body.pole_id):
        async with ctx.pool.connection() as conn:
            cur = await conn.execute("SELECT 1 FROM poles WHERE id = %s", (body.pole_id,))
            if await cur.fetchone() is None:
                raise bad_param("pole_id", "no such pole", where="body")
    try:
        async with ctx.pool.connection() as conn, conn.transaction():
            row = await store.create(
                conn,
                type=body.type,
                pole_id=body.pole_id,
                title=body.title,
                description=body.description,
                by=principal.name,
            )
            await audit.record(
                conn,
                "create",
                "emergency",
                row["id"],
                after=Emergency.model_validate(row).model_dump(mode="json"),
            )
    except psycopg.errors.UniqueViolation:
        raise _conflict(
            f"an emergency of type {body.type} is already open on pole {body.pole_id}"
        ) from None
    if body.protect and body.pole_id is not None:
        await protect(
            pool=ctx.pool,
            registry=ctx.registry,
            dispatcher=ctx.commands,
            emergency_id=row["id"],
            pole_id=body.pole_id,
            actions=DEFAULT_ACTIONS.get(body.type, ()),
            actor=principal,
        )
    return await _detail(ctx, row["id"])


@router.get(
    "/{emergency_id}", summary="One emergency with its timeline and links", responses=NOT_FOUND
)
async def get_emergency(ctx: Context, _: Staff, emergency_id: int) -> EmergencyDetail:
    return await _detail(ctx, emergency_id)


class ProtectiveAction(BaseModel):
    id: int
    action: str = Field(description="What the action is for, e.g. lamps_full")
    device_id: str
    command: str
    args: dict[str, Any]
    state: Literal["pending", "running", "succeeded", "failed", "cancelled"]
    attempts: int
    next_at: datetime | None = Field(description="When a pending action is (re)tried")
    command_id: str | None = Field(description="The device command of the latest attempt")
    last_error: str | None


@router.get(
    "/{emergency_id}/actions",
    summary="The protective actions issued for an emergency, with their states",
    responses=NOT_FOUND,
)
async def list_actions(ctx: Context, _: Staff, emergency_id: int) -> list[ProtectiveAction]:
    async with ctx.pool.connection() as conn:
        if await store.get(conn, emergency_id) is None:
            raise not_found("emergency", str(emergency_id))
        rows = await store.actions(conn, emergency_id)
    return [
        ProtectiveAction.model_validate(
            {**r, "command_id": None if r["command_id"] is None else str(r["command_id"])}
        )
        for r in rows
    ]


@router.post(
    "/{emergency_id}/timeline",
    status_code=201,
    summary="Add a timeline entry (dispatched, action taken, note)",
    responses={**NOT_FOUND, 409: {"description": "The emergency is closed"}},
)
async def add_entry(
    ctx: Context, principal: Staff, audit: Audit, emergency_id: int, body: NewEntry
) -> TimelineEntry:
    async with ctx.pool.connection() as conn, conn.transaction():
        found = await store.get(conn, emergency_id, lock=True)
        if found is None:
            raise not_found("emergency", str(emergency_id))
        if found["state"] == "closed":
            raise _conflict(f"emergency {emergency_id} is closed", state="closed")
        row = await store.add_entry(conn, emergency_id, body.kind, principal.name, body.text)
        entry = TimelineEntry.model_validate(row)
        await audit.record(
            conn, "add_entry", "emergency", emergency_id, after=entry.model_dump(mode="json")
        )
    return entry


async def _move(
    ctx: Context, principal: Managers, audit: Audit, eid: int, move: str, text: str
) -> EmergencyDetail:
    async with ctx.pool.connection() as conn, conn.transaction():
        found = await store.get(conn, eid, lock=True)
        if found is None:
            raise not_found("emergency", str(eid))
        to = next_state(found["state"], move)
        if to is None:
            raise _conflict(
                f"cannot {move} an emergency that is {found['state']}", state=found["state"]
            )
        row = await store.move(conn, eid, to, report=text if to == "closed" else None)
        await store.add_entry(conn, eid, to, principal.name, text)
        await audit.record(
            conn,
            move,
            "emergency",
            eid,
            before=Emergency.model_validate(found).model_dump(mode="json"),
            after=Emergency.model_validate(row).model_dump(mode="json"),
        )
    return await _detail(ctx, eid)


@router.post(
    "/{emergency_id}/resolve",
    summary="Mark an open emergency resolved",
    responses={**NOT_FOUND, 409: {"description": "The emergency is not open"}},
)
async def resolve(
    ctx: Context, principal: Managers, audit: Audit, emergency_id: int, body: Resolve
) -> EmergencyDetail:
    return await _move(ctx, principal, audit, emergency_id, "resolve", body.text)


@router.post(
    "/{emergency_id}/close",
    summary="Close a resolved emergency with its closing report",
    responses={**NOT_FOUND, 409: {"description": "The emergency is not resolved"}},
)
async def close(
    ctx: Context, principal: Managers, audit: Audit, emergency_id: int, body: Close
) -> EmergencyDetail:
    return await _move(ctx, principal, audit, emergency_id, "close", body.report)


@router.post(
    "/{emergency_id}/links",
    summary="Link alarms and work orders to an emergency",
    responses=NOT_FOUND,
)
async def link(
    ctx: Context, principal: Managers, audit: Audit, emergency_id: int, body: Links
) -> EmergencyDetail:
    async with ctx.pool.connection() as conn, conn.transaction():
        found = await store.get(conn, emergency_id, lock=True)
        if found is None:
            raise not_found("emergency", str(emergency_id))
        for alarm_id in body.alarm_ids:
            if await AlarmStore.get(conn, alarm_id) is None:
                raise bad_param("alarm_ids", f"no alarm {alarm_id}", where="body")
            await store.link_alarm(conn, emergency_id, alarm_id)
        for wo in body.work_order_ids:
            await store.link_work_order(conn, emergency_id, wo)
        await audit.record(
            conn, "link", "emergency", emergency_id, after=body.model_dump(mode="json")
        )
    return await _detail(ctx, emergency_id)
