"""Device commands: send one, follow it, list a device's history."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import Context
from gateway.api.errors import bad_param, not_found
from gateway.api.schemas import Page, RequestBody
from gateway.api.security import Audit, require
from gateway.core.auth import STAFF

router = APIRouter(prefix="/devices", tags=["commands"], dependencies=[Depends(require(STAFF))])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such device or command"}}


class CommandRequest(RequestBody):
    command: str = Field(max_length=64, description="A command of the device's profile")
    args: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"command": "set_dim", "args": {"pct": 40}}]}
    )


class CommandRecord(BaseModel):
    id: uuid.UUID
    device_id: str
    command: str
    args: dict[str, Any]
    state: Literal["pending", "sent", "succeeded", "failed", "timed_out"]
    error: str | None
    result: dict[str, Any] | None = Field(None, description="e.g. the value read back")
    created_at: datetime
    sent_at: datetime | None
    finished_at: datetime | None


@router.post(
    "/{device_id}/commands",
    status_code=202,
    summary="Send a command to a device (tracked; poll it for the outcome)",
    description=(
        "Modbus devices: the write goes through the device's bus between polls, then "
        "the point is read back. MQTT devices: published on "
        "`poles/{pole}/commands/{device}`; the outcome follows the pole's reply."
    ),
    responses={**NOT_FOUND, 503: {"description": "This process does not execute commands"}},
)
async def send_command(
    ctx: Context, audit: Audit, device_id: str, body: CommandRequest
) -> CommandRecord:
    if ctx.commands is None:
        raise HTTPException(503, detail="commands are executed by `polegw run`, not this process")
    device = ctx.registry().device(device_id)
    if device is None:
        raise not_found("device", device_id)
    command = device.profile.commands.get(body.command)
    if command is None:
        known = sorted(device.profile.commands)
        raise bad_param(
            "command", f"not a command of {device.profile.profile!r}: {known}", where="body"
        )
    checked = command.check_args(body.args)
    if not isinstance(checked, dict):
        raise bad_param("args", checked.detail, where="body")
    record = CommandRecord.model_validate(await ctx.commands.submit(device, body.command, checked))
    async with ctx.pool.connection() as conn:
        await audit.record(
            conn, "command", "device", device_id, after=record.model_dump(mode="json")
        )
    return record


@router.get("/{device_id}/commands", summary="A device's commands, newest first")
async def list_commands(
    ctx: Context,
    device_id: str,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[
        str | None, Query(max_length=20, description="`next` of the previous page")
    ] = None,
) -> Page[CommandRecord]:
    if await ctx.reads.device(device_id) is None:
        raise not_found("device", device_id)
    if after is not None and not after.isdigit():
        raise bad_param("after", "must be the `next` value of a previous page")
    rows = await ctx.command_store.list(
        device_id, before=int(after) if after else None, limit=limit
    )
    items = [CommandRecord.model_validate(r) for r in rows]
    return Page[CommandRecord](
        items=items, next=str(rows[-1]["seq"]) if len(rows) == limit else None
    )


@router.get("/{device_id}/commands/{command_id}", summary="One command", responses=NOT_FOUND)
async def get_command(ctx: Context, device_id: str, command_id: uuid.UUID) -> CommandRecord:
    row = await ctx.command_store.get(device_id, command_id)
    if row is None:
        raise not_found("command", str(command_id))
    return CommandRecord.model_validate(row)
