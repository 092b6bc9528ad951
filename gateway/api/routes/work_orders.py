"""Work orders (维护管理): by hand or from alarms, with deadlines, a state
machine, a timeline of notes, spare parts and photo/PDF attachments."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

import psycopg
from fastapi import APIRouter, HTTPException, Query, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.adapters.work_orders import (
    MaintenanceRules,
    OrderFilter,
    WorkOrderStore,
    utcnow,
    with_overdue,
)
from gateway.api.deps import ApiContext, Context
from gateway.api.errors import bad_param, not_found
from gateway.api.schemas import Page, RequestBody
from gateway.api.security import Audit, Managers, Staff
from gateway.core import maintenance as mt
from gateway.core.auth import MANAGERS, Principal

router = APIRouter(prefix="/work-orders", tags=["work-orders"])

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
After = Annotated[int | None, Query(ge=0, description="Cursor: the `next` of the previous page")]


class SparePart(RequestBody):
    part: str = Field(min_length=1, max_length=200)
    qty: float = Field(gt=0, allow_inf_nan=False)
    unit: str = Field("pcs", max_length=20)


class WorkOrder(BaseModel):
    id: int
    kind: mt.Kind
    source: str = Field(description="manual, alarm or schedule (inspection plans)")
    title: str
    description: str
    pole_id: str | None = Field(description="Null for inspection orders (see the plan)")
    device_id: str | None
    alarm_id: int | None
    fault: str | None
    plan_id: int | None
    period: int | None
    priority: mt.Priority
    state: mt.State
    assignee: int | None
    created_by: int | None = Field(description="Null when the system opened it")
    response_due: datetime | None
    resolution_due: datetime | None
    assigned_at: datetime | None
    started_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None
    resolution: str | None
    spare_parts: list[SparePart]
    created_at: datetime
    updated_at: datetime
    response_overdue: bool = Field(description="Not assigned or started by response_due")
    resolution_overdue: bool = Field(description="Not resolved by resolution_due")
    overdue: bool = Field(description="Either deadline missed (never for cancelled orders)")


class NewWorkOrder(RequestBody):
    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=10_000)
    pole_id: str = Field(min_length=1, max_length=64)
    device_id: str | None = Field(None, max_length=64)
    fault: str | None = Field(
        None,
        max_length=100,
        description="Fault class; at most one unfinished order per pole and fault",
    )
    priority: mt.Priority
    assignee: int | None = Field(None, description="Assign at once (a staff user id)")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "title": "Lamp flickers",
                    "description": "Reported by a resident",
                    "pole_id": "P0001",
                    "device_id": "P0001-lamp",
                    "fault": "lamp_failure",
                    "priority": "single_lamp_out",
                }
            ]
        }
    )


class WorkOrderPatch(RequestBody):
    title: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    priority: mt.Priority | None = Field(
        None, description="Managers only; deadlines are recomputed from created_at"
    )
    spare_parts: list[SparePart] | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"spare_parts": [{"part": "LED driver 100 W", "qty": 1, "unit": "pcs"}]}]
        }
    )


class Transition(RequestBody):
    to: mt.State
    assignee: int | None = Field(None, description="Required when moving to assigned")
    note: str = Field("", max_length=10_000, description="Goes on the timeline")
    resolution: str | None = Field(
        None, max_length=10_000, description="Required when moving to resolved"
    )
    spare_parts: list[SparePart] | None = Field(None, description="Replaces the list")

    model_config = ConfigDict(json_schema_extra={"examples": [{"to": "assigned", "assignee": 7}]})


class NewNote(RequestBody):
    text: str = Field(min_length=1, max_length=10_000)

    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "Cabinet fuse replaced"}]})


class Note(BaseModel):
    id: int
    work_order_id: int
    at: datetime
    author: int | None = Field(description="Null for entries the system wrote")
    kind: str = Field(description="note, transition or alarm")
    text: str
    from_state: str | None
    to_state: str | None
    alarm_id: int | None


class Attachment(BaseModel):
    id: int
    work_order_id: int
    filename: str
    content_type: str
    size: int
    sha256: str
    uploaded_by: int
    created_at: datetime


def _store(ctx: ApiContext) -> WorkOrderStore:
    return WorkOrderStore(ctx.pool)


def _out(row: dict[str, Any], now: datetime | None = None) -> WorkOrder:
    return WorkOrder.model_validate(with_overdue(row, now or utcnow()))


def _dump(row: dict[str, Any]) -> dict[str, Any]:
    return _out(row).model_dump(mode="json")


async def _existing(ctx: ApiContext, order_id: int) -> dict[str, Any]:
    row = await _store(ctx).get(order_id)
    if row is None:
        raise not_found("work order", str(order_id))
    return row


async def _check_assignee(ctx: ApiContext, user_id: int, where: str = "body") -> None:
    if await _store(ctx).staff_user(user_id) is None:
        raise bad_param("assignee", "no such enabled staff user", where=where)


def _may_work_on(principal: Principal, row: dict[str, Any]) -> None:
    if not mt.may_work_on(principal.role, principal.user_id, row["assignee"]):
        raise HTTPException(
            403, detail="only managers and the order's assigned maintainer may do this"
        )


class Assignee(BaseModel):
    id: int
    name: str
    role: str = Field(description="admin, operator or maintainer")


@router.get(
    "/assignees",
    summary="The staff users a work order may be assigned to (enabled, by name)",
)
async def list_assignees(ctx: Context, _: Staff) -> list[Assignee]:
    return [Assignee.model_validate(r) for r in await _store(ctx).staff_users()]


@router.get("", summary="List work orders, filtered")
async def list_work_orders(
    ctx: Context,
    _: Staff,
    state: mt.State | None = None,
    priority: mt.Priority | None = None,
    pole: Annotated[str | None, Query(max_length=64)] = None,
    assignee: Annotated[int | None, Query(ge=0)] = None,
    kind: mt.Kind | None = None,
    overdue: Annotated[bool | None, Query(description="Only (not) overdue orders")] = None,
    limit: Limit = 100,
    after: After = None,
) -> Page[WorkOrder]:
    flt = OrderFilter(
        state=state, priority=priority, pole=pole, assignee=assignee, kind=kind, overdue=overdue
    )
    rows = await _store(ctx).page(flt, after=after, limit=limit, now=utcnow())
    items = [WorkOrder.model_validate(r) for r in rows]
    return Page[WorkOrder](items=items, next=str(items[-1].id) if len(items) == limit else None)


@router.post(
    "",
    status_code=201,
    summary="Open a work order by hand (managers)",
    responses={409: {"description": "An unfinished order exists for this pole and fault"}},
)
async def create_work_order(
    ctx: Context, principal: Managers, audit: Audit, body: NewWorkOrder
) -> WorkOrder:
    if not await _store(ctx).pole_exists(body.pole_id):
        raise bad_param("pole_id", "no such pole", where="body")
    if body.assignee is not None:
        await _check_assignee(ctx, body.assignee)
    now = utcnow()
    due = MaintenanceRules.from_settings(ctx.settings).deadlines_for(body.priority, now)
    values: dict[str, object] = {
        "kind": "repair",
        "source": "manual",
        "title": body.title,
        "description": body.description,
        "pole_id": body.pole_id,
        "device_id": body.device_id,
        "fault": body.fault,
        "priority": body.priority.value,
        "created_by": principal.user_id,
        "response_due": due.response_due,
        "resolution_due": due.resolution_due,
        "created_at": now,
    }
    if body.assignee is not None:
        values |= {"state": "assigned", "assignee": body.assignee, "assigned_at": now}
    try:
        async with ctx.pool.connection() as conn, conn.transaction():
            row = await _store(ctx).create(conn, values)
            await audit.record(conn, "create", "work_order", row["id"], after=_dump(row))
    except psycopg.errors.UniqueViolation:
        raise HTTPException(
            409,
            detail=[
                {
                    "loc": ["body", "fault"],
                    "msg": "an unfinished work order exists for this pole and fault",
                }
            ],
        ) from None
    return _out(row, now)


@router.get("/{order_id}", summary="One work order", responses={404: {"description": "No such"}})
async def get_work_order(ctx: Context, _: Staff, order_id: int) -> WorkOrder:
    return _out(await _existing(ctx, order_id))


@router.patch(
    "/{order_id}",
    summary="Edit a work order (managers; the assignee may record spare parts)",
    responses={404: {"description": "No such work order"}},
)
async def patch_work_order(
    ctx: Context, principal: Staff, audit: Audit, order_id: int, body: WorkOrderPatch
) -> WorkOrder:
    changes = body.model_dump(exclude_unset=True, mode="json")
    manager_only = set(changes) - {"spare_parts"}
    async with ctx.pool.connection() as conn, conn.transaction():
        before = await _store(ctx).get(order_id, conn=conn)
        if before is None:
            raise not_found("work order", str(order_id))
        if manager_only and principal.role not in MANAGERS:
            raise HTTPException(403, detail="only managers may change " + ", ".join(manager_only))
        _may_work_on(principal, before)
        if body.priority is not None:
            due = MaintenanceRules.from_settings(ctx.settings).deadlines_for(
                body.priority, before["created_at"]
            )
            changes |= {"response_due": due.response_due, "resolution_due": due.resolution_due}
        if not changes:
            return _out(before)
        row = await _store(ctx).update(conn, order_id, changes)
        await audit.record(
            conn, "update", "work_order", order_id, before=_dump(before), after=_dump(row)
        )
    return _out(row)


@router.post(
    "/{order_id}/transitions",
    summary="Move a work order along: assign, start, resolve, close, reopen or cancel",
    responses={
        403: {"description": "This caller may not make this move"},
        404: {"description": "No such work order"},
        409: {"description": "The state machine does not allow this move"},
    },
)
async def transition(
    ctx: Context, principal: Staff, audit: Audit, order_id: int, body: Transition
) -> WorkOrder:
    if body.to is mt.State.ASSIGNED and body.assignee is not None:
        await _check_assignee(ctx, body.assignee)
    if body.to is mt.State.RESOLVED and not body.resolution:
        raise bad_param("resolution", "say what was done to resolve it", where="body")
    store = _store(ctx)
    now = utcnow()
    async with ctx.pool.connection() as conn, conn.transaction():
        before = await store.get(order_id, conn=conn)
        if before is None:
            raise not_found("work order", str(order_id))
        current = mt.State(before["state"])
        try:
            mt.check_transition(
                current,
                body.to,
                role=principal.role,
                user_id=principal.user_id,
                assignee=before["assignee"],
                new_assignee=body.assignee,
            )
        except mt.TransitionRefused as exc:
            if exc.reason == "forbidden":
                raise HTTPException(403, detail=exc.message) from None
            raise HTTPException(
                409,
                detail={
                    "msg": exc.message,
                    "from": current.value,
                    "to": body.to.value,
                    "allowed": sorted(s.value for s in mt.TRANSITIONS[current]),
                },
            ) from None
        values: dict[str, object] = {"state": body.to.value}
        column = mt.milestone_column(body.to)
        # The first assignment is the response; a reassignment keeps it.
        if column is not None and not (column == "assigned_at" and before["assigned_at"]):
            values[column] = now
        if body.to is mt.State.ASSIGNED:
            values["assignee"] = body.assignee
        if current is mt.State.RESOLVED and body.to is mt.State.IN_PROGRESS:
            values["resolved_at"] = None  # reopened: the resolution clock runs again
        if body.resolution is not None:
            values["resolution"] = body.resolution
        if body.spare_parts is not None:
            values["spare_parts"] = [p.model_dump() for p in body.spare_parts]
        row = await store.update(conn, order_id, values)
        await store.add_note(
            conn,
            order_id,
            author=principal.user_id,
            kind="transition",
            text=body.note,
            from_state=current.value,
            to_state=body.to.value,
        )
        await audit.record(
            conn, "transition", "work_order", order_id, before=_dump(before), after=_dump(row)
        )
    return _out(row, now)


@router.get("/{order_id}/notes", summary="The order's timeline: notes and transitions")
async def list_notes(
    ctx: Context, _: Staff, order_id: int, limit: Limit = 100, after: After = None
) -> Page[Note]:
    await _existing(ctx, order_id)
    rows = await _store(ctx).notes(order_id, after=after, limit=limit)
    items = [Note.model_validate(r) for r in rows]
    return Page[Note](items=items, next=str(items[-1].id) if len(items) == limit else None)


@router.post(
    "/{order_id}/notes",
    status_code=201,
    summary="Add a note (managers, or the assigned maintainer)",
    responses={403: {"description": "Not your order"}, 404: {"description": "No such order"}},
)
async def add_note(
    ctx: Context, principal: Staff, audit: Audit, order_id: int, body: NewNote
) -> Note:
    _may_work_on(principal, await _existing(ctx, order_id))
    async with ctx.pool.connection() as conn, conn.transaction():
        row = await _store(ctx).add_note(conn, order_id, author=principal.user_id, text=body.text)
        note = Note.model_validate(row)
        await audit.record(
            conn, "create", "work_order_note", note.id, after=note.model_dump(mode="json")
        )
    return note


@router.get("/{order_id}/attachments", summary="The order's attachments (without content)")
async def list_attachments(ctx: Context, _: Staff, order_id: int) -> list[Attachment]:
    await _existing(ctx, order_id)
    return [Attachment.model_validate(r) for r in await _store(ctx).attachments(order_id)]


@router.post(
    "/{order_id}/attachments",
    status_code=201,
    summary="Attach a photo (JPEG, PNG, GIF, WebP) or a PDF (managers, or the assignee)",
    responses={
        403: {"description": "Not your order"},
        404: {"description": "No such work order"},
        413: {"description": "Larger than POLEGW_WORKORDER_ATTACHMENT_MAX_BYTES"},
        415: {"description": "Not an image or a PDF (judged by content, not by name)"},
    },
)
async def upload_attachment(
    ctx: Context, principal: Staff, audit: Audit, order_id: int, file: UploadFile
) -> Attachment:
    _may_work_on(principal, await _existing(ctx, order_id))
    limit = ctx.settings.workorder_attachment_max_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, detail=f"an attachment may have at most {limit} bytes")
    content_type = mt.sniff_content_type(data[:16])
    if content_type is None:
        raise HTTPException(415, detail="attachments must be JPEG, PNG, GIF, WebP or PDF")
    filename = (file.filename or "attachment").replace("/", "_").replace("\\", "_")[:200]
    async with ctx.pool.connection() as conn, conn.transaction():
        row = await _store(ctx).add_attachment(
            conn,
            order_id,
            filename=filename,
            content_type=content_type,
            data=data,
            sha256=hashlib.sha256(data).digest(),
            by=principal.user_id,
        )
        out = Attachment.model_validate(row)
        await audit.record(
            conn, "create", "work_order_attachment", out.id, after=out.model_dump(mode="json")
        )
    return out


@router.get(
    "/{order_id}/attachments/{attachment_id}",
    summary="Download an attachment",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}, "image/png": {}, "application/pdf": {}}},
        404: {"description": "No such attachment"},
    },
)
async def download_attachment(
    ctx: Context, _: Staff, order_id: int, attachment_id: int
) -> Response:
    row = await _store(ctx).attachment(order_id, attachment_id)
    if row is None:
        raise not_found("attachment", str(attachment_id))
    return Response(
        content=bytes(row["data"]),
        media_type=row["content_type"],
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(row['filename'])}",
            "X-Content-Type-Options": "nosniff",
            "ETag": f'"{row["sha256"]}"',
        },
    )
