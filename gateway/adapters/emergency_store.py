"""Emergencies in PostgreSQL (migration 0007): records, timeline, links, plans, drills.

Every function takes the connection of the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

Row = dict[str, Any]
Conn = psycopg.AsyncConnection[Any]

COLUMNS = (
    "id, type, state, title, description, pole_id, opened_by, opened_at, resolved_at,"
    " closed_at, report, updated_at"
)
ENTRY_COLUMNS = "id, emergency_id, at, kind, author, text, data"
PLAN_COLUMNS = "id, type, title, body, version, created_by, created_at"
DRILL_COLUMNS = "id, type, plan_id, held_at, location, participants, report, created_by, created_at"


async def _one(conn: Conn, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> Row | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchone()


async def _all(conn: Conn, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def create(
    conn: Conn, *, type: str, pole_id: str | None, title: str, description: str, by: str
) -> Row:
    """A new open emergency with its 'raised' entry; psycopg.errors.UniqueViolation
    when one of the type is already open on the pole."""
    row = await _one(
        conn,
        "INSERT INTO emergencies (type, pole_id, title, description, opened_by)"
        f" VALUES (%s, %s, %s, %s, %s) RETURNING {COLUMNS}",
        (type, pole_id, title, description, by),
    )
    assert row is not None
    await add_entry(conn, row["id"], "raised", by, description or title)
    return row


async def open_or_join(
    conn: Conn, *, type: str, pole_id: str, title: str, text: str, by: str, alarm_id: int
) -> tuple[int, bool]:
    """The open emergency of `type` on the pole (made if there is none), with the
    alarm linked and a 'raised' entry; (id, whether it was made now)."""
    row = await _one(
        conn,
        "INSERT INTO emergencies (type, pole_id, title, description, opened_by)"
        " VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (pole_id, type) WHERE state <> 'closed' AND pole_id IS NOT NULL"
        " DO UPDATE SET updated_at = now() RETURNING id, (xmax = 0) AS inserted",
        (type, pole_id, title, text, by),
    )
    assert row is not None
    eid = int(row["id"])
    await add_entry(conn, eid, "raised", by, text, {"alarm_id": alarm_id})
    await link_alarm(conn, eid, alarm_id)
    await link_work_orders_of_alarm(conn, eid, alarm_id)
    return eid, bool(row["inserted"])


async def add_entry(
    conn: Conn, eid: int, kind: str, author: str, text: str, data: dict[str, Any] | None = None
) -> Row:
    row = await _one(
        conn,
        "INSERT INTO emergency_timeline (emergency_id, kind, author, text, data)"
        f" VALUES (%s, %s, %s, %s, %s::jsonb) RETURNING {ENTRY_COLUMNS}",
        (eid, kind, author, text, orjson.dumps(data or {}, default=str).decode()),
    )
    assert row is not None
    await conn.execute("UPDATE emergencies SET updated_at = now() WHERE id = %s", (eid,))
    return row


async def link_alarm(conn: Conn, eid: int, alarm_id: int) -> None:
    await conn.execute(
        "INSERT INTO emergency_alarms (emergency_id, alarm_id) VALUES (%s, %s)"
        " ON CONFLICT DO NOTHING",
        (eid, alarm_id),
    )


async def link_work_order(conn: Conn, eid: int, work_order_id: int) -> None:
    await conn.execute(
        "INSERT INTO emergency_work_orders (emergency_id, work_order_id) VALUES (%s, %s)"
        " ON CONFLICT DO NOTHING",
        (eid, work_order_id),
    )


async def link_work_orders_of_alarm(conn: Conn, eid: int, alarm_id: int) -> None:
    """Link the emergency to the work orders the same alarm opened or joined (when the
    work-order listener ran first); `link_alarm_work_order` is the other half."""
    await conn.execute(
        "INSERT INTO emergency_work_orders (emergency_id, work_order_id)"
        " SELECT %s, id FROM work_orders WHERE alarm_id = %s"
        " UNION SELECT %s, work_order_id FROM work_order_notes WHERE alarm_id = %s"
        " ON CONFLICT DO NOTHING",
        (eid, alarm_id, eid, alarm_id),
    )


async def link_alarm_work_order(conn: Conn, alarm_id: int, work_order_id: int) -> None:
    """Link a work order that an alarm opened (or joined) to the emergencies the same
    alarm opened or joined (when the emergency listener ran first)."""
    await conn.execute(
        "INSERT INTO emergency_work_orders (emergency_id, work_order_id)"
        " SELECT emergency_id, %s FROM emergency_alarms WHERE alarm_id = %s"
        " ON CONFLICT DO NOTHING",
        (work_order_id, alarm_id),
    )


async def open_for_alarm(conn: Conn, alarm_id: int) -> list[int]:
    rows = await _all(
        conn,
        "SELECT e.id FROM emergency_alarms l JOIN emergencies e ON e.id = l.emergency_id"
        " WHERE l.alarm_id = %s AND e.state = 'open'",
        (alarm_id,),
    )
    return [int(r["id"]) for r in rows]


async def get(conn: Conn, eid: int, *, lock: bool = False) -> Row | None:
    return await _one(
        conn,
        f"SELECT {COLUMNS} FROM emergencies WHERE id = %s" + (" FOR UPDATE" if lock else ""),
        (eid,),
    )


async def detail(conn: Conn, eid: int) -> Row | None:
    row = await get(conn, eid)
    if row is None:
        return None
    row["timeline"] = await _all(
        conn,
        f"SELECT {ENTRY_COLUMNS} FROM emergency_timeline WHERE emergency_id = %s ORDER BY id",
        (eid,),
    )
    alarms = await _all(
        conn,
        "SELECT alarm_id FROM emergency_alarms WHERE emergency_id = %s ORDER BY alarm_id",
        (eid,),
    )
    orders = await _all(
        conn,
        "SELECT work_order_id FROM emergency_work_orders WHERE emergency_id = %s"
        " ORDER BY work_order_id",
        (eid,),
    )
    row["alarm_ids"] = [int(r["alarm_id"]) for r in alarms]
    row["work_order_ids"] = [int(r["work_order_id"]) for r in orders]
    return row


async def move(conn: Conn, eid: int, state: str, *, report: str | None = None) -> Row:
    stamp = "resolved_at" if state == "resolved" else "closed_at"
    row = await _one(
        conn,
        f"UPDATE emergencies SET state = %s, {stamp} = now(), updated_at = now(),"
        f" report = COALESCE(%s, report) WHERE id = %s RETURNING {COLUMNS}",
        (state, report, eid),
    )
    assert row is not None
    return row


async def page(
    conn: Conn,
    *,
    state: str | None,
    type: str | None,
    pole: str | None,
    since: datetime | None,
    until: datetime | None,
    before_id: int | None,
    limit: int,
) -> list[Row]:
    return await _all(
        conn,
        f"SELECT {COLUMNS} FROM emergencies"
        " WHERE (%(state)s::text IS NULL OR state = %(state)s)"
        " AND (%(type)s::text IS NULL OR type = %(type)s)"
        " AND (%(pole)s::text IS NULL OR pole_id = %(pole)s)"
        " AND (%(since)s::timestamptz IS NULL OR opened_at >= %(since)s)"
        " AND (%(until)s::timestamptz IS NULL OR opened_at < %(until)s)"
        " AND (%(before)s::bigint IS NULL OR id < %(before)s)"
        " ORDER BY id DESC LIMIT %(limit)s",
        {
            "state": state,
            "type": type,
            "pole": pole,
            "since": since,
            "until": until,
            "before": before_id,
            "limit": limit,
        },
    )


async def create_plan(
    conn: Conn, *, type: str, title: str, body: str, version: str, by: str
) -> Row:
    row = await _one(
        conn,
        "INSERT INTO emergency_plans (type, title, body, version, created_by)"
        f" VALUES (%s, %s, %s, %s, %s) RETURNING {PLAN_COLUMNS}",
        (type, title, body, version, by),
    )
    assert row is not None
    return row


async def plans(conn: Conn, *, type: str | None, before_id: int | None, limit: int) -> list[Row]:
    return await _all(
        conn,
        f"SELECT {PLAN_COLUMNS} FROM emergency_plans"
        " WHERE (%(type)s::text IS NULL OR type = %(type)s)"
        " AND (%(before)s::bigint IS NULL OR id < %(before)s) ORDER BY id DESC LIMIT %(limit)s",
        {"type": type, "before": before_id, "limit": limit},
    )


async def plan_exists(conn: Conn, plan_id: int) -> bool:
    return (
        await _one(conn, "SELECT 1 AS x FROM emergency_plans WHERE id = %s", (plan_id,)) is not None
    )


async def create_drill(
    conn: Conn,
    *,
    type: str,
    plan_id: int | None,
    held_at: datetime,
    location: str,
    participants: list[str],
    report: str,
    by: str,
) -> Row:
    row = await _one(
        conn,
        "INSERT INTO emergency_drills (type, plan_id, held_at, location, participants, report,"
        f" created_by) VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s) RETURNING {DRILL_COLUMNS}",
        (type, plan_id, held_at, location, orjson.dumps(participants).decode(), report, by),
    )
    assert row is not None
    return row


async def drills(conn: Conn, *, type: str | None, before_id: int | None, limit: int) -> list[Row]:
    return await _all(
        conn,
        f"SELECT {DRILL_COLUMNS} FROM emergency_drills"
        " WHERE (%(type)s::text IS NULL OR type = %(type)s)"
        " AND (%(before)s::bigint IS NULL OR id < %(before)s) ORDER BY id DESC LIMIT %(limit)s",
        {"type": type, "before": before_id, "limit": limit},
    )


async def pole_devices(conn: Conn, pole_id: str) -> list[str]:
    rows = await _all(conn, "SELECT id FROM devices WHERE pole_id = %s ORDER BY id", (pole_id,))
    return [str(r["id"]) for r in rows]


# --------------------------------------------------------------------------- protective actions
#
# emergency_actions (migration 0014): pending -> running (a device command is out)
# -> succeeded | pending again (a retry, at next_at) | failed; cancelled when the
# emergency is no longer open. A running action's command_id is always set.

ACTION_COLUMNS = (
    "a.id, a.emergency_id, a.action, a.device_id, a.command, a.args, a.requested_by,"
    " a.state, a.attempts, a.next_at, a.command_id, a.last_error"
)


async def add_actions(
    conn: Conn, eid: int, steps: Sequence[Mapping[str, Any]], *, by: str
) -> list[int]:
    """Pending actions of the emergency, each a mapping with action, device_id,
    command and args; due at once."""
    ids: list[int] = []
    for step in steps:
        row = await _one(
            conn,
            "INSERT INTO emergency_actions (emergency_id, action, device_id, command, args,"
            " requested_by) VALUES (%s, %s, %s, %s, %s::jsonb, %s) RETURNING id",
            (
                eid,
                step["action"],
                step["device_id"],
                step["command"],
                orjson.dumps(step["args"]).decode(),
                by,
            ),
        )
        assert row is not None
        ids.append(int(row["id"]))
    return ids


async def due_actions(conn: Conn, *, emergency_id: int | None, limit: int) -> list[Row]:
    """Pending actions whose time has come, oldest first, locked (others skip
    them), with their emergency's state."""
    return await _all(
        conn,
        f"SELECT {ACTION_COLUMNS}, e.state AS emergency_state"
        " FROM emergency_actions a JOIN emergencies e ON e.id = a.emergency_id"
        " WHERE a.state = 'pending' AND a.next_at <= now()"
        " AND (%(eid)s::bigint IS NULL OR a.emergency_id = %(eid)s)"
        " ORDER BY a.id LIMIT %(limit)s FOR UPDATE OF a SKIP LOCKED",
        {"eid": emergency_id, "limit": limit},
    )


async def finished_attempts(conn: Conn, *, stale_after_s: float, limit: int) -> list[Row]:
    """Running actions whose command has ended, is gone, or has had no outcome
    for `stale_after_s`; locked, with the command's state (NULL when gone)."""
    return await _all(
        conn,
        f"SELECT {ACTION_COLUMNS}, e.state AS emergency_state,"
        " c.state AS outcome, c.error AS command_error"
        " FROM emergency_actions a JOIN emergencies e ON e.id = a.emergency_id"
        " LEFT JOIN device_commands c ON c.id = a.command_id"
        " WHERE a.state = 'running'"
        " AND (c.id IS NULL OR c.state IN ('succeeded', 'failed', 'timed_out')"
        "  OR a.updated_at < now() - make_interval(secs => %(stale)s))"
        " ORDER BY a.id LIMIT %(limit)s FOR UPDATE OF a SKIP LOCKED",
        {"stale": stale_after_s, "limit": limit},
    )


async def unrecorded_attempt(conn: Conn, action: Row) -> Row | None:
    """The device command of an attempt at this pending action that was submitted
    but not recorded as sent (the issuer stopped between the two: a crash, or the
    alarm leader lost): the same command to the same device, created since the
    action became due, and no action's attempt. Issued again it would be sent
    twice; it is taken as the attempt instead."""
    return await _one(
        conn,
        "SELECT c.id FROM device_commands c"
        " WHERE c.device_id = %(device)s AND c.command = %(command)s"
        " AND c.args = %(args)s::jsonb AND c.created_at >= %(due)s"
        " AND NOT EXISTS (SELECT 1 FROM emergency_actions a WHERE a.command_id = c.id)"
        " ORDER BY c.seq LIMIT 1",
        {
            "device": action["device_id"],
            "command": action["command"],
            "args": orjson.dumps(action["args"]).decode(),
            "due": action["next_at"],
        },
    )


async def action_sent(conn: Conn, action_id: int, command_id: Any) -> None:
    await conn.execute(
        "UPDATE emergency_actions SET state = 'running', attempts = attempts + 1,"
        " command_id = %s, updated_at = now() WHERE id = %s",
        (command_id, action_id),
    )


async def action_retry(conn: Conn, action_id: int, error: str, delay_s: float) -> None:
    await conn.execute(
        "UPDATE emergency_actions SET state = 'pending', last_error = %s,"
        " next_at = now() + make_interval(secs => %s), updated_at = now() WHERE id = %s",
        (error, delay_s, action_id),
    )


async def action_ended(conn: Conn, action_id: int, state: str, error: str | None = None) -> None:
    """succeeded, failed or cancelled."""
    await conn.execute(
        "UPDATE emergency_actions SET state = %s, last_error = COALESCE(%s, last_error),"
        " updated_at = now() WHERE id = %s",
        (state, error, action_id),
    )


async def actions(conn: Conn, eid: int) -> list[Row]:
    """The emergency's protective actions, in order."""
    return await _all(
        conn,
        f"SELECT {ACTION_COLUMNS} FROM emergency_actions a WHERE a.emergency_id = %s ORDER BY a.id",
        (eid,),
    )
