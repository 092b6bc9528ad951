"""Mounting applications (受理申请和审核): a tenant applies, staff accept or return it,
review the capacity per pole (with recorded overrides), managers approve (which
creates the leases and reserves the capacity) or staff reject it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Annotated, Any, Literal, Self

import psycopg
from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.adapters import mounting_store as ms
from gateway.api.deps import Context
from gateway.api.errors import bad_param, not_found
from gateway.api.schemas import Page, RequestBody
from gateway.api.security import AnyUser, Audit, AuditTrail, Managers, Staff
from gateway.core import mounting as mo
from gateway.core.auth import Principal

router = APIRouter(prefix="/applications", tags=["applications"])

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
After = Annotated[int | None, Query(ge=0, description="Cursor: the `next` of the previous page")]
Supply = Literal["AC", "DC"]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such application"}}


class Dimensions(RequestBody):
    width_mm: float = Field(gt=0)
    height_mm: float = Field(gt=0)
    depth_mm: float = Field(gt=0)


class DeviceItem(RequestBody):
    type: str = Field(min_length=1, max_length=100, description="e.g. 5G micro station")
    model: str = Field("", max_length=100)
    quantity: int = Field(1, ge=1, le=100, description="On each target pole")
    weight_kg: float = Field(ge=0, le=10_000)
    dimensions: Dimensions | None = None
    wind_area_m2: float = Field(0, ge=0, le=100)
    power_w: float = Field(0, ge=0, le=1_000_000)


class TargetPole(RequestBody):
    pole_id: str = Field(max_length=64)
    slots: list[str] = Field(default_factory=list, max_length=20, description="Preferred slots")


class AttachmentRef(RequestBody):
    name: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=1, max_length=2000, description="Where the document is kept")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class Equipment(RequestBody):
    """What is to be mounted (the same on each target pole)."""

    devices: list[DeviceItem] = Field(min_length=1, max_length=50)
    supply: Supply = "AC"
    voltage_v: float | None = Field(None, gt=0, le=1000)
    height_m: float | None = Field(None, ge=0, le=100, description="Wanted mounting height")
    cabinet_units: int = Field(0, ge=0, le=100)
    fibre_cores: int = Field(0, ge=0, le=288)
    bandwidth_mbps: float | None = Field(None, ge=0)
    attachments: list[AttachmentRef] = Field(default_factory=list, max_length=50)
    description: str = Field("", max_length=10_000)


EXAMPLE: dict[str, Any] = {
    "devices": [
        {
            "type": "5G micro station",
            "model": "AAU-5613",
            "quantity": 1,
            "weight_kg": 18,
            "dimensions": {"width_mm": 400, "height_mm": 600, "depth_mm": 150},
            "wind_area_m2": 0.24,
            "power_w": 450,
        }
    ],
    "supply": "AC",
    "voltage_v": 220,
    "cabinet_units": 2,
    "fibre_cores": 2,
    "bandwidth_mbps": 1000,
    "term_start": "2027-01-01",
    "term_end": "2029-12-31",
    "poles": [{"pole_id": "P0001", "slots": ["P0001-top"]}],
    "attachments": [{"name": "drawing.pdf", "url": "https://docs.example/drawing.pdf"}],
}


class NewApplication(Equipment):
    term_start: date | None = None
    term_end: date | None = None
    poles: list[TargetPole] = Field(min_length=1, max_length=200)

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE]})

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.term_start and self.term_end and self.term_end < self.term_start:
            raise ValueError("term_end is before term_start")
        ids = [p.pole_id for p in self.poles]
        if len(set(ids)) != len(ids):
            raise ValueError("a pole is named twice in poles")
        return self


class Application(BaseModel):
    id: int
    kind: Literal["new", "change"]
    tenant_id: str
    lease_id: int | None = Field(description="The lease a change application changes")
    state: mo.ApplicationState
    devices: list[dict[str, Any]]
    supply: Supply
    voltage_v: float | None
    height_m: float | None
    cabinet_units: int
    fibre_cores: int
    bandwidth_mbps: float | None
    term_start: date | None
    term_end: date | None
    poles: list[dict[str, Any]]
    attachments: list[dict[str, Any]]
    description: str
    reasons: list[str] | None = Field(description="Of the latest return or rejection")
    decision: dict[str, Any] | None = Field(description="The approval: checks, assignment, rates")
    created_by: int | None
    created_at: datetime
    updated_at: datetime


class Transition(RequestBody):
    to: mo.ApplicationState
    reasons: list[str] = Field(
        default_factory=list, max_length=50, description="Required to return or reject"
    )
    note: str = Field("", max_length=10_000)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"to": "returned", "reasons": ["the wind area of the antenna is missing"]}]
        }
    )


class HistoryEntry(BaseModel):
    id: int
    at: datetime
    by: int | None
    from_state: str | None
    to_state: str | None
    reasons: list[str] | None
    note: str


class CheckResult(BaseModel):
    name: str
    ok: bool
    needed: float | None
    available: float | None
    message: str
    overridden: dict[str, Any] | None = Field(description="who, when and why, if waived")


class AssignmentOut(BaseModel):
    slot_id: str | None
    compartment_id: str | None
    port_id: str | None


class PoleCheck(BaseModel):
    pole_id: str
    assignment: AssignmentOut
    checks: list[CheckResult]
    approvable: bool
    blocking: list[str]


class Review(BaseModel):
    application_id: int
    state: mo.ApplicationState
    poles: list[PoleCheck]
    approvable: bool


class Override(RequestBody):
    pole_id: str = Field(max_length=64)
    check: str = Field(description=f"One of: {', '.join(mo.CHECK_NAMES)}")
    reason: str = Field(min_length=1, max_length=2000)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "pole_id": "P0001",
                    "check": "pole_wind_area",
                    "reason": "Structural report 2026-114 allows 2.4 m² on this pole",
                }
            ]
        }
    )


class OverrideRecord(BaseModel):
    id: int
    application_id: int
    pole_id: str
    check_name: str
    reason: str
    by: int
    at: datetime


class PoleAssignment(RequestBody):
    pole_id: str = Field(max_length=64)
    slot_id: str | None = Field(None, max_length=64)
    compartment_id: str | None = Field(None, max_length=64)
    port_id: str | None = Field(None, max_length=64)


class Approval(RequestBody):
    assignments: list[PoleAssignment] = Field(
        default_factory=list,
        description="Per pole; a pole left out gets the review's suggested assignment",
    )
    overrides: list[Override] = Field(default_factory=list, description="Recorded with it")
    rates: dict[str, Any] | None = Field(
        None,
        description="Stored on each lease as given; billing reads `tariff`, the name of an"
        " existing tariff (leases without one are billed with the `default` tariff)",
    )
    note: str = Field("", max_length=10_000)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "assignments": [
                        {
                            "pole_id": "P0001",
                            "slot_id": "P0001-top",
                            "compartment_id": "P0001-cab-a",
                            "port_id": "P0001-port1",
                        }
                    ],
                    "rates": {"tariff": "std-2027", "lease_fee_month": 300},
                }
            ]
        }
    )


class Approved(BaseModel):
    application: Application
    lease_ids: list[int]


# --------------------------------------------------------------------------- helpers


def _out(row: dict[str, Any]) -> Application:
    return Application.model_validate(row)


def _dump(row: dict[str, Any]) -> dict[str, Any]:
    return _out(row).model_dump(mode="json")


def _visible(principal: Principal, row: dict[str, Any] | None, app_id: int) -> dict[str, Any]:
    """Another tenant's application answers like one that does not exist."""
    if row is None or (principal.tenant_id is not None and row["tenant_id"] != principal.tenant_id):
        raise not_found("application", str(app_id))
    return row


def refused(
    exc: mo.TransitionRefused, current: str, to: str, allowed: Sequence[str]
) -> HTTPException:
    if exc.reason == "forbidden":
        return HTTPException(403, detail=exc.message)
    return HTTPException(
        409, detail={"msg": exc.message, "from": current, "to": to, "allowed": allowed}
    )


async def check_poles(conn: psycopg.AsyncConnection[Any], pole_ids: list[str]) -> None:
    for i, pole_id in enumerate(pole_ids):
        if await ms.pole_row(conn, pole_id) is None:
            raise bad_param(f"poles[{i}].pole_id", f"no such pole {pole_id!r}", where="body")


async def check_rates(conn: psycopg.AsyncConnection[Any], rates: dict[str, Any] | None) -> None:
    """Refuse rates naming a tariff no version of which exists (billing would find no
    price for the lease): `rates.tariff`, when given, is a tariff name. Which
    version applies is decided at billing time, so a version for later dates may
    still be added; a lease without `rates.tariff` is billed with the `default`."""
    if rates is None or "tariff" not in rates:
        return
    name = rates["tariff"]
    if not isinstance(name, str) or not name.strip():
        raise bad_param("rates.tariff", "a tariff name (a non-empty string)", where="body")
    cur = await conn.execute("SELECT 1 FROM tariffs WHERE name = %s LIMIT 1", (name,))
    if await cur.fetchone() is None:
        raise bad_param(
            "rates.tariff",
            f"no tariff named {name!r} (create it with POST /api/v1/tariffs first)",
            where="body",
        )


async def create_application(
    conn: psycopg.AsyncConnection[Any],
    audit: AuditTrail,
    values: dict[str, object],
    *,
    by: Principal,
) -> dict[str, Any]:
    """Insert a submitted application with its first history row and audit entry."""
    row = await ms.application_insert(conn, {**values, "created_by": by.user_id})
    await ms.application_history_add(
        conn, row["id"], by=by.user_id, from_state=None, to_state=row["state"], note="submitted"
    )
    await audit.record(conn, "create", "application", row["id"], after=_dump(row))
    return row


async def _reviews(
    conn: psycopg.AsyncConnection[Any],
    app: dict[str, Any],
    budgets: dict[str, mo.PoleBudget],
    given: dict[str, ms.Assignment],
) -> list[ms.PoleReview]:
    out = []
    for target in app["poles"]:
        pole_id = target["pole_id"]
        out.append(
            await ms.review_pole(
                conn,
                app,
                pole_id,
                budgets.get(pole_id, mo.PoleBudget()),
                preferred=target.get("slots", []),
                given=given.get(pole_id),
            )
        )
    return out


# --------------------------------------------------------------------------- routes


@router.get("", summary="List applications (tenants: their own)")
async def list_applications(
    ctx: Context,
    principal: AnyUser,
    state: mo.ApplicationState | None = None,
    limit: Limit = 100,
    after: After = None,
) -> Page[Application]:
    async with ctx.pool.connection() as conn:
        rows = await ms.application_list(
            conn,
            tenant_id=principal.tenant_id,
            state=state.value if state else None,
            after=after,
            limit=limit,
        )
    items = [_out(r) for r in rows]
    return Page[Application](items=items, next=str(items[-1].id) if len(items) == limit else None)


@router.post(
    "",
    status_code=201,
    summary="Apply to mount equipment on poles (tenant users)",
    responses={403: {"description": "Only tenant users apply"}},
)
async def submit_application(
    ctx: Context, principal: AnyUser, audit: Audit, body: NewApplication
) -> Application:
    if principal.tenant_id is None:
        raise HTTPException(403, detail="only a tenant user submits an application")
    values: dict[str, object] = body.model_dump(mode="json")
    values |= {"kind": "new", "tenant_id": principal.tenant_id, "state": "submitted"}
    async with ctx.pool.connection() as conn, conn.transaction():
        await check_poles(conn, [p.pole_id for p in body.poles])
        row = await create_application(conn, audit, values, by=principal)
    return _out(row)


class Preview(BaseModel):
    poles: list[PoleCheck]
    approvable: bool = Field(description="Every check passes on every pole")


@router.post(
    "/check",
    summary="The capacity check of an application before it is submitted (a dry run)",
    description="Runs the review an operator would see on the body of POST /applications,"
    " against the leases committed now, and stores nothing. Any user may call it.",
)
async def check_application(ctx: Context, _: AnyUser, body: NewApplication) -> Preview:
    app: dict[str, Any] = body.model_dump(mode="json") | {"kind": "new", "lease_id": None}
    async with ctx.pool.connection() as conn:
        await check_poles(conn, [p.pole_id for p in body.poles])
        budgets = {}
        for target in body.poles:
            pole = await ms.pole_row(conn, target.pole_id)
            if pole is not None:
                budgets[pole["id"]] = ms._budget(pole)
        found = await _reviews(conn, app, budgets, {})
    poles = [PoleCheck.model_validate(ms.review_json(r, [])) for r in found]
    return Preview(poles=poles, approvable=all(p.approvable for p in poles))


@router.get("/{application_id}", summary="One application", responses=NOT_FOUND)
async def get_application(ctx: Context, principal: AnyUser, application_id: int) -> Application:
    async with ctx.pool.connection() as conn:
        row = await ms.application_get(conn, application_id)
    return _out(_visible(principal, row, application_id))


@router.put(
    "/{application_id}",
    summary="Complete a returned application (its tenant; then move it to submitted)",
    responses={**NOT_FOUND, 409: {"description": "Only a returned application is edited"}},
)
async def amend_application(
    ctx: Context, principal: AnyUser, audit: Audit, application_id: int, body: NewApplication
) -> Application:
    async with ctx.pool.connection() as conn, conn.transaction():
        before = _visible(
            principal, await ms.application_get(conn, application_id, lock=True), application_id
        )
        if principal.tenant_id is None:
            raise HTTPException(403, detail="only the applying tenant amends an application")
        if before["state"] != mo.ApplicationState.RETURNED or before["kind"] != "new":
            raise HTTPException(
                409,
                detail={"msg": "only a returned application is amended", "state": before["state"]},
            )
        await check_poles(conn, [p.pole_id for p in body.poles])
        row = await ms.application_update(conn, application_id, body.model_dump(mode="json"))
        await ms.application_history_add(
            conn,
            application_id,
            by=principal.user_id,
            from_state=None,
            to_state=None,
            note="amended",
        )
        await audit.record(
            conn, "update", "application", application_id, before=_dump(before), after=_dump(row)
        )
    return _out(row)


@router.get("/{application_id}/history", summary="The application's timeline", responses=NOT_FOUND)
async def application_history(
    ctx: Context, principal: AnyUser, application_id: int
) -> list[HistoryEntry]:
    async with ctx.pool.connection() as conn:
        _visible(principal, await ms.application_get(conn, application_id), application_id)
        rows = await ms.application_history(conn, application_id)
    return [HistoryEntry.model_validate(r) for r in rows]


@router.post(
    "/{application_id}/transitions",
    summary="Accept, return, start review, reject, resubmit or withdraw an application",
    responses={
        **NOT_FOUND,
        403: {"description": "This caller may not make this move"},
        409: {"description": "The state machine does not allow this move"},
    },
)
async def transition(
    ctx: Context, principal: AnyUser, audit: Audit, application_id: int, body: Transition
) -> Application:
    if body.to is mo.ApplicationState.APPROVED:
        raise bad_param("to", "approve with POST /applications/{id}/approve", where="body")
    reasons = [r.strip() for r in body.reasons if r.strip()]
    if body.to in mo.APPLICATION_NEEDS_REASONS and not reasons:
        raise bad_param("reasons", f"say why the application is {body.to.value}", where="body")
    async with ctx.pool.connection() as conn, conn.transaction():
        before = _visible(
            principal, await ms.application_get(conn, application_id, lock=True), application_id
        )
        current = mo.ApplicationState(before["state"])
        try:
            mo.check_application_transition(current, body.to, principal.role)
        except mo.TransitionRefused as exc:
            allowed = mo.allowed_moves(mo.APPLICATION_MOVES, current)
            raise refused(exc, current.value, body.to.value, allowed) from None
        values: dict[str, object] = {"state": body.to.value}
        if body.to in mo.APPLICATION_NEEDS_REASONS:
            values["reasons"] = reasons
        row = await ms.application_update(conn, application_id, values)
        await ms.application_history_add(
            conn,
            application_id,
            by=principal.user_id,
            from_state=current.value,
            to_state=body.to.value,
            reasons=reasons or None,
            note=body.note,
        )
        await audit.record(
            conn,
            "transition",
            "application",
            application_id,
            before=_dump(before),
            after=_dump(row),
        )
    return _out(row)


@router.get(
    "/{application_id}/review",
    summary="The capacity check per requested pole, against the leases committed now",
    responses=NOT_FOUND,
)
async def review(ctx: Context, principal: AnyUser, application_id: int) -> Review:
    async with ctx.pool.connection() as conn:
        app = _visible(principal, await ms.application_get(conn, application_id), application_id)
        budgets = {}
        for target in app["poles"]:
            pole = await ms.pole_row(conn, target["pole_id"])
            if pole is not None:
                budgets[pole["id"]] = ms._budget(pole)
        found = await _reviews(conn, app, budgets, {})
        waived = await ms.overrides(conn, application_id)
    poles = [PoleCheck.model_validate(ms.review_json(r, waived)) for r in found]
    return Review(
        application_id=application_id,
        state=app["state"],
        poles=poles,
        approvable=all(p.approvable for p in poles),
    )


async def _record_override(
    conn: psycopg.AsyncConnection[Any],
    audit: AuditTrail,
    principal: Principal,
    app: dict[str, Any],
    body: Override,
    loc: str,
) -> dict[str, Any]:
    if body.check not in mo.CHECK_NAMES:
        raise bad_param(f"{loc}check", f"one of {', '.join(mo.CHECK_NAMES)}", where="body")
    if body.check in mo.NOT_OVERRIDABLE:
        raise HTTPException(
            409,
            detail={
                "msg": "two live leases on one slot or port are never allowed",
                "check": body.check,
            },
        )
    if not body.reason.strip():
        raise bad_param(f"{loc}reason", "an override needs a reason", where="body")
    if body.pole_id not in {p["pole_id"] for p in app["poles"]}:
        raise bad_param(f"{loc}pole_id", "not a pole of this application", where="body")
    row = await ms.override_upsert(
        conn, app["id"], body.pole_id, body.check, body.reason.strip(), principal.user_id
    )
    await audit.record(conn, "override", "application", app["id"], after=row)
    return row


@router.post(
    "/{application_id}/overrides",
    status_code=201,
    summary="Waive a failed capacity check for one pole, with a reason (staff)",
    responses={
        **NOT_FOUND,
        409: {"description": "Not under review, or slot_free/port_free (never waived)"},
    },
)
async def add_override(
    ctx: Context, principal: Staff, audit: Audit, application_id: int, body: Override
) -> OverrideRecord:
    async with ctx.pool.connection() as conn, conn.transaction():
        app = await ms.application_get(conn, application_id, lock=True)
        if app is None:
            raise not_found("application", str(application_id))
        if app["state"] not in (mo.ApplicationState.ACCEPTED, mo.ApplicationState.UNDER_REVIEW):
            raise HTTPException(
                409, detail={"msg": "only an application in review", "state": app["state"]}
            )
        row = await _record_override(conn, audit, principal, app, body, "")
    return OverrideRecord.model_validate(row)


@router.post(
    "/{application_id}/approve",
    summary="Approve: recheck capacity under lock, reserve it and create the leases (managers)",
    responses={
        **NOT_FOUND,
        409: {"description": "Not under review, or a capacity check fails (named in detail)"},
        422: {
            "description": "An assignment names a slot, compartment or port of another pole,"
            " or `rates.tariff` names no tariff"
        },
    },
)
async def approve(
    ctx: Context, principal: Managers, audit: Audit, application_id: int, body: Approval
) -> Approved:
    async with ctx.pool.connection() as conn, conn.transaction():
        before = await ms.application_get(conn, application_id, lock=True)
        if before is None:
            raise not_found("application", str(application_id))
        current = mo.ApplicationState(before["state"])
        try:
            mo.check_application_transition(current, mo.ApplicationState.APPROVED, principal.role)
        except mo.TransitionRefused as exc:
            allowed = mo.allowed_moves(mo.APPLICATION_MOVES, current)
            raise refused(exc, current.value, "approved", allowed) from None
        await check_rates(conn, body.rates)
        pole_ids = [p["pole_id"] for p in before["poles"]]
        given: dict[str, ms.Assignment] = {}
        for i, a in enumerate(body.assignments):
            if a.pole_id not in pole_ids:
                raise bad_param(
                    f"assignments[{i}].pole_id", "not a pole of this application", where="body"
                )
            for table, column, ident in (
                ("slots", "slot_id", a.slot_id),
                ("compartments", "compartment_id", a.compartment_id),
                ("ports", "port_id", a.port_id),
            ):
                record = await ms.capacity_get(conn, table, ident) if ident else None
                if ident and (record is None or record["pole_id"] != a.pole_id):
                    raise bad_param(
                        f"assignments[{i}].{column}",
                        f"no such {column[:-3]} on {a.pole_id}",
                        where="body",
                    )
            given[a.pole_id] = ms.Assignment(a.slot_id, a.compartment_id, a.port_id)
        for i, o in enumerate(body.overrides):
            await _record_override(conn, audit, principal, before, o, f"overrides[{i}].")
        # The lock: approvals touching a pole run one after another from here on,
        # and each sees the leases the previous one committed.
        budgets = await ms.lock_poles(conn, pole_ids)
        found = await _reviews(conn, before, budgets, given)
        waived = await ms.overrides(conn, application_id)
        results = [ms.review_json(r, waived) for r in found]
        failed = [
            {"pole_id": r["pole_id"], "check": c["name"], "message": c["message"]}
            for r in results
            for c in r["checks"]
            if c["name"] in r["blocking"]
        ]
        if failed:
            raise HTTPException(
                409,
                detail={
                    "msg": "capacity checks fail: "
                    + ", ".join(f"{f['pole_id']}: {f['check']}" for f in failed),
                    "failed": failed,
                },
            )
        request = ms.request_of(before)
        lease_ids: list[int] = []
        try:
            async with conn.transaction():
                lease_ids = await _reserve(conn, principal, before, found, request, body)
        except psycopg.errors.UniqueViolation as exc:
            constraint = exc.diag.constraint_name or ""
            check = "port_free" if "port" in constraint else "slot_free"
            raise HTTPException(
                409,
                detail={
                    "msg": f"capacity checks fail: {check} (taken by a live lease)",
                    "failed": [
                        {"pole_id": None, "check": check, "message": str(exc.diag.message_detail)}
                    ],
                },
            ) from None
        decision = {
            "by": principal.user_id,
            "reviews": results,
            "rates": body.rates,
            "lease_ids": lease_ids,
            "note": body.note,
        }
        row = await ms.application_update(
            conn, application_id, {"state": "approved", "decision": decision}
        )
        await ms.application_history_add(
            conn,
            application_id,
            by=principal.user_id,
            from_state=current.value,
            to_state="approved",
            note=body.note,
        )
        await audit.record(
            conn, "approve", "application", application_id, before=_dump(before), after=_dump(row)
        )
    return Approved(application=_out(row), lease_ids=lease_ids)


async def _reserve(
    conn: psycopg.AsyncConnection[Any],
    principal: Principal,
    app: dict[str, Any],
    found: list[ms.PoleReview],
    request: mo.Request,
    body: Approval,
) -> list[int]:
    quantities: dict[str, object] = {
        "load_kg": request.load_kg,
        "wind_area_m2": request.wind_area_m2,
        "power_w": request.power_w,
        "cabinet_units": request.cabinet_units,
    }
    if app["kind"] == "change":
        values = dict(quantities)
        if body.rates is not None:
            values["rates"] = body.rates
        if app["term_end"] is not None:
            values["ends_on"] = app["term_end"]
        await ms.lease_update(conn, app["lease_id"], values)
        return [int(app["lease_id"])]
    ids = []
    for r in found:
        lease = await ms.lease_insert(
            conn,
            {
                "tenant_id": app["tenant_id"],
                "pole_id": r.pole_id,
                "state": mo.LeaseState.CONTRACTED.value,
                "application_id": app["id"],
                "slot_id": r.assignment.slot_id,
                "compartment_id": r.assignment.compartment_id,
                "port_id": r.assignment.port_id,
                **quantities,
                "starts_on": app["term_start"],
                "ends_on": app["term_end"],
                "rates": body.rates,
            },
            by=principal.name,
        )
        ids.append(int(lease["id"]))
    return ids
