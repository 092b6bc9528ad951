"""The mounting service in PostgreSQL: capacity (slots, compartments, ports), applications
with their review, and leases with their state history.

Functions take the caller's connection so that a route's change, its history
rows and its audit entry commit together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.sql import SQL, Identifier

from gateway.core import mounting as mo
from gateway.core.auth import Role

Row = dict[str, Any]
Conn = psycopg.AsyncConnection[Any]

# Columns a manager may set, per capacity table (id and pole_id are fixed at creation).
CAPACITY_COLUMNS: dict[str, tuple[str, ...]] = {
    "slots": (
        "position",
        "slot_type",
        "height_min_m",
        "height_max_m",
        "max_load_kg",
        "max_wind_area_m2",
        "max_power_w",
        "supply",
        "voltage_v",
    ),
    "compartments": ("name", "units"),
    "ports": ("meter_device_id", "port_no", "rated_w", "supply"),
}
LIVE = "state NOT IN ('terminated', 'removed')"


def _json(value: object) -> str:
    return orjson.dumps(value, default=str).decode()


async def _one(conn: Conn, query: Any, args: Sequence[object] = ()) -> Row | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, args)
        return await cur.fetchone()


async def _all(conn: Conn, query: Any, args: Sequence[object] = ()) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, args)
        return await cur.fetchall()


# --------------------------------------------------------------------------- capacity tables


async def capacity_list(
    conn: Conn, table: str, *, pole_id: str | None, after: str | None, limit: int
) -> list[Row]:
    query = SQL(
        "SELECT * FROM {} WHERE (%s::text IS NULL OR pole_id = %s)"
        " AND (%s::text IS NULL OR id > %s) ORDER BY id LIMIT %s"
    ).format(Identifier(table))
    return await _all(conn, query, (pole_id, pole_id, after, after, limit))


async def capacity_get(conn: Conn, table: str, ident: str, *, lock: bool = False) -> Row | None:
    query = SQL("SELECT * FROM {} WHERE id = %s" + (" FOR UPDATE" if lock else "")).format(
        Identifier(table)
    )
    return await _one(conn, query, (ident,))


async def capacity_insert(conn: Conn, table: str, values: dict[str, object]) -> Row:
    cols = list(values)
    query = SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING *").format(
        Identifier(table),
        SQL(", ").join(Identifier(c) for c in cols),
        SQL(", ").join(SQL("%s") for _ in cols),
    )
    row = await _one(conn, query, [values[c] for c in cols])
    assert row is not None
    return row


async def capacity_update(conn: Conn, table: str, ident: str, values: dict[str, object]) -> Row:
    cols = list(values)
    query = SQL("UPDATE {} SET {} WHERE id = %s RETURNING *").format(
        Identifier(table), SQL(", ").join(SQL("{} = %s").format(Identifier(c)) for c in cols)
    )
    row = await _one(conn, query, [*(values[c] for c in cols), ident])
    assert row is not None
    return row


async def capacity_in_use(conn: Conn, table: str, ident: str) -> bool:
    column = {"slots": "slot_id", "compartments": "compartment_id", "ports": "port_id"}[table]
    query = SQL("SELECT 1 FROM leases WHERE {} = %s LIMIT 1").format(Identifier(column))
    return await _one(conn, query, (ident,)) is not None


async def capacity_delete(conn: Conn, table: str, ident: str) -> None:
    await conn.execute(SQL("DELETE FROM {} WHERE id = %s").format(Identifier(table)), (ident,))


async def tenant_port_ids(conn: Conn, tenant_id: str) -> set[str]:
    rows = await _all(
        conn,
        "SELECT DISTINCT port_id FROM leases WHERE tenant_id = %s AND port_id IS NOT NULL",
        (tenant_id,),
    )
    return {str(r["port_id"]) for r in rows}


async def pole_row(conn: Conn, pole_id: str) -> Row | None:
    return await _one(
        conn,
        "SELECT id, max_load_kg, max_wind_area_m2, power_budget_w FROM poles WHERE id = %s",
        (pole_id,),
    )


async def lock_poles(conn: Conn, pole_ids: Sequence[str]) -> dict[str, mo.PoleBudget]:
    """Lock the poles (in id order, so concurrent approvals never deadlock) and read
    their budgets. Every approval on a pole serialises on this lock."""
    rows = await _all(
        conn,
        "SELECT id, max_load_kg, max_wind_area_m2, power_budget_w FROM poles"
        " WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
        (sorted(set(pole_ids)),),
    )
    return {r["id"]: _budget(r) for r in rows}


def _budget(row: Row) -> mo.PoleBudget:
    return mo.PoleBudget(row["max_load_kg"], row["max_wind_area_m2"], row["power_budget_w"])


# --------------------------------------------------------------------------- the review


@dataclass(frozen=True, slots=True)
class Assignment:
    slot_id: str | None = None
    compartment_id: str | None = None
    port_id: str | None = None


@dataclass(frozen=True, slots=True)
class PoleReview:
    pole_id: str
    assignment: Assignment
    checks: list[mo.Check]


def request_of(app: Row) -> mo.Request:
    load, wind, power = mo.request_totals(app["devices"])
    return mo.Request(
        load_kg=load,
        wind_area_m2=wind,
        power_w=power,
        supply=app["supply"],
        voltage_v=app["voltage_v"],
        cabinet_units=app["cabinet_units"],
    )


def _slot(r: Row) -> mo.SlotLimits:
    return mo.SlotLimits(
        r["id"],
        r["max_load_kg"],
        r["max_wind_area_m2"],
        r["max_power_w"],
        r["supply"],
        r["voltage_v"],
    )


async def review_pole(
    conn: Conn,
    app: Row,
    pole_id: str,
    budget: mo.PoleBudget,
    *,
    preferred: Sequence[str] = (),
    given: Assignment | None = None,
) -> PoleReview:
    """The capacity check of the application on one pole, against the leases
    committed now. What `given` leaves out of the assignment is suggested: the first
    preferred (then any) slot that passes its own checks, the first free port
    rated for the power, the first compartment with room."""
    exclude = app["lease_id"] if app["kind"] == "change" else None
    leases = await _all(
        conn,
        # The view, not `leases`: a tenant's review must count every tenant's live
        # leases, and row-level security shows a tenant only its own (migration 0013).
        "SELECT slot_id, port_id, compartment_id, load_kg, wind_area_m2, power_w, cabinet_units"
        " FROM lease_reservations WHERE pole_id = %s AND id IS DISTINCT FROM %s",
        (pole_id, exclude),
    )
    reservations = [mo.Reservation(**r) for r in leases]
    slots = {
        r["id"]: r
        for r in await _all(conn, "SELECT * FROM slots WHERE pole_id = %s ORDER BY id", (pole_id,))
    }
    ports = {
        r["id"]: r
        for r in await _all(conn, "SELECT * FROM ports WHERE pole_id = %s ORDER BY id", (pole_id,))
    }
    comps = {
        r["id"]: r
        for r in await _all(
            conn, "SELECT * FROM compartments WHERE pole_id = %s ORDER BY id", (pole_id,)
        )
    }
    request = request_of(app)
    suggested = await _suggest(
        conn, app, request, budget, reservations, slots, ports, comps, preferred
    )
    # What the approver names wins; what it leaves out is the suggestion.
    given = Assignment(
        (given.slot_id if given else None) or suggested.slot_id,
        (given.compartment_id if given else None) or suggested.compartment_id,
        (given.port_id if given else None) or suggested.port_id,
    )
    slot = slots.get(given.slot_id) if given.slot_id else None
    port = ports.get(given.port_id) if given.port_id else None
    comp = comps.get(given.compartment_id) if given.compartment_id else None
    checks = mo.check_capacity(
        budget,
        request,
        reservations,
        slot=_slot(slot) if slot else None,
        port=mo.PortLimits(port["id"], port["rated_w"], port["supply"]) if port else None,
        compartment=mo.CompartmentLimits(comp["id"], comp["units"]) if comp else None,
    )
    return PoleReview(pole_id, given, checks)


async def _suggest(
    conn: Conn,
    app: Row,
    request: mo.Request,
    budget: mo.PoleBudget,
    reservations: list[mo.Reservation],
    slots: dict[str, Row],
    ports: dict[str, Row],
    comps: dict[str, Row],
    preferred: Sequence[str],
) -> Assignment:
    if app["kind"] == "change":
        lease = await _one(
            conn,
            "SELECT slot_id, port_id, compartment_id FROM leases WHERE id = %s",
            (app["lease_id"],),
        )
        assert lease is not None
        return Assignment(lease["slot_id"], lease["compartment_id"], lease["port_id"])
    order = [s for s in preferred if s in slots] + [s for s in slots if s not in preferred]
    chosen_slot = preferred[0] if preferred and preferred[0] in slots else None
    for sid in order:
        checks = mo.check_capacity(budget, request, reservations, slot=_slot(slots[sid]))
        if all(c.ok for c in checks if c.name.startswith("slot_")):
            chosen_slot = sid
            break
    chosen_port = None
    if request.power_w > 0:
        used = {r.port_id for r in reservations}
        for pid, p in ports.items():
            if (
                pid not in used
                and p["rated_w"] >= request.power_w
                and p["supply"] == request.supply
            ):
                chosen_port = pid
                break
    chosen_comp = None
    if request.cabinet_units > 0:
        for cid, c in comps.items():
            taken = sum(r.cabinet_units for r in reservations if r.compartment_id == cid)
            if c["units"] - taken >= request.cabinet_units:
                chosen_comp = cid
                break
    return Assignment(chosen_slot, chosen_comp, chosen_port)


def review_json(review: PoleReview, overrides: Sequence[Row]) -> dict[str, Any]:
    waived = {o["check_name"]: o for o in overrides if o["pole_id"] == review.pole_id}
    checks = []
    for c in review.checks:
        o = waived.get(c.name)
        checks.append(
            {
                "name": c.name,
                "ok": c.ok,
                "needed": c.needed,
                "available": c.available,
                "message": c.message,
                "overridden": (
                    None
                    if o is None or c.ok
                    else {"by": o["by"], "at": o["at"], "reason": o["reason"]}
                ),
            }
        )
    block = mo.blocking(review.checks, waived)
    return {
        "pole_id": review.pole_id,
        "assignment": {
            "slot_id": review.assignment.slot_id,
            "compartment_id": review.assignment.compartment_id,
            "port_id": review.assignment.port_id,
        },
        "checks": checks,
        "approvable": not block,
        "blocking": [c.name for c in block],
    }


# --------------------------------------------------------------------------- applications


async def application_get(conn: Conn, app_id: int, *, lock: bool = False) -> Row | None:
    return await _one(
        conn,
        "SELECT * FROM applications WHERE id = %s" + (" FOR UPDATE" if lock else ""),
        (app_id,),
    )


async def application_list(
    conn: Conn, *, tenant_id: str | None, state: str | None, after: int | None, limit: int
) -> list[Row]:
    return await _all(
        conn,
        "SELECT * FROM applications WHERE (%s::text IS NULL OR tenant_id = %s)"
        " AND (%s::text IS NULL OR state = %s) AND (%s::bigint IS NULL OR id > %s)"
        " ORDER BY id LIMIT %s",
        (tenant_id, tenant_id, state, state, after, after, limit),
    )


JSON_COLUMNS = frozenset({"devices", "poles", "attachments", "reasons", "decision"})


def _param(column: str, value: object) -> object:
    return _json(value) if column in JSON_COLUMNS and value is not None else value


async def application_insert(conn: Conn, values: dict[str, object]) -> Row:
    cols = list(values)
    query = SQL("INSERT INTO applications ({}) VALUES ({}) RETURNING *").format(
        SQL(", ").join(Identifier(c) for c in cols),
        SQL(", ").join(SQL("%s::jsonb" if c in JSON_COLUMNS else "%s") for c in cols),
    )
    row = await _one(conn, query, [_param(c, values[c]) for c in cols])
    assert row is not None
    return row


async def application_update(conn: Conn, app_id: int, values: dict[str, object]) -> Row:
    cols = list(values)
    query = SQL("UPDATE applications SET {}, updated_at = now() WHERE id = %s RETURNING *").format(
        SQL(", ").join(
            SQL("{} = %s::jsonb" if c in JSON_COLUMNS else "{} = %s").format(Identifier(c))
            for c in cols
        )
    )
    row = await _one(conn, query, [*(_param(c, values[c]) for c in cols), app_id])
    assert row is not None
    return row


async def application_history_add(
    conn: Conn,
    app_id: int,
    *,
    by: int | None,
    from_state: str | None,
    to_state: str | None,
    reasons: list[str] | None = None,
    note: str = "",
) -> None:
    await conn.execute(
        "INSERT INTO application_history (application_id, by, from_state, to_state, reasons, note)"
        " VALUES (%s, %s, %s, %s, %s::jsonb, %s)",
        (app_id, by, from_state, to_state, _json(reasons) if reasons else None, note),
    )


async def application_history(conn: Conn, app_id: int) -> list[Row]:
    return await _all(
        conn, "SELECT * FROM application_history WHERE application_id = %s ORDER BY id", (app_id,)
    )


async def overrides(conn: Conn, app_id: int) -> list[Row]:
    return await _all(
        conn,
        "SELECT * FROM application_overrides WHERE application_id = %s ORDER BY id",
        (app_id,),
    )


async def override_upsert(
    conn: Conn, app_id: int, pole_id: str, check: str, reason: str, by: int
) -> Row:
    row = await _one(
        conn,
        "INSERT INTO application_overrides (application_id, pole_id, check_name, reason, by)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (application_id, pole_id, check_name)"
        " DO UPDATE SET reason = excluded.reason, by = excluded.by, at = now() RETURNING *",
        (app_id, pole_id, check, reason, by),
    )
    assert row is not None
    return row


# --------------------------------------------------------------------------- leases


async def lease_get(conn: Conn, lease_id: int, *, lock: bool = False) -> Row | None:
    return await _one(
        conn, "SELECT * FROM leases WHERE id = %s" + (" FOR UPDATE" if lock else ""), (lease_id,)
    )


async def lease_list(
    conn: Conn,
    *,
    tenant_id: str | None,
    pole_id: str | None,
    state: str | None,
    after: int | None,
    limit: int,
) -> list[Row]:
    return await _all(
        conn,
        "SELECT * FROM leases WHERE (%s::text IS NULL OR tenant_id = %s)"
        " AND (%s::text IS NULL OR pole_id = %s) AND (%s::text IS NULL OR state = %s)"
        " AND (%s::bigint IS NULL OR id > %s) ORDER BY id LIMIT %s",
        (tenant_id, tenant_id, pole_id, pole_id, state, state, after, after, limit),
    )


async def lease_insert(
    conn: Conn, values: dict[str, object], *, by: str, since: datetime | None = None
) -> Row:
    cols = list(values)
    query = SQL("INSERT INTO leases ({}) VALUES ({}) RETURNING *").format(
        SQL(", ").join(Identifier(c) for c in cols),
        SQL(", ").join(SQL("%s::jsonb" if c == "rates" else "%s") for c in cols),
    )
    params = [
        _json(values[c]) if c == "rates" and values[c] is not None else values[c] for c in cols
    ]
    row = await _one(conn, query, params)
    assert row is not None
    await lease_history_add(
        conn, row["id"], row["state"], by=by, note="created by approval", since=since
    )
    return row


async def lease_update(conn: Conn, lease_id: int, values: dict[str, object]) -> Row:
    cols = list(values)
    jsonish = {"rates", "port_switch"}
    query = SQL("UPDATE leases SET {}, updated_at = now() WHERE id = %s RETURNING *").format(
        SQL(", ").join(
            SQL("{} = %s::jsonb" if c in jsonish else "{} = %s").format(Identifier(c)) for c in cols
        )
    )
    params = [
        _json(values[c]) if c in jsonish and values[c] is not None else values[c] for c in cols
    ]
    row = await _one(conn, query, [*params, lease_id])
    assert row is not None
    return row


async def lease_history_add(
    conn: Conn,
    lease_id: int,
    state: str,
    *,
    by: str,
    note: str | None = None,
    since: datetime | None = None,
) -> None:
    """Every state change of a lease, with since when (now unless given): billing
    prorates from it."""
    await conn.execute(
        "INSERT INTO lease_history (lease_id, state, by, note, since)"
        " VALUES (%s, %s, %s, %s, coalesce(%s, now()))",
        (lease_id, state, by, note, since),
    )


async def lease_transition(
    conn: Conn,
    lease_id: int,
    to: mo.LeaseState,
    *,
    by: str,
    role: Role,
    note: str,
    effective_at: datetime | None,
    tz: tzinfo,
) -> tuple[Row, Row] | None:
    """Move the lease to `to`, in effect from `effective_at` (now when None), entered
    now by `by`: the state, the history row (effective and entry time, who) and, on
    first entering service without a term start, `starts_on`. Returns the lease
    before and after, or None if there is no such lease. Raises mo.TransitionRefused
    (the move is not allowed to `role`) or mo.EffectiveTimeRefused (the time is in
    the future or before the previous transition). Billing reads the history's
    effective times, so a transition entered late bills its past days."""
    before = await lease_get(conn, lease_id, lock=True)
    if before is None:
        return None
    mo.check_lease_transition(mo.LeaseState(before["state"]), to, role)
    last = await _one(
        conn,
        "SELECT now() AS now, (SELECT since FROM lease_history WHERE lease_id = %s"
        " ORDER BY since DESC, id DESC LIMIT 1) AS previous",
        (lease_id,),
    )
    assert last is not None
    effective: datetime = last["now"]
    if effective_at is not None:
        mo.check_effective_at(effective_at, previous=last["previous"], now=last["now"])
        effective = effective_at
    values: dict[str, object] = {"state": to.value}
    starts_on = mo.starts_on_for(to, before["starts_on"], effective, tz)
    if starts_on != before["starts_on"]:
        values["starts_on"] = starts_on
    row = await lease_update(conn, lease_id, values)
    await lease_history_add(conn, lease_id, to.value, by=by, note=note, since=effective)
    return before, row


async def lease_port_switch(conn: Conn, lease_id: int, switch: dict[str, object]) -> Row:
    """Keep the port switch asked for a state change on the lease; its command's
    outcome (state, command_error, finished_at) is added when the command ends
    (command_store.CommandStore.finished), or here if it already has. The command
    row is locked first, so an outcome committed at the same moment is not missed."""
    command_id = switch.get("command_id")
    if command_id is not None:
        done = await _one(
            conn,
            "SELECT state, error, finished_at FROM device_commands WHERE id = %s FOR SHARE",
            (command_id,),
        )
        if done is not None and done["finished_at"] is not None:
            switch = switch | {
                "state": done["state"],
                "command_error": done["error"],
                "finished_at": done["finished_at"],
            }
        elif done is not None:
            switch = switch | {"state": done["state"]}
    return await lease_update(conn, lease_id, {"port_switch": switch})


async def lease_history(conn: Conn, lease_id: int) -> list[Row]:
    return await _all(
        conn, "SELECT * FROM lease_history WHERE lease_id = %s ORDER BY since, id", (lease_id,)
    )


async def port_row(conn: Conn, port_id: str) -> Row | None:
    return await _one(conn, "SELECT * FROM ports WHERE id = %s", (port_id,))
