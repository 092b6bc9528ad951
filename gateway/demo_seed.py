"""What `polegw demo` seeds for the operator pages, so that a first-time user
finds something real on the lighting page and in the work-order list:

- a lighting group per demo road (every lamp on the road), each with a night
  profile: full at dusk, dimmed late at night (later on Friday and Saturday
  evenings), off at dawn;
- an inspection plan of the first road, whose first inspection order is opened
  at once, as the gateway's inspection scheduler would open it;
- a repair order opened by hand on a pole, as a manager would open it.

Everything goes through the stores the API uses (LightingStore,
InspectionStore, WorkOrderStore) and is written to the audit log as made by the
system via the demo. Made on the first run and left as it is on the next ones:
a group, plan or order the demo made before (found by its id, name or title)
is not made again, nor changed, whatever was done to it since; a group whose
deletion is in the audit log stays deleted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from gateway.adapters.audit import AuditLog, append
from gateway.adapters.inspection_store import InspectionStore
from gateway.adapters.lighting_store import LightingStore
from gateway.adapters.users import UserStore
from gateway.adapters.work_orders import MaintenanceRules, OrderFilter, WorkOrderStore
from gateway.config import Settings
from gateway.core import maintenance as mt
from gateway.core.auth import SYSTEM
from gateway.core.lighting import Schedule
from gateway.core.site import SiteSpec

SEEDED_BY = "polegw demo"
WEEKNIGHTS = [7, 1, 2, 3, 4]  # ISO weekdays of the evening: Sunday to Thursday
WEEKEND = [5, 6]  # Friday and Saturday evenings: the streets are busy longer
NIGHT_PROFILE = Schedule.model_validate(
    {
        "rules": [
            {
                "days": WEEKNIGHTS,
                "steps": [
                    {"at": "dusk", "level": 100},
                    {"at": "23:00", "level": 60},
                    {"at": "01:00", "level": 30},
                    {"at": "dawn", "level": 0},
                ],
            },
            {
                "days": WEEKEND,
                "steps": [
                    {"at": "dusk", "level": 100},
                    {"at": "00:30", "level": 60},
                    {"at": "02:00", "level": 30},
                    {"at": "dawn", "level": 0},
                ],
            },
        ]
    }
)
INSPECTION_EVERY_DAYS = 30
INSPECTION_CHECKLIST = [
    "lamp lit at dusk",
    "pole upright, no impact damage",
    "cabinet door locked",
    "no exposed wiring",
]
REPAIR_TITLE = "Rust at the base of the pole"
REPAIR_DESCRIPTION = (
    "Reported by the street-cleaning crew: rust spreading on the base plate and the"
    " anchor bolts. Wire-brush, prime and repaint; check the bolts' torque."
)
MANAGER = "admin"  # the demo's manager, who opens the repair order


@dataclass(frozen=True, slots=True)
class OpsSeeded:
    groups: list[str]  # the demo's lighting group ids (made now or before; not deleted)
    groups_made: int
    orders: list[int]  # the demo's open work orders' ids (made now or before)
    orders_made: int


def group_id(road: str) -> str:
    """A lighting group id for a road: "Renmin Rd" -> "renmin-rd"."""
    slug = re.sub(r"[^a-z0-9]+", "-", road.lower()).strip("-")
    return slug[:64] or "road"


def roads(site: SiteSpec) -> list[str]:
    """The site's roads, in the order of their first pole."""
    return list(dict.fromkeys(p.road for p in site.poles if p.road))


async def seed_demo_operations(database_url: str, site: SiteSpec, settings: Settings) -> OpsSeeded:
    """seed_operations on the demo's database, under the gateway's maintenance rules."""
    from gateway.service import open_pool

    pool = open_pool(database_url)
    await pool.open()
    try:
        return await seed_operations(
            pool, site, MaintenanceRules.from_settings(settings), datetime.now(UTC)
        )
    finally:
        await pool.close()


async def seed_operations(
    pool: AsyncConnectionPool, site: SiteSpec, rules: MaintenanceRules, now: datetime
) -> OpsSeeded:
    """The demo's lighting groups with their schedules, its inspection plan with
    its first order and its repair order, each made unless made before."""
    groups, groups_made = await _lighting_groups(pool, site, now)
    orders: list[int] = []
    made = 0
    if site.poles:
        inspection, new = await _inspection(pool, site, rules, now)
        made += new
        orders += inspection
        repair, new = await _repair_order(
            pool, site.poles[min(1, len(site.poles) - 1)].id, rules, now
        )
        made += new
        orders += repair
    return OpsSeeded(groups=groups, groups_made=groups_made, orders=orders, orders_made=made)


async def _lighting_groups(
    pool: AsyncConnectionPool, site: SiteSpec, now: datetime
) -> tuple[list[str], int]:
    store = LightingStore(pool)
    definition = NIGHT_PROFILE.model_dump(mode="json", exclude_none=True)
    ids, made = [], 0
    audit = AuditLog(pool)
    for road in roads(site):
        gid = group_id(road)
        deleted = await audit.entries(
            resource="lighting_group",
            resource_id=gid,
            actor=None,
            start=None,
            end=None,
            before_id=None,
            action="delete",
            limit=1,
        )
        if deleted:  # someone deleted it: it stays deleted
            continue
        ids.append(gid)
        async with pool.connection() as conn, conn.transaction():
            row = await store.save_group(conn, gid, road, road, [], [], create=True)
            if row is None:  # made on an earlier run (or by someone): left as it is
                continue
            made += 1
            await append(conn, SYSTEM, "create", "lighting_group", gid, None, _via_demo(row))
            await store.put_schedule(conn, gid, definition, now, SEEDED_BY)
            await append(
                conn, SYSTEM, "update", "lighting_schedule", gid, None, _via_demo(definition)
            )
    return ids, made


async def _inspection(
    pool: AsyncConnectionPool, site: SiteSpec, rules: MaintenanceRules, now: datetime
) -> tuple[list[int], int]:
    """The first road's inspection plan, starting this month; when made now, its
    first order is opened now (the gateway's scheduler would, on its first check)."""
    road = roads(site)[0]
    name = f"{road}: monthly night inspection"
    store = InspectionStore(pool)
    plan = await _plan_named(store, name)
    if plan is None:
        today = now.astimezone(rules.calendar.tz).date()
        values: dict[str, object] = {
            "name": name,
            "road": road,
            "every_days": INSPECTION_EVERY_DAYS,
            "starts_on": date(today.year, today.month, 1),
            "checklist": INSPECTION_CHECKLIST,
            "priority": mt.Priority.GENERAL.value,
        }
        async with pool.connection() as conn, conn.transaction():
            plan = await store.create_plan(conn, values)
            await append(
                conn, SYSTEM, "create", "inspection_plan", plan["id"], None, _via_demo(plan)
            )
        opened = await store.generate_due(rules, now)
    else:
        opened = []
    orders = await _orders(pool, OrderFilter(kind="inspection"), now)
    ours = [int(o["id"]) for o in orders if o["plan_id"] == plan["id"] and _unfinished(o)]
    return ours, len(set(opened) & set(ours))


async def _plan_named(store: InspectionStore, name: str) -> dict[str, Any] | None:
    after = None
    while True:
        page = await store.plans(active=None, after=after, limit=500)
        for plan in page:
            if plan["name"] == name:
                return plan
        if len(page) < 500:
            return None
        after = page[-1]["id"]


async def _repair_order(
    pool: AsyncConnectionPool, pole_id: str, rules: MaintenanceRules, now: datetime
) -> tuple[list[int], int]:
    """The repair order opened by the demo's manager (by hand, as POST /work-orders)."""
    mine = [
        o
        for o in await _orders(pool, OrderFilter(kind="repair", pole=pole_id), now)
        if o["source"] == "manual" and o["title"] == REPAIR_TITLE
    ]
    if mine:
        return [o["id"] for o in mine if _unfinished(o)], 0
    found = await UserStore(pool).credentials(MANAGER)
    due = rules.deadlines_for(mt.Priority.GENERAL, now)
    values: dict[str, object] = {
        "kind": "repair",
        "source": "manual",
        "title": REPAIR_TITLE,
        "description": REPAIR_DESCRIPTION,
        "pole_id": pole_id,
        "priority": mt.Priority.GENERAL.value,
        "created_by": None if found is None else found[0]["id"],
        "response_due": due.response_due,
        "resolution_due": due.resolution_due,
        "created_at": now,
    }
    async with pool.connection() as conn, conn.transaction():
        row = await WorkOrderStore(pool).create(conn, values)
        await append(conn, SYSTEM, "create", "work_order", row["id"], None, _via_demo(row))
    return [int(row["id"])], 1


async def _orders(
    pool: AsyncConnectionPool, flt: OrderFilter, now: datetime
) -> list[dict[str, Any]]:
    store = WorkOrderStore(pool)
    out: list[dict[str, Any]] = []
    after = None
    while True:
        page = await store.page(flt, after=after, limit=500, now=now)
        out += page
        if len(page) < 500:
            return out
        after = page[-1]["id"]


def _unfinished(order: dict[str, Any]) -> bool:
    return order["state"] not in (mt.State.CLOSED.value, mt.State.CANCELLED.value)


def _via_demo(value: Any) -> dict[str, Any]:
    return {**value, "via": "demo"} if isinstance(value, dict) else {"value": value, "via": "demo"}
