"""The demo's seed for the operator pages (gateway.demo_seed) on a real database:
a lighting group per road with its night schedule, an open inspection order and
an open repair order, made once however often the demo starts, and left as the
user left them (edited, cancelled or deleted)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from gateway.adapters.audit import append
from gateway.adapters.lighting_store import LightingStore
from gateway.config import Settings
from gateway.core.auth import SYSTEM
from gateway.demo_seed import seed_demo_operations
from gateway.service import open_pool
from simulators.demo_site import demo_site
from tests.support import prepare_database

SITE = demo_site(6)  # two poles on each of the three roads


def rows(url: str, sql: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(sql).fetchall()


async def test_the_seed_is_made_once_and_left_as_the_user_left_it(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    await prepare_database(url, SITE)
    settings = Settings(database_url=url)
    first = await seed_demo_operations(url, SITE, settings)
    assert first.groups == ["renmin-rd", "tianfu-ave", "shuncheng-st"]
    assert (first.groups_made, first.orders_made, len(first.orders)) == (3, 2, 2)

    groups = rows(url, "SELECT id, name, road FROM lighting_groups ORDER BY id")
    assert [(g["id"], g["name"], g["road"]) for g in groups] == [
        ("renmin-rd", "Renmin Rd", "Renmin Rd"),
        ("shuncheng-st", "Shuncheng St", "Shuncheng St"),
        ("tianfu-ave", "Tianfu Ave", "Tianfu Ave"),
    ]
    schedules = rows(url, "SELECT group_id, definition FROM lighting_schedules WHERE active")
    assert len(schedules) == 3
    for s in schedules:
        rules = s["definition"]["rules"]
        assert sorted(d for r in rules for d in r["days"]) == [1, 2, 3, 4, 5, 6, 7]
        assert all(r["steps"][0] == {"at": "dusk", "level": 100} for r in rules)
        assert all(r["steps"][-1] == {"at": "dawn", "level": 0} for r in rules)
    orders = rows(url, "SELECT id, kind, source, state, pole_id, plan_id FROM work_orders")
    assert sorted((o["kind"], o["source"], o["state"]) for o in orders) == [
        ("inspection", "schedule", "open"),
        ("repair", "manual", "open"),
    ]
    assert sorted(first.orders) == sorted(o["id"] for o in orders)
    audit = rows(url, "SELECT resource, after->>'via' AS via FROM audit_log ORDER BY id")
    assert {a["resource"] for a in audit} == {
        "lighting_group",
        "lighting_schedule",
        "inspection_plan",
        "work_order",
    }
    assert {a["via"] for a in audit} == {"demo"}

    # The user renames a group, deletes another (as DELETE /lighting/groups/{id} does:
    # audited) and cancels the repair order; the demo starts again.
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE lighting_groups SET name = 'Renmin Rd (mine)' WHERE id = 'renmin-rd'")
        conn.execute("UPDATE work_orders SET state = 'cancelled' WHERE kind = 'repair'")
    pool = open_pool(url)
    await pool.open()
    try:
        async with pool.connection() as aconn, aconn.transaction():
            await LightingStore(pool).delete_group(aconn, "tianfu-ave")
            await append(aconn, SYSTEM, "delete", "lighting_group", "tianfu-ave")
    finally:
        await pool.close()
    second = await seed_demo_operations(url, SITE, settings)
    assert second.groups == ["renmin-rd", "shuncheng-st"]
    assert (second.groups_made, second.orders_made) == (0, 0)
    assert [o["id"] for o in orders if o["kind"] == "inspection"] == second.orders
    assert len(rows(url, "SELECT 1 FROM lighting_groups")) == 2
    assert len(rows(url, "SELECT 1 FROM lighting_schedules")) == 2  # none put again
    assert len(rows(url, "SELECT 1 FROM work_orders")) == 2
    assert len(rows(url, "SELECT 1 FROM inspection_plans")) == 1
    assert rows(url, "SELECT name FROM lighting_groups WHERE id = 'renmin-rd'") == [
        {"name": "Renmin Rd (mine)"}
    ]
