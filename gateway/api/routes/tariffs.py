"""Tariffs (电价): the versions of a named tariff, each valid on a range of
time, with time-of-use energy prices, rents, the maintenance fee and the
credits for unusable time."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gateway.adapters.billing_store import dumps
from gateway.adapters.tariff_store import TariffEnded, TariffOverlap, TariffStore
from gateway.api.deps import ApiContext, Context
from gateway.api.errors import bad_param, not_found
from gateway.api.schemas import Page, RequestBody
from gateway.api.security import Audit, Managers, Staff
from gateway.core import tariffs as tf

router = APIRouter(tags=["billing"])

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
After = Annotated[int | None, Query(ge=0, description="Cursor: the `next` of the previous page")]

TOU_EXAMPLE: dict[str, Any] = {
    "energy": {
        "prices": {"sharp": "1.20", "peak": "1.00", "flat": "0.60", "valley": "0.30"},
        "default_period": "flat",
        "seasons": [
            {
                "months": [7, 8, 11, 12],
                "ranges": [
                    {"period": "valley", "start": 0, "end": 8},
                    {"period": "peak", "start": 8, "end": 11},
                    {"period": "sharp", "start": 11, "end": 12},
                    {"period": "peak", "start": 18, "end": 22},
                ],
            }
        ],
    },
    "rent": {
        "positions": {"top": "500"},
        "slot_types": {"standard": "300"},
        "compartment": "90",
        "credits": {
            "emergencies": {"power_outage": "1", "flooding": "1", "collision_tilt": "1"},
            "outages": {"maintenance": "1", "power_cut": "1", "road_works": "0.5"},
        },
    },
    "maintenance_fee": "60",
}


def _store(ctx: ApiContext) -> TariffStore:
    return TariffStore(ctx.pool)


class NewTariff(RequestBody):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    valid_from: AwareDatetime
    valid_to: AwareDatetime | None = Field(None, description="Exclusive; null: open-ended")
    estimate_gaps: bool = Field(
        False, description="Estimate energy lost in data gaps from neighbouring intervals"
    )
    definition: tf.TariffDefinition

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "default",
                    "valid_from": "2026-11-01T00:00:00+08:00",
                    "valid_to": None,
                    "estimate_gaps": False,
                    "definition": TOU_EXAMPLE,
                }
            ]
        }
    )


class TariffOut(BaseModel):
    id: int
    name: str
    version: int
    valid_from: datetime
    valid_to: datetime | None
    estimate_gaps: bool
    definition: tf.TariffDefinition
    created_at: datetime


@router.get("/tariffs", summary="List tariff versions (staff)")
async def list_tariffs(
    ctx: Context,
    _: Staff,
    name: Annotated[str | None, Query(max_length=100)] = None,
    limit: Limit = 100,
    after: After = None,
) -> Page[TariffOut]:
    rows = await _store(ctx).tariff_page(name, after=after, limit=limit)
    items = [TariffOut.model_validate(r) for r in rows]
    return Page[TariffOut](items=items, next=str(items[-1].id) if len(items) == limit else None)


@router.get(
    "/tariffs/{tariff_id}",
    summary="One tariff version (staff)",
    responses={404: {"description": "No such tariff"}},
)
async def get_tariff(ctx: Context, _: Staff, tariff_id: int) -> TariffOut:
    row = await _store(ctx).tariff(tariff_id)
    if row is None:
        raise not_found("tariff", str(tariff_id))
    return TariffOut.model_validate(row)


@router.post(
    "/tariffs",
    status_code=201,
    summary="Add a tariff version (managers); versions of a name may not overlap",
    responses={409: {"description": "Overlaps the validity of another version"}},
)
async def create_tariff(ctx: Context, _: Managers, audit: Audit, body: NewTariff) -> TariffOut:
    if body.valid_to is not None and body.valid_to <= body.valid_from:
        raise bad_param("valid_to", "must be after valid_from", where="body")
    store = _store(ctx)
    try:
        async with ctx.pool.connection() as conn, conn.transaction():
            row = await store.create_tariff(
                conn,
                name=body.name,
                valid_from=body.valid_from,
                valid_to=body.valid_to,
                definition=body.definition.model_dump(mode="json"),
                estimate_gaps=body.estimate_gaps,
            )
            await audit.record(conn, "create", "tariff", row["id"], after=dumps(row))
    except TariffOverlap as exc:
        raise HTTPException(
            409,
            detail={
                "msg": f"overlaps the validity of version {exc.other['version']} of {body.name!r}",
                "conflicts_with": dumps(exc.other),
            },
        ) from None
    return TariffOut.model_validate(row)


class TariffEnd(RequestBody):
    valid_to: AwareDatetime = Field(description="Exclusive: the next version may start here")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"valid_to": "2027-01-01T00:00:00+08:00"}]}
    )


@router.post(
    "/tariffs/{tariff_id}/end",
    summary="Give an open-ended tariff version its end, so a next version may start (managers)",
    description="Only a version without an end can be given one; bills issued already keep"
    " the prices they were issued with, drafts take the change when regenerated.",
    responses={
        404: {"description": "No such tariff version"},
        409: {"description": "The version has an end already"},
    },
)
async def end_tariff(
    ctx: Context, _: Managers, audit: Audit, tariff_id: int, body: TariffEnd
) -> TariffOut:
    store = _store(ctx)
    async with ctx.pool.connection() as conn, conn.transaction():
        current = await store.tariff(tariff_id)
        if current is not None and body.valid_to <= current["valid_from"]:
            start = current["valid_from"].isoformat()
            raise bad_param("valid_to", f"must be after valid_from ({start})", where="body")
        try:
            moved = await store.end_tariff(conn, tariff_id, body.valid_to)
        except TariffEnded as exc:
            raise HTTPException(
                409,
                detail={
                    "msg": "the version has an end already; add a new version instead",
                    "valid_to": exc.row["valid_to"].isoformat(),
                },
            ) from None
        if moved is None:
            raise not_found("tariff", str(tariff_id))
        before, after = moved
        await audit.record(
            conn, "end", "tariff", tariff_id, before=dumps(before), after=dumps(after)
        )
    return TariffOut.model_validate(after)
