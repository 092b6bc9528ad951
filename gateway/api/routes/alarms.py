"""Alarms (智能检测): list and acknowledge alarms; the rules and their per-site overrides."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from gateway.adapters.alarm_store import AlarmStore
from gateway.api.deps import Context
from gateway.api.errors import bad_param, not_found
from gateway.api.schemas import Page, RequestBody
from gateway.api.security import Audit, Managers, Staff
from gateway.core.alarms import OverrideProblem, Rule, apply_override, compile_rules

router = APIRouter(prefix="/alarms", tags=["alarms"])

State = Literal["active", "acknowledged", "cleared"]
Severity = Literal["critical", "major", "minor", "warning"]


class Alarm(BaseModel):
    id: int
    rule_key: str
    fault: str
    severity: Severity
    pole_id: str
    device_id: str
    metric: str | None
    state: State
    first_seen: datetime
    last_seen: datetime
    count: int
    value: float | None
    message: str
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    ack_note: str | None = Field(None, description="What the acknowledger wrote")
    cleared_at: datetime | None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 17,
                    "rule_key": "cabinet-monitor/over_temperature",
                    "fault": "over_temperature",
                    "severity": "major",
                    "pole_id": "P0001",
                    "device_id": "P0001-cab",
                    "metric": "temp_c",
                    "state": "active",
                    "first_seen": "2026-11-22T10:00:00Z",
                    "last_seen": "2026-11-22T10:05:00Z",
                    "count": 1,
                    "value": 63.5,
                    "message": "temp_c 63.5 above 60 for 60s",
                    "acknowledged_by": None,
                    "acknowledged_at": None,
                    "cleared_at": None,
                }
            ]
        }
    )


ACK_EXAMPLE: dict[str, Any] = {"note": "checked on site: the door was left open"}


class AckBody(RequestBody):
    note: str | None = Field(
        None, max_length=2000, description="What was seen or done (shown with the alarm)"
    )

    model_config = ConfigDict(json_schema_extra={"examples": [ACK_EXAMPLE]})


class AlarmRule(BaseModel):
    key: str = Field(description="<profile>/<rule>")
    profile: str
    kind: Literal["above", "below", "equals", "event", "offline"]
    metric: str | None
    fault: str
    severity: Severity
    enabled: bool
    limit: float | None = Field(None, description="above/below: the threshold; equals: the value")
    clear: float | None = Field(None, description="above: clears below this; below: above this")
    for_s: float | None = None
    raise_on: list[str] = Field(default_factory=list)
    clear_on: list[str] = Field(default_factory=list)
    clear_after_s: float | None = None
    after_intervals: int | None = None
    interval_s: float | None = None
    emergency: str | None = None
    override: dict[str, Any] | None = Field(None, description="The site's override, if any")


class RuleOverride(RequestBody):
    """What a site changes of a rule; fields left out keep the profile's value."""

    enabled: bool | None = None
    severity: Severity | None = None
    above: float | None = None
    below: float | None = None
    clear_below: float | None = None
    clear_above: float | None = None
    hysteresis: float | None = Field(None, ge=0)
    for_s: float | None = Field(None, ge=0)
    clear_after_s: float | None = Field(None, gt=0)
    after_intervals: int | None = Field(None, ge=1, description="offline rules")
    interval_s: float | None = Field(None, gt=0, description="offline rules (MQTT devices)")

    model_config = ConfigDict(
        allow_inf_nan=False,
        extra="forbid",
        json_schema_extra={
            "examples": [{"above": 65, "clear_below": 58, "for_s": 120, "severity": "critical"}]
        },
    )


def _rule_out(rule: Rule, override: dict[str, Any] | None) -> AlarmRule:
    threshold = rule.kind in ("above", "below", "equals")
    return AlarmRule(
        key=rule.key,
        profile=rule.profile,
        kind=rule.kind,
        metric=rule.metric,
        fault=rule.fault,
        severity=rule.severity,
        enabled=rule.enabled,
        limit=rule.limit if threshold else None,
        clear=rule.clear if rule.kind in ("above", "below") else None,
        for_s=rule.for_s if threshold else None,
        raise_on=sorted(rule.raise_on),
        clear_on=sorted(rule.clear_on),
        clear_after_s=rule.clear_after_s,
        after_intervals=rule.after_intervals if rule.kind == "offline" else None,
        interval_s=rule.interval_s if rule.kind == "offline" else None,
        emergency=rule.emergency,
        override=override,
    )


def _aware(name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise bad_param(name, "must carry a UTC offset (e.g. 2026-11-22T10:00:00Z)")


@router.get("/rules", summary="Alarm rules in force: the profiles' rules with the site's overrides")
async def list_rules(ctx: Context, _: Staff) -> list[AlarmRule]:
    store = AlarmStore(ctx.pool)
    overrides = await store.overrides()
    rules, _problems = compile_rules(ctx.catalog, overrides)
    return [_rule_out(r, overrides.get(r.key)) for r in rules]


@router.put(
    "/rules/{rule_key:path}",
    summary="Override a rule for this site (thresholds, severity, enabled)",
    responses={404: {"description": "No such rule"}, 422: {"description": "Not a valid rule"}},
)
async def put_rule(
    ctx: Context, principal: Managers, audit: Audit, rule_key: str, body: RuleOverride
) -> AlarmRule:
    settings = body.model_dump(exclude_none=True)
    try:
        rule = apply_override(ctx.catalog, rule_key, settings)
    except KeyError:
        raise not_found("alarm rule", rule_key) from None
    except OverrideProblem as exc:
        raise bad_param(exc.field, exc.message, where="body") from None
    store = AlarmStore(ctx.pool)
    before = (await store.overrides()).get(rule_key)
    async with ctx.pool.connection() as conn, conn.transaction():
        await store.set_override(conn, rule_key, settings, principal.name)
        await audit.record(conn, "update", "alarm_rule", rule_key, before=before, after=settings)
    return _rule_out(rule, settings)


@router.delete(
    "/rules/{rule_key:path}",
    summary="Remove the site's override of a rule (back to the profile's values)",
    responses={404: {"description": "No override for that rule"}},
)
async def delete_rule_override(ctx: Context, _: Managers, audit: Audit, rule_key: str) -> AlarmRule:
    try:
        rule = apply_override(ctx.catalog, rule_key, {})
    except KeyError:
        raise not_found("alarm rule", rule_key) from None
    store = AlarmStore(ctx.pool)
    before = (await store.overrides()).get(rule_key)
    async with ctx.pool.connection() as conn, conn.transaction():
        if not await store.delete_override(conn, rule_key):
            raise not_found("alarm rule override", rule_key)
        await audit.record(conn, "delete", "alarm_rule", rule_key, before=before)
    return _rule_out(rule, None)


@router.get("", summary="Alarms, newest first, filtered by state, severity, pole, device, time")
async def list_alarms(
    ctx: Context,
    _: Staff,
    state: State | None = None,
    severity: Severity | None = None,
    pole: Annotated[str | None, Query(max_length=64)] = None,
    device: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[datetime | None, Query(description="Seen at or after (last_seen)")] = None,
    until: Annotated[datetime | None, Query(description="First seen before")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int | None, Query(ge=1, description="The `next` of the previous page")] = None,
) -> Page[Alarm]:
    _aware("since", since)
    _aware("until", until)
    rows = await AlarmStore(ctx.pool).page(
        state=state,
        severity=severity,
        pole=pole,
        device=device,
        since=since,
        until=until,
        before_id=after,
        limit=limit,
    )
    items = [Alarm.model_validate(r) for r in rows]
    return Page[Alarm](items=items, next=str(items[-1].id) if len(items) == limit else None)


@router.get("/{alarm_id}", summary="One alarm", responses={404: {"description": "No such alarm"}})
async def get_alarm(ctx: Context, _: Staff, alarm_id: int) -> Alarm:
    async with ctx.pool.connection() as conn:
        row = await AlarmStore.get(conn, alarm_id)
    if row is None:
        raise not_found("alarm", str(alarm_id))
    return Alarm.model_validate(row)


@router.post(
    "/{alarm_id}/ack",
    summary="Acknowledge an active alarm",
    responses={
        404: {"description": "No such alarm"},
        409: {"description": "The alarm is not active (already acknowledged or cleared)"},
    },
)
async def ack_alarm(
    ctx: Context,
    principal: Staff,
    audit: Audit,
    alarm_id: int,
    body: Annotated[AckBody | None, Body(examples=[ACK_EXAMPLE])] = None,
) -> Alarm:
    async with ctx.pool.connection() as conn, conn.transaction():
        before = await AlarmStore.get(conn, alarm_id, lock=True)
        if before is None:
            raise not_found("alarm", str(alarm_id))
        note = body.note if body is not None else None
        row = await AlarmStore.acknowledge(conn, alarm_id, principal.name, note)
        if row is None:
            raise HTTPException(
                409,
                detail={
                    "msg": f"alarm {alarm_id} is {before['state']}; only an active alarm"
                    " can be acknowledged",
                    "state": before["state"],
                },
            )
        alarm = Alarm.model_validate(row)
        await audit.record(
            conn,
            "acknowledge",
            "alarm",
            alarm_id,
            before=Alarm.model_validate(before).model_dump(mode="json"),
            after=alarm.model_dump(mode="json"),
        )
    return alarm
