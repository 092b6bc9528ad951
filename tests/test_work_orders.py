"""Work orders and inspections against a real database, through the API."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import get_args
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from fastapi.routing import APIRoute
from psycopg_pool import AsyncConnectionPool

from gateway.adapters import emergency_store
from gateway.adapters.work_orders import (
    MaintenanceRules,
    WorkOrderPolicy,
    pole_has_open_work_order,
)
from gateway.api.routes import inspections as inspection_routes
from gateway.api.routes import work_orders as work_order_routes
from gateway.api.security import Audit
from gateway.config import Settings
from gateway.core.auth import Principal
from gateway.core.maintenance import Priority
from gateway.inspections import InspectionScheduler
from gateway.ops_events import AlarmEvent
from tests.support import (
    add_user,
    api_client,
    bearer,
    count,
    opened_pool,
    prepare_database,
)

CST = ZoneInfo("Asia/Shanghai")
LIMIT = 2048
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100


@dataclass
class Env:
    url: str
    settings: Settings
    pool: AsyncConnectionPool
    client: httpx.AsyncClient
    operator: dict[str, str]
    maintainer: Principal
    other: dict[str, str]

    @property
    def fixer(self) -> dict[str, str]:
        return bearer(self.maintainer)


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    await prepare_database(database_url)
    settings = Settings(database_url=database_url, workorder_attachment_max_bytes=LIMIT)
    async with (
        opened_pool(database_url) as pool,
        api_client(settings, pool, base_url="http://api/api/v1") as client,
    ):
        yield Env(
            database_url,
            settings,
            pool,
            client,
            bearer(add_user(database_url, "operator")),
            add_user(database_url, "maintainer"),
            bearer(add_user(database_url, "maintainer")),
        )


def alarm(env: Env, *, fault: str, severity: str, pole: str, at: datetime) -> AlarmEvent:
    with psycopg.connect(env.url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO alarms (rule_key, fault, severity, pole_id, device_id, first_seen,"
            " last_seen) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (f"test/{secrets.token_hex(4)}", fault, severity, pole, f"{pole}-lamp", at, at),
        ).fetchone()
    assert row is not None
    return AlarmEvent(
        int(row[0]), "lamp-controller/x", fault, severity, pole, f"{pole}-lamp", "bad", at, "active"
    )


async def raise_alarm(env: Env, event: AlarmEvent) -> None:
    policy = WorkOrderPolicy(MaintenanceRules.from_settings(env.settings))
    async with env.pool.connection() as conn, conn.transaction():
        await policy.alarm_raised(conn, event)


async def test_an_automatic_work_order_opens_once_and_its_deadline_follows_the_priority(
    env: Env,
) -> None:
    monday = datetime(2026, 11, 23, 10, tzinfo=CST)
    events = [
        alarm(
            env,
            fault="lamp_failure",
            severity="major",
            pole="P0002",
            at=monday + timedelta(minutes=i),
        )
        for i in range(3)
    ]
    for event in events:
        await raise_alarm(env, event)
    page = (
        await env.client.get("/work-orders", params={"pole": "P0002"}, headers=env.operator)
    ).json()
    assert len(page["items"]) == 1, page
    order = page["items"][0]
    assert (order["source"], order["priority"], order["alarm_id"]) == (
        "alarm",
        "single_lamp_out",
        events[0].alarm_id,
    )
    # single lamp out: resolve within 2 working days; no response limit
    assert order["response_due"] is None
    assert datetime.fromisoformat(order["resolution_due"]) == datetime(2026, 11, 25, 10, tzinfo=CST)
    notes = (await env.client.get(f"/work-orders/{order['id']}/notes", headers=env.operator)).json()
    assert [n["alarm_id"] for n in notes["items"]] == [e.alarm_id for e in events]

    # a critical alarm on another fault: urgent, respond within an hour
    smoke = alarm(env, fault="smoke", severity="critical", pole="P0002", at=monday)
    await raise_alarm(env, smoke)
    # a warning opens nothing
    await raise_alarm(env, alarm(env, fault="tilt", severity="warning", pole="P0002", at=monday))
    rows = (
        await env.client.get("/work-orders", params={"pole": "P0002"}, headers=env.operator)
    ).json()
    urgent = [o for o in rows["items"] if o["fault"] == "smoke"]
    assert len(rows["items"]) == 2
    assert datetime.fromisoformat(urgent[0]["response_due"]) == monday + timedelta(hours=1)
    assert urgent[0]["priority"] == "urgent"

    # once the first order is cancelled, the same fault opens a new one
    r = await env.client.post(
        f"/work-orders/{order['id']}/transitions", json={"to": "cancelled"}, headers=env.operator
    )
    assert r.status_code == 200, r.text
    await raise_alarm(
        env, alarm(env, fault="lamp_failure", severity="major", pole="P0002", at=monday)
    )
    assert (
        count(
            env.url,
            "SELECT count(*) FROM work_orders WHERE pole_id = 'P0002' AND fault = 'lamp_failure'",
        )
        == 2
    )


async def create(env: Env, **extra: object) -> dict[str, object]:
    body = {"title": "Cabinet door broken", "pole_id": "P0001", "priority": "general", **extra}
    r = await env.client.post("/work-orders", json=body, headers=env.operator)
    assert r.status_code == 201, r.text
    result: dict[str, object] = r.json()
    return result


async def move(env: Env, order: object, headers: dict[str, str], **body: object) -> httpx.Response:
    return await env.client.post(f"/work-orders/{order}/transitions", json=body, headers=headers)


async def test_state_machine_and_permissions_over_http(env: Env) -> None:
    r = await env.client.post(
        "/work-orders",
        json={"title": "x", "pole_id": "P0001", "priority": "general"},
        headers=env.fixer,
    )
    assert r.status_code == 403  # maintainers do not open orders
    order = (await create(env))["id"]
    assert (await move(env, order, env.fixer, to="in_progress")).status_code == 409
    assert (await move(env, order, env.operator, to="assigned")).status_code == 409  # no assignee
    r = await move(env, order, env.operator, to="assigned", assignee=env.maintainer.user_id)
    assert r.status_code == 200, r.text
    assert r.json()["assigned_at"] is not None
    assert (await move(env, order, env.other, to="in_progress")).status_code == 403  # not theirs
    async with env.pool.connection() as conn:
        assert await pole_has_open_work_order(conn, "P0001")
        assert not await pole_has_open_work_order(conn, "P0003")
    r = await move(env, order, env.fixer, to="in_progress", note="on site")
    assert r.json()["state"] == "in_progress"
    r = await move(env, order, env.fixer, to="closed")
    assert r.status_code == 409
    assert r.json()["detail"]["allowed"] == ["assigned", "cancelled", "resolved"]
    assert (await move(env, order, env.fixer, to="resolved")).status_code == 422  # no resolution
    r = await move(
        env,
        order,
        env.fixer,
        to="resolved",
        resolution="hinge replaced",
        spare_parts=[{"part": "door hinge", "qty": 2}],
    )
    assert r.status_code == 200, r.text
    assert r.json()["spare_parts"] == [{"part": "door hinge", "qty": 2.0, "unit": "pcs"}]
    assert (await move(env, order, env.fixer, to="closed")).status_code == 403
    assert (await move(env, order, env.operator, to="closed")).json()["state"] == "closed"
    assert (await move(env, order, env.operator, to="in_progress")).status_code == 409
    # notes: only managers and the assignee
    r = await env.client.post(f"/work-orders/{order}/notes", json={"text": "x"}, headers=env.other)
    assert r.status_code == 403
    r = await env.client.post(f"/work-orders/{order}/notes", json={"text": "ok"}, headers=env.fixer)
    assert r.status_code == 201
    timeline = (await env.client.get(f"/work-orders/{order}/notes", headers=env.other)).json()
    assert [(n["kind"], n["to_state"]) for n in timeline["items"]] == [
        ("transition", "assigned"),
        ("transition", "in_progress"),
        ("transition", "resolved"),
        ("transition", "closed"),
        ("note", None),
    ]
    assert (
        count(
            env.url,
            "SELECT count(*) FROM audit_log WHERE resource = 'work_order' AND resource_id = %s",
            str(order),
        )
        == 5
    )  # create + 4 transitions


async def test_attachments_are_limited_in_size_and_type(env: Env) -> None:
    order = (await create(env, assignee=env.maintainer.user_id))["id"]
    url = f"/work-orders/{order}/attachments"
    r = await env.client.post(
        url, files={"file": ("door.png", PNG, "image/png")}, headers=env.fixer
    )
    assert r.status_code == 201, r.text
    meta = r.json()
    assert (meta["content_type"], meta["size"]) == ("image/png", len(PNG))
    got = await env.client.get(f"{url}/{meta['id']}", headers=env.other)
    assert got.content == PNG
    assert got.headers["content-type"] == "image/png"
    big = PNG + b"\x00" * LIMIT
    r = await env.client.post(url, files={"file": ("big.png", big, "image/png")}, headers=env.fixer)
    assert r.status_code == 413
    exe = b"MZ\x90\x00" + b"\x00" * 50
    r = await env.client.post(url, files={"file": ("x.jpg", exe, "image/jpeg")}, headers=env.fixer)
    assert r.status_code == 415
    r = await env.client.post(url, files={"file": ("y.png", PNG, "image/png")}, headers=env.other)
    assert r.status_code == 403
    listed = (await env.client.get(url, headers=env.operator)).json()
    assert [a["id"] for a in listed] == [meta["id"]]


async def test_overdue_is_computed_and_filterable(env: Env) -> None:
    late = (await create(env, title="late", priority="urgent", pole_id="P0003"))["id"]
    fresh = (await create(env, title="fresh", priority="urgent", pole_id="P0003"))["id"]
    with psycopg.connect(env.url, autocommit=True) as conn:
        conn.execute(
            "UPDATE work_orders SET response_due = now() - interval '1 minute' WHERE id = %s",
            (late,),
        )
    got = (await env.client.get(f"/work-orders/{late}", headers=env.operator)).json()
    assert (got["overdue"], got["response_overdue"], got["resolution_overdue"]) == (
        True,
        True,
        False,
    )
    params = {"pole": "P0003", "overdue": "true"}
    ids = [
        o["id"]
        for o in (await env.client.get("/work-orders", params=params, headers=env.operator)).json()[
            "items"
        ]
    ]
    assert late in ids
    assert fresh not in ids
    params["overdue"] = "false"
    ids = [
        o["id"]
        for o in (await env.client.get("/work-orders", params=params, headers=env.operator)).json()[
            "items"
        ]
    ]
    assert fresh in ids
    assert late not in ids
    # assigning after the deadline does not clear it: the response was late
    await move(env, late, env.operator, to="assigned", assignee=env.maintainer.user_id)
    assert (await env.client.get(f"/work-orders/{late}", headers=env.operator)).json()["overdue"]


async def test_inspection_generation_is_idempotent(env: Env) -> None:
    plan = {
        "name": "weekly",
        "pole_ids": ["P0001", "P0002"],
        "every_days": 7,
        "starts_on": "2026-12-01",
        "checklist": ["pole upright", "cabinet locked"],
    }
    r = await env.client.post("/inspections/plans", json=plan, headers=env.fixer)
    assert r.status_code == 403
    r = await env.client.post("/inspections/plans", json=plan, headers=env.operator)
    assert r.status_code == 201, r.text
    plan_id = r.json()["id"]
    bad = {**plan, "pole_ids": ["NOPE"]}
    assert (
        await env.client.post("/inspections/plans", json=bad, headers=env.operator)
    ).status_code == 422

    now = datetime(2026, 12, 3, 9, tzinfo=CST)
    first = InspectionScheduler(env.pool, env.settings, clock=lambda: now)
    created = await first.tick()
    assert len(created) == 1
    assert await first.tick() == []
    restarted = InspectionScheduler(env.pool, env.settings, clock=lambda: now)
    assert await restarted.tick() == []
    assert count(env.url, "SELECT count(*) FROM work_orders WHERE plan_id = %s", plan_id) == 1
    later = InspectionScheduler(env.pool, env.settings, clock=lambda: now + timedelta(days=7))
    assert len(await later.tick()) == 1
    got = (await env.client.get(f"/inspections/plans/{plan_id}", headers=env.other)).json()
    assert (got["last_period"], got["next_due"]) == (1, "2026-12-15")

    order = created[0]
    detail = (await env.client.get(f"/work-orders/{order}", headers=env.operator)).json()
    assert (detail["kind"], detail["period"]) == ("inspection", 0)
    assert datetime.fromisoformat(detail["resolution_due"]) == datetime(2026, 12, 8, tzinfo=CST)
    await move(env, order, env.operator, to="assigned", assignee=env.maintainer.user_id)
    async with env.pool.connection() as conn:
        assert await pole_has_open_work_order(conn, "P0002")  # covered by the plan
    record = {
        "work_order_id": order,
        "pole_id": "P0001",
        "results": {"pole upright": {"ok": True}, "cabinet locked": {"ok": False, "note": "rust"}},
    }
    r = await env.client.post("/inspections/records", json=record, headers=env.other)
    assert r.status_code == 403
    r = await env.client.post("/inspections/records", json=record, headers=env.fixer)
    assert r.status_code == 201, r.text
    assert r.json()["passed"] is False
    assert (
        await env.client.post("/inspections/records", json=record, headers=env.fixer)
    ).status_code == 409
    missing = {**record, "pole_id": "P0002", "results": {"pole upright": {"ok": True}}}
    r = await env.client.post("/inspections/records", json=missing, headers=env.fixer)
    assert r.status_code == 422
    outside = {**record, "pole_id": "P0003"}
    assert (
        await env.client.post("/inspections/records", json=outside, headers=env.fixer)
    ).status_code == 422
    listed = (
        await env.client.get("/inspections/records", params={"plan": plan_id}, headers=env.other)
    ).json()
    assert [x["pole_id"] for x in listed["items"]] == ["P0001"]


def test_every_write_route_records_to_the_audit_log() -> None:
    writes = [
        r
        for router in (work_order_routes.router, inspection_routes.router)
        for r in router.routes
        if isinstance(r, APIRoute) and (r.methods or set()) - {"GET", "HEAD"}
    ]
    assert len(writes) == 8
    audit_dependency = get_args(Audit)[1].dependency
    for route in writes:
        calls = {d.call for d in route.dependant.dependencies}
        assert audit_dependency in calls, route.path


def test_rules_from_settings() -> None:
    settings = Settings(
        workorder_holidays=["2026-11-24"], workorder_auto_open={"severity:major": "urgent"}
    )
    rules = MaintenanceRules.from_settings(settings)
    due = rules.deadlines_for(Priority.URGENT, datetime(2026, 11, 23, 2, tzinfo=UTC))
    serious = rules.deadlines_for(Priority.SERIOUS, datetime(2026, 11, 23, 10, tzinfo=CST))
    assert serious.resolution_due == datetime(2026, 11, 27, 10, tzinfo=CST)  # 24th off
    assert due.response_due == datetime(2026, 11, 23, 3, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a priority"):
        MaintenanceRules.from_settings(Settings(workorder_auto_open={"severity:major": "soon"}))


@pytest.mark.parametrize("work_order_first", [True, False])
async def test_an_emergency_links_the_work_order_its_alarm_opened(
    env: Env, work_order_first: bool
) -> None:
    """Issue 16, item 8: an SOS alarm opened an emergency and a work order, but the
    emergency listed no work order. Both listeners run in the alarm's transaction;
    whichever runs second links them, through the alarm. A later alarm of the same
    fault, noted on the same order and joining the same emergency, links nothing new."""
    kind = "sos_call" if work_order_first else "flooding"
    fault = f"{kind}_{secrets.token_hex(3)}"
    at = datetime.now(UTC)
    first, again = (alarm(env, fault=fault, severity="critical", pole="P0003", at=at) for _ in "12")

    async def emergency(event: AlarmEvent) -> int:
        async with env.pool.connection() as conn, conn.transaction():
            eid, _ = await emergency_store.open_or_join(
                conn,
                type=kind,
                pole_id="P0003",
                title="test",
                text="test",
                by="system",
                alarm_id=event.alarm_id,
            )
        return eid

    for event in (first, again):
        if work_order_first:
            await raise_alarm(env, event)
            eid = await emergency(event)
        else:
            eid = await emergency(event)
            await raise_alarm(env, event)
    orders = (
        await env.client.get("/work-orders", params={"pole": "P0003"}, headers=env.operator)
    ).json()["items"]
    (order,) = [o for o in orders if o["fault"] == fault]
    async with env.pool.connection() as conn:
        detail = await emergency_store.detail(conn, eid)
    assert detail is not None
    assert detail["alarm_ids"] == [first.alarm_id, again.alarm_id]
    assert detail["work_order_ids"] == [order["id"]]
