"""Leases (提供挂载服务): installation, acceptance test, service, suspension,
termination, removal. The port is energised only while the lease is in service:
entering in_service switches it on, suspended or terminated switches it off,
through the tracked device-command path, after the state change commits."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gateway.adapters import mounting_store as ms
from gateway.api.deps import ApiContext, Context
from gateway.api.errors import bad_param, not_found
from gateway.api.routes.applications import (
    EXAMPLE,
    Application,
    Equipment,
    create_application,
    refused,
)
from gateway.api.schemas import Page, RequestBody
from gateway.api.security import AnyUser, Audit, Staff
from gateway.core import mounting as mo
from gateway.core.auth import Principal

router = APIRouter(prefix="/leases", tags=["leases"])

CommandState = Literal["pending", "sent", "succeeded", "failed", "timed_out"]

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
After = Annotated[int | None, Query(ge=0, description="Cursor: the `next` of the previous page")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such lease"}}


class PortSwitch(BaseModel):
    on: bool
    at: datetime
    sent: bool = Field(description="False: the command could not be sent (see error)")
    command_id: str | None = Field(None, description="Follow it at /devices/{meter}/commands")
    meter_device_id: str | None = None
    port_no: int | None = None
    error: str | None = Field(None, description="Why the command could not be sent")
    state: CommandState | None = Field(
        None, description="The command's state, final once finished_at is set"
    )
    command_error: str | None = Field(None, description="Why the command failed or timed out")
    finished_at: datetime | None = Field(None, description="When the command ended")


class Lease(BaseModel):
    id: int
    tenant_id: str
    pole_id: str
    application_id: int | None
    state: mo.LeaseState
    slot_id: str | None
    compartment_id: str | None
    port_id: str | None
    load_kg: float
    wind_area_m2: float
    power_w: float
    cabinet_units: int
    starts_on: date | None
    ends_on: date | None
    rates: dict[str, Any] | None
    port_switch: PortSwitch | None = Field(
        None, description="The latest port switch request made for a state change"
    )
    created_at: datetime
    updated_at: datetime


class LeaseHistoryEntry(BaseModel):
    id: int
    state: mo.LeaseState
    since: datetime = Field(description="When the state took effect (billing counts from it)")
    entered_at: datetime = Field(description="When the transition was entered")
    by: str = Field(description="Who entered it")
    note: str | None


class LeaseTransition(RequestBody):
    to: mo.LeaseState
    note: str = Field("", max_length=10_000)
    effective_at: AwareDatetime | None = Field(
        None,
        description="When the move took effect, if earlier than now (RFC 3339 with offset):"
        " not in the future, not before the lease's previous transition. The history keeps"
        " it beside when it was entered and by whom; rent and energy count from it.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "to": "in_service",
                    "note": "acceptance test passed",
                    "effective_at": "2026-12-10T09:00:00+08:00",
                }
            ]
        }
    )


CHANGE_EXAMPLE = {k: v for k, v in EXAMPLE.items() if k not in ("poles", "term_start")}


class ChangeRequest(Equipment):
    term_end: date | None = Field(None, description="A new end of the term, if it changes")

    model_config = ConfigDict(json_schema_extra={"examples": [CHANGE_EXAMPLE]})


def _visible(principal: Principal, row: dict[str, Any] | None, lease_id: int) -> dict[str, Any]:
    if row is None or (principal.tenant_id is not None and row["tenant_id"] != principal.tenant_id):
        raise not_found("lease", str(lease_id))
    return row


def _dump(row: dict[str, Any]) -> dict[str, Any]:
    return Lease.model_validate(row).model_dump(mode="json")


async def switch_port(ctx: ApiContext, lease: dict[str, Any], on: bool) -> dict[str, Any] | None:
    """Ask the port's meter to switch the port; never fails the state change that
    asked (the outcome, sent or not, is kept on the lease)."""
    if lease["port_id"] is None:
        return None
    async with ctx.pool.connection() as conn:
        port = await ms.port_row(conn, lease["port_id"])
    assert port is not None  # a foreign key
    out: dict[str, Any] = {
        "on": on,
        "at": datetime.now().astimezone(),
        "sent": False,
        "meter_device_id": port["meter_device_id"],
        "port_no": port["port_no"],
    }
    device = ctx.registry().device(port["meter_device_id"])
    command = device.profile.commands.get("switch_port") if device is not None else None
    if ctx.commands is None:
        out["error"] = "this process sends no device commands (polegw run does)"
    elif device is None or command is None:
        out["error"] = f"meter {port['meter_device_id']!r} is not in the registry with switch_port"
    else:
        args = command.check_args({"port": port["port_no"], "on": on})
        if not isinstance(args, dict):
            out["error"] = args.detail
        else:
            try:
                record = await ctx.commands.submit(device, "switch_port", args)
            except Exception as exc:  # noqa: BLE001 - the state change stands; say why
                out["error"] = f"could not submit switch_port: {exc}"
            else:
                out |= {"sent": True, "command_id": str(record["id"])}
    async with ctx.pool.connection() as conn, conn.transaction():
        row = await ms.lease_port_switch(conn, lease["id"], out)
    return dict(row["port_switch"])


@router.get("", summary="List leases (tenants: their own)")
async def list_leases(
    ctx: Context,
    principal: AnyUser,
    pole_id: Annotated[str | None, Query(max_length=64)] = None,
    state: mo.LeaseState | None = None,
    limit: Limit = 100,
    after: After = None,
) -> Page[Lease]:
    async with ctx.pool.connection() as conn:
        rows = await ms.lease_list(
            conn,
            tenant_id=principal.tenant_id,
            pole_id=pole_id,
            state=state.value if state else None,
            after=after,
            limit=limit,
        )
    items = [Lease.model_validate(r) for r in rows]
    return Page[Lease](items=items, next=str(items[-1].id) if len(items) == limit else None)


@router.get("/{lease_id}", summary="One lease", responses=NOT_FOUND)
async def get_lease(ctx: Context, principal: AnyUser, lease_id: int) -> Lease:
    async with ctx.pool.connection() as conn:
        row = await ms.lease_get(conn, lease_id)
    return Lease.model_validate(_visible(principal, row, lease_id))


@router.get("/{lease_id}/history", summary="Every state of the lease and since when")
async def lease_history(ctx: Context, principal: AnyUser, lease_id: int) -> list[LeaseHistoryEntry]:
    async with ctx.pool.connection() as conn:
        _visible(principal, await ms.lease_get(conn, lease_id), lease_id)
        rows = await ms.lease_history(conn, lease_id)
    return [LeaseHistoryEntry.model_validate(r) for r in rows]


@router.post(
    "/{lease_id}/transitions",
    summary="Move a lease along (staff); in_service switches its port on, suspended or"
    " terminated off",
    responses={
        **NOT_FOUND,
        403: {"description": "This caller may not make this move"},
        409: {"description": "The state machine does not allow this move"},
    },
)
async def transition(
    ctx: Context, principal: Staff, audit: Audit, lease_id: int, body: LeaseTransition
) -> Lease:
    async with ctx.pool.connection() as conn, conn.transaction():
        try:
            moved = await ms.lease_transition(
                conn,
                lease_id,
                body.to,
                by=principal.name,
                role=principal.role,
                note=body.note,
                effective_at=body.effective_at,
                tz=ZoneInfo(ctx.settings.site_timezone),
            )
        except mo.TransitionRefused as exc:
            lease = await ms.lease_get(conn, lease_id)
            assert lease is not None  # refused, so found (and locked)
            allowed = mo.allowed_moves(mo.LEASE_MOVES, mo.LeaseState(lease["state"]))
            raise refused(exc, lease["state"], body.to.value, allowed) from None
        except mo.EffectiveTimeRefused as exc:
            raise bad_param("effective_at", str(exc), where="body") from None
        if moved is None:
            raise not_found("lease", str(lease_id))
        before, row = moved
        after = _dump(row) | {"effective_at": body.effective_at}
        await audit.record(conn, "transition", "lease", lease_id, before=_dump(before), after=after)
    wanted = mo.port_switch_for(body.to)
    if wanted is not None:
        switched = await switch_port(ctx, row, wanted)
        if switched is not None:
            row = {**row, "port_switch": switched}
    return Lease.model_validate(row)


@router.post(
    "/{lease_id}/changes",
    status_code=201,
    summary="Apply to change a lease in service (its tenant, or staff on its behalf)",
    description="Creates an application of kind `change` for the lease's pole; it goes"
    " through the same acceptance and capacity review, and its approval updates the lease.",
    responses={**NOT_FOUND, 409: {"description": "The lease is not in service"}},
)
async def request_change(
    ctx: Context, principal: AnyUser, audit: Audit, lease_id: int, body: ChangeRequest
) -> Application:
    async with ctx.pool.connection() as conn, conn.transaction():
        lease = _visible(principal, await ms.lease_get(conn, lease_id, lock=True), lease_id)
        if lease["state"] != mo.LeaseState.IN_SERVICE:
            raise HTTPException(
                409, detail={"msg": "only a lease in service is changed", "state": lease["state"]}
            )
        values: dict[str, Any] = body.model_dump(mode="json")
        slots = [lease["slot_id"]] if lease["slot_id"] else []
        values |= {
            "kind": "change",
            "lease_id": lease_id,
            "tenant_id": lease["tenant_id"],
            "state": "submitted",
            "poles": [{"pole_id": lease["pole_id"], "slots": slots}],
            "term_start": lease["starts_on"],
            "term_end": body.term_end or lease["ends_on"],
        }
        row = await create_application(conn, audit, values, by=principal)
    return Application.model_validate(row)
