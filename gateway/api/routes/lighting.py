"""Energy saving (节能): lighting groups, schedules, overrides and the energy report.

Changes take effect in the gateway's lighting dispatcher within
POLEGW_LIGHTING_RELOAD_S (it re-reads groups, schedules and overrides).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Self

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from gateway.adapters.lighting_store import LightingStore
from gateway.api.deps import ApiContext, Context
from gateway.api.errors import bad_param, not_found
from gateway.api.schemas import Page, RequestBody
from gateway.api.security import Audit, Managers, Staff
from gateway.core.lighting import LOOKBACK, Level, Schedule, energy, plan_steps
from gateway.lighting import LAMP_COMMANDS, SiteDefaults, build_plan

router = APIRouter(prefix="/lighting", tags=["lighting"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such group"}}
GROUP_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MEMBER = Annotated[str, Field(min_length=1, max_length=64)]
# Lamp-on samples further apart than this count as unknown, not lit.
MAX_SAMPLE_GAP = timedelta(hours=1)
MAX_ENERGY_RANGE = timedelta(days=400)


class GroupBody(RequestBody):
    name: str = Field(min_length=1, max_length=200)
    road: str | None = Field(
        None, min_length=1, max_length=200, description="Every lamp on a pole of this road"
    )
    poles: list[MEMBER] = Field(default_factory=list, max_length=10000)
    devices: list[MEMBER] = Field(default_factory=list, max_length=10000)

    @model_validator(mode="after")
    def _members(self) -> Self:
        if self.road is None and not self.poles and not self.devices:
            raise ValueError("name a road, or list poles or devices")
        return self

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "Renmin Rd (all lamps)", "road": "Renmin Rd"}]}
    )


class NewGroup(GroupBody):
    id: str = Field(pattern=GROUP_ID)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": "renmin-rd", "name": "Renmin Rd", "road": "Renmin Rd"},
                {"id": "square", "name": "Station square", "poles": ["P0001", "P0002"]},
            ]
        }
    )


class Group(BaseModel):
    id: str
    name: str
    road: str | None
    poles: list[str]
    devices: list[str]
    created_at: datetime
    updated_at: datetime


class UpcomingStep(BaseModel):
    at: datetime
    level: int = Field(description="0 = off, 1..100 = dimmed to %")
    source: str = Field(description="schedule, schedule-start, override or override-end")


class GroupSchedule(BaseModel):
    group_id: str
    schedule: Schedule
    valid_from: datetime
    created_by: str
    created_at: datetime
    site: dict[str, Any] = Field(description="lat, lon and time zone the sun times are for")
    upcoming: list[UpcomingStep] = Field(
        description="The next 24 h (or `hours`) of steps (schedule and overrides)"
    )
    level_now: int | None = Field(
        None,
        description="The level in force now (schedule or override); null if no step"
        " was due in the last 3 days",
    )


class OverrideBody(RequestBody):
    level: Level
    until: AwareDatetime = Field(description="When the schedule takes over again")
    reason: str = Field("", max_length=500)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"level": 100, "until": "2026-11-23T06:00:00+08:00", "reason": "event"}]
        }
    )


class OverrideRecord(BaseModel):
    id: int
    group_id: str
    level: int
    starts_at: datetime
    until: datetime
    ended_early_at: datetime | None
    reason: str
    created_by: str
    created_at: datetime


class Dispatch(BaseModel):
    instant: datetime
    level: int
    source: str
    dispatched_at: datetime
    issued_at: datetime | None
    commands: list[str] | None


class LampEnergy(BaseModel):
    device_id: str
    used_kwh: float
    lit_hours: float
    rated_w: float
    rated_from: str = Field(description="peak_observed or default")


class EnergyReport(BaseModel):
    group_id: str
    start: datetime
    end: datetime
    used_kwh: float
    baseline_kwh: float = Field(description="Rated power times hours lit, for every lamp")
    saved_kwh: float = Field(description="baseline_kwh - used_kwh")
    lit_hours: float
    lamps: list[LampEnergy]


def _store(ctx: ApiContext) -> LightingStore:
    return LightingStore(ctx.pool)


def _defaults(ctx: ApiContext) -> SiteDefaults:
    s = ctx.settings
    return SiteDefaults(s.site_lat, s.site_lon, s.site_timezone)


def _by(principal: Any) -> str:
    return str(principal.name)


async def _group_or_404(ctx: ApiContext, group_id: str) -> Group:
    row = await _store(ctx).group(group_id)
    if row is None:
        raise not_found("lighting group", group_id)
    return Group.model_validate(row)


async def _check_members(ctx: ApiContext, body: GroupBody) -> None:
    poles, devices = await _store(ctx).unknown_members(body.poles, body.devices)
    if poles:
        raise bad_param("poles", f"no such pole: {poles[0]!r}", where="body")
    if devices:
        raise bad_param("devices", f"no such device: {devices[0]!r}", where="body")


# --------------------------------------------------------------------------- groups


@router.get("/groups", summary="List lighting groups")
async def list_groups(
    ctx: Context,
    _: Staff,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Page[Group]:
    items = [Group.model_validate(r) for r in await _store(ctx).groups(after=after, limit=limit)]
    return Page[Group](items=items, next=items[-1].id if len(items) == limit else None)


@router.post(
    "/groups",
    status_code=201,
    summary="Create a lighting group (lamps by road, by pole or by device)",
    responses={409: {"description": "A group with that id exists"}},
)
async def create_group(ctx: Context, principal: Managers, audit: Audit, body: NewGroup) -> Group:
    await _check_members(ctx, body)
    async with ctx.pool.connection() as conn, conn.transaction():
        row = await _store(ctx).save_group(
            conn, body.id, body.name, body.road, body.poles, body.devices, create=True
        )
        if row is None:
            raise HTTPException(
                409, detail=[{"loc": ["body", "id"], "msg": "a group with this id exists"}]
            )
        group = Group.model_validate(row)
        await audit.record(
            conn, "create", "lighting_group", group.id, after=group.model_dump(mode="json")
        )
    return group


@router.get("/groups/{group_id}", summary="One lighting group", responses=NOT_FOUND)
async def get_group(ctx: Context, _: Staff, group_id: str) -> Group:
    return await _group_or_404(ctx, group_id)


@router.put(
    "/groups/{group_id}",
    summary="Replace a group's name and members",
    responses=NOT_FOUND,
)
async def update_group(
    ctx: Context, principal: Managers, audit: Audit, group_id: str, body: GroupBody
) -> Group:
    await _check_members(ctx, body)
    async with ctx.pool.connection() as conn, conn.transaction():
        before = await _store(ctx).group(group_id, conn)
        if before is None:
            raise not_found("lighting group", group_id)
        row = await _store(ctx).save_group(
            conn, group_id, body.name, body.road, body.poles, body.devices, create=False
        )
        assert row is not None
        group = Group.model_validate(row)
        await audit.record(
            conn,
            "update",
            "lighting_group",
            group_id,
            before=Group.model_validate(before).model_dump(mode="json"),
            after=group.model_dump(mode="json"),
        )
    return group


@router.delete(
    "/groups/{group_id}",
    status_code=204,
    summary="Delete a group with its schedules, overrides and dispatch history",
    responses=NOT_FOUND,
)
async def delete_group(ctx: Context, principal: Managers, audit: Audit, group_id: str) -> Response:
    async with ctx.pool.connection() as conn, conn.transaction():
        before = await _store(ctx).group(group_id, conn)
        if before is None:
            raise not_found("lighting group", group_id)
        await _store(ctx).delete_group(conn, group_id)
        await audit.record(
            conn,
            "delete",
            "lighting_group",
            group_id,
            before=Group.model_validate(before).model_dump(mode="json"),
        )
    return Response(status_code=204)


# --------------------------------------------------------------------------- schedules


async def _with_upcoming(
    ctx: ApiContext, row: dict[str, Any], now: datetime, hours: int = 24
) -> GroupSchedule:
    plan_rows = await _store(ctx).plan_rows(now - LOOKBACK, row["group_id"])
    plan = build_plan(plan_rows[0], _defaults(ctx))
    # (now - 1 µs, now + hours]: a schedule put in force now shows its first level.
    steps = plan_steps(plan, now - timedelta(microseconds=1), now + timedelta(hours=hours))
    past = plan_steps(plan, now - LOOKBACK, now)
    return GroupSchedule(
        group_id=row["group_id"],
        schedule=Schedule.model_validate(row["definition"]),
        valid_from=row["valid_from"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        site={"lat": plan.site.lat, "lon": plan.site.lon, "timezone": str(plan.tz)},
        upcoming=[UpcomingStep(at=s.instant, level=s.level, source=s.source) for s in steps],
        level_now=past[-1].level if past else None,
    )


@router.get("/schedules", summary="The active schedule of every group, with its next 24 h")
async def list_schedules(
    ctx: Context,
    _: Staff,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    after: Annotated[str | None, Query(max_length=64, description="a group id")] = None,
) -> Page[GroupSchedule]:
    now = datetime.now(UTC)
    rows = await _store(ctx).schedules(after=after, limit=limit)
    items = [await _with_upcoming(ctx, r, now) for r in rows]
    return Page[GroupSchedule](items=items, next=items[-1].group_id if len(rows) == limit else None)


@router.get(
    "/groups/{group_id}/schedule",
    summary="A group's active schedule and the steps of the next 24 h (or `hours`)",
    responses={404: {"description": "No such group, or it has no schedule"}},
)
async def get_schedule(
    ctx: Context,
    _: Staff,
    group_id: str,
    hours: Annotated[
        int, Query(ge=1, le=336, description="How far ahead `upcoming` goes (a week: 168)")
    ] = 24,
) -> GroupSchedule:
    await _group_or_404(ctx, group_id)
    row = await _store(ctx).schedule(group_id)
    if row is None:
        raise not_found("schedule of lighting group", group_id)
    return await _with_upcoming(ctx, row, datetime.now(UTC), hours)


@router.put(
    "/groups/{group_id}/schedule",
    summary="Set a group's schedule (in force at once; the previous one is kept as history)",
    description=(
        "Weekly rules (ISO weekdays of the evening) with steps `{at, level}`; `at` is "
        '"HH:MM" local time or "dusk"/"dawn" ± minutes. Exceptions replace a night\'s '
        "steps or turn it off. The night of a date runs from local noon to the next noon."
    ),
    responses=NOT_FOUND,
)
async def put_schedule(
    ctx: Context, principal: Managers, audit: Audit, group_id: str, body: Schedule
) -> GroupSchedule:
    now = datetime.now(UTC)
    definition = body.model_dump(mode="json", exclude_none=True)
    async with ctx.pool.connection() as conn, conn.transaction():
        if await _store(ctx).group(group_id, conn) is None:
            raise not_found("lighting group", group_id)
        before = await _store(ctx).delete_schedule(conn, group_id)
        row = await _store(ctx).put_schedule(conn, group_id, definition, now, _by(principal))
        await audit.record(
            conn,
            "update",
            "lighting_schedule",
            group_id,
            before=None if before is None else before["definition"],
            after=definition,
        )
    return await _with_upcoming(ctx, row, now)


@router.delete(
    "/groups/{group_id}/schedule",
    status_code=204,
    summary="Remove a group's schedule (the lamps keep their last level)",
    responses={404: {"description": "No such group, or it has no schedule"}},
)
async def delete_schedule(
    ctx: Context, principal: Managers, audit: Audit, group_id: str
) -> Response:
    async with ctx.pool.connection() as conn, conn.transaction():
        if await _store(ctx).group(group_id, conn) is None:
            raise not_found("lighting group", group_id)
        before = await _store(ctx).delete_schedule(conn, group_id)
        if before is None:
            raise not_found("schedule of lighting group", group_id)
        await audit.record(
            conn, "delete", "lighting_schedule", group_id, before=before["definition"]
        )
    return Response(status_code=204)


# --------------------------------------------------------------------------- overrides


@router.get(
    "/groups/{group_id}/overrides",
    summary="A group's overrides, newest first",
    responses=NOT_FOUND,
)
async def list_overrides(
    ctx: Context,
    _: Staff,
    group_id: str,
    active: Annotated[bool, Query(description="Only those not yet ended")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int | None, Query(ge=0, description="`next` of the previous page")] = None,
) -> Page[OverrideRecord]:
    await _group_or_404(ctx, group_id)
    rows = await _store(ctx).overrides(
        group_id, since=datetime.now(UTC) if active else None, after=after, limit=limit
    )
    items = [OverrideRecord.model_validate(r) for r in rows]
    return Page[OverrideRecord](
        items=items, next=str(items[-1].id) if len(items) == limit else None
    )


@router.post(
    "/groups/{group_id}/overrides",
    status_code=201,
    summary="Override the schedule: this level from now until `until`",
    responses=NOT_FOUND,
)
async def create_override(
    ctx: Context, principal: Managers, audit: Audit, group_id: str, body: OverrideBody
) -> OverrideRecord:
    now = datetime.now(UTC)
    if body.until <= now:
        raise bad_param("until", "must be in the future", where="body")
    if body.until > now + timedelta(days=366):
        raise bad_param("until", "at most a year ahead", where="body")
    async with ctx.pool.connection() as conn, conn.transaction():
        if await _store(ctx).group(group_id, conn) is None:
            raise not_found("lighting group", group_id)
        row = await _store(ctx).add_override(
            conn, group_id, body.level, now, body.until, body.reason, _by(principal)
        )
        record = OverrideRecord.model_validate(row)
        await audit.record(
            conn, "create", "lighting_override", record.id, after=record.model_dump(mode="json")
        )
    return record


@router.delete(
    "/groups/{group_id}/overrides/{override_id}",
    summary="End an override now (the schedule takes over); kept as history",
    responses={404: {"description": "No such group or override"}},
)
async def end_override(
    ctx: Context, principal: Managers, audit: Audit, group_id: str, override_id: int
) -> OverrideRecord:
    now = datetime.now(UTC)
    async with ctx.pool.connection() as conn, conn.transaction():
        found = await _store(ctx).override(conn, group_id, override_id)
        if found is None:
            raise not_found("override", str(override_id))
        before = OverrideRecord.model_validate(found)
        if before.until <= now:
            return before  # already over: nothing to end
        record = OverrideRecord.model_validate(
            await _store(ctx).end_override(conn, override_id, now)
        )
        await audit.record(
            conn,
            "end",
            "lighting_override",
            override_id,
            before=before.model_dump(mode="json"),
            after=record.model_dump(mode="json"),
        )
    return record


# --------------------------------------------------------------------------- history, energy


@router.get(
    "/groups/{group_id}/dispatches",
    summary="Steps the gateway applied to the group, newest first",
    responses=NOT_FOUND,
)
async def list_dispatches(
    ctx: Context,
    _: Staff,
    group_id: str,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[AwareDatetime | None, Query(description="`next` of the previous page")] = None,
) -> Page[Dispatch]:
    await _group_or_404(ctx, group_id)
    rows = await _store(ctx).dispatches(group_id, before=after, limit=limit)
    items = [Dispatch.model_validate(r) for r in rows]
    return Page[Dispatch](
        items=items, next=items[-1].instant.isoformat() if len(items) == limit else None
    )


@router.get(
    "/groups/{group_id}/energy",
    summary="kWh used by the group's lamps, the full-power baseline and kWh saved",
    description=(
        "used: rises of each lamp's energy_kwh counter in [start, end]. baseline: each "
        "lamp's rated power times its hours lit (lamp_on samples). Rated power: the highest "
        "power_w the lamp reported in the 90 days before `end`, else "
        "POLEGW_LIGHTING_RATED_W. saved = baseline - used."
    ),
    responses=NOT_FOUND,
)
async def group_energy(
    ctx: Context,
    _: Staff,
    group_id: str,
    start: Annotated[AwareDatetime, Query()],
    end: Annotated[AwareDatetime, Query()],
) -> EnergyReport:
    if end <= start:
        raise bad_param("end", "must be after start")
    if end - start > MAX_ENERGY_RANGE:
        raise bad_param("end", f"at most {MAX_ENERGY_RANGE.days} days after start")
    await _group_or_404(ctx, group_id)
    store = _store(ctx)
    lamps = []
    for r in await store.member_devices(group_id):
        profile = ctx.catalog.get(str(r["profile"]))
        if profile is not None and any(c in profile.commands for c in LAMP_COMMANDS):
            lamps.append(str(r["id"]))
    default_w = ctx.settings.lighting_rated_w
    per_lamp: list[LampEnergy] = []
    used = baseline = hours = 0.0
    for r in await store.energy(lamps, start, end, MAX_SAMPLE_GAP):
        peak = r["peak_w"]
        rated = float(peak) if peak is not None and peak > 0 else default_w
        e = energy(float(r["used_kwh"]), float(r["lit_hours"]), rated)
        used += e.used_kwh
        baseline += e.baseline_kwh
        hours += e.lit_hours
        per_lamp.append(
            LampEnergy(
                device_id=r["device_id"],
                used_kwh=round(e.used_kwh, 6),
                lit_hours=round(e.lit_hours, 6),
                rated_w=rated,
                rated_from="peak_observed" if peak is not None and peak > 0 else "default",
            )
        )
    return EnergyReport(
        group_id=group_id,
        start=start,
        end=end,
        used_kwh=round(used, 6),
        baseline_kwh=round(baseline, 6),
        saved_kwh=round(baseline - used, 6),
        lit_hours=round(hours, 6),
        lamps=per_lamp,
    )
