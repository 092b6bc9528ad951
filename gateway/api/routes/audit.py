"""The audit log, read-only: there is no route that changes or deletes an entry."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from gateway.adapters.audit import AuditLog
from gateway.api.deps import Context
from gateway.api.errors import bad_param
from gateway.api.schemas import Page
from gateway.api.security import Admin

router = APIRouter(prefix="/audit", tags=["audit"])


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    actor_role: str
    action: str
    resource: str
    resource_id: str
    before: Any
    after: Any

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "id": 42,
                    "at": "2026-11-22T10:00:00Z",
                    "actor": "li.wei",
                    "actor_role": "operator",
                    "action": "update",
                    "resource": "pole",
                    "resource_id": "P0001",
                    "before": {"status": "in_service"},
                    "after": {"status": "under_maintenance"},
                }
            ]
        }
    }


Text = Annotated[str | None, Query(max_length=128)]


@router.get("", summary="Audit entries, newest first (admin)")
async def list_audit(
    ctx: Context,
    _: Admin,
    resource: Text = None,
    resource_id: Text = None,
    actor: Text = None,
    action: Annotated[
        str | None, Query(max_length=64, description="Only this action, e.g. create, update")
    ] = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int | None, Query(ge=1, description="The `next` of the previous page")] = None,
) -> Page[AuditEntry]:
    for name, value in (("start", start), ("end", end)):
        if value is not None and value.tzinfo is None:
            raise bad_param(name, "must carry a UTC offset (e.g. 2026-11-22T10:00:00Z)")
    rows = await AuditLog(ctx.pool).entries(
        resource=resource,
        resource_id=resource_id,
        actor=actor,
        action=action,
        start=start,
        end=end,
        before_id=after,
        limit=limit,
    )
    items = [AuditEntry.model_validate(r) for r in rows]
    return Page[AuditEntry](items=items, next=str(items[-1].id) if len(items) == limit else None)
