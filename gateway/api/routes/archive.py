"""Operation archive (运行档案): device records and the history of every pole and device.

Pole records are written through /poles (create, patch, takeover); a device's
record through PATCH /devices/{id}/archive. History is kept by the database
(migration 0004), so it also shows changes made by a site import.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from gateway.adapters import archive_store
from gateway.adapters.archive_store import ArchiveHistory
from gateway.api.deps import Context
from gateway.api.errors import not_found
from gateway.api.routes.poles import ArchiveFields, check_dates
from gateway.api.schemas import Device, Page
from gateway.api.security import Audit, Managers, Staff

router = APIRouter(tags=["archive"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such record"}}


class DeviceArchivePatch(ArchiveFields):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "LC-200",
                    "vendor": "Hangzhou Lighting",
                    "serial": "LC200-778812",
                    "installed_on": "2026-05-20",
                    "mounting_position": "arm A, 9 m",
                    "warranty_until": "2028-05-20",
                    "status": "in_service",
                }
            ]
        },
    )


class HistoryEntry(BaseModel):
    id: int
    resource: Literal["poles", "devices"]
    resource_id: str
    action: Literal["create", "update"]
    changed_at: datetime
    changed_by: str = Field(description="The user, or db:<role> for writes outside the API")
    changes: dict[str, list[Any]] = Field(description="{field: [old, new]}")


@router.patch(
    "/devices/{device_id}/archive",
    summary="Change a device's archive record (admin, operator)",
    responses=NOT_FOUND,
)
async def patch_device_archive(
    ctx: Context, principal: Managers, audit: Audit, device_id: str, body: DeviceArchivePatch
) -> Device:
    values = body.model_dump(exclude_unset=True)
    async with ctx.pool.connection() as conn, conn.transaction():
        await archive_store.set_actor(conn, principal.name)
        before = await archive_store.locked(conn, "devices", device_id)
        if before is None:
            raise not_found("device", device_id)
        check_dates({**before, **values})
        after = await archive_store.update(conn, "devices", device_id, values)
        assert after is not None
        await audit.record(
            conn,
            "update",
            "device",
            device_id,
            before={k: before[k] for k in archive_store.WRITABLE["devices"]},
            after={k: after[k] for k in archive_store.WRITABLE["devices"]},
        )
    row = await ctx.reads.device(device_id)
    if row is None:
        raise not_found("device", device_id)
    return Device.model_validate(row)


@router.get(
    "/archive/{resource}/{resource_id}/history",
    summary="Every change of a pole's or device's record, newest first (staff)",
    responses=NOT_FOUND,
)
async def history(
    ctx: Context,
    _: Staff,
    resource: Literal["poles", "devices"],
    resource_id: str,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 100,
    after: Annotated[
        int | None, Query(ge=0, description="Cursor: the `next` of the previous page")
    ] = None,
) -> Page[HistoryEntry]:
    store = ArchiveHistory(ctx.pool)
    rows = await store.entries(resource, resource_id, before_id=after, limit=limit)
    if not rows and after is None and not await store.exists(resource, resource_id):
        raise not_found(resource.rstrip("s"), resource_id)
    items = [HistoryEntry.model_validate(r) for r in rows]
    return Page[HistoryEntry](items=items, next=str(items[-1].id) if len(items) == limit else None)
