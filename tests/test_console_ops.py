"""The console's operator pages of issue 13 in a real browser: 维护管理 (work
orders, inspections), 应急管理 (emergencies) and 节能 (lighting), against the
real gateway (API, alarms, work-order policy, emergencies, lighting, live
events) on real PostgreSQL and Mosquitto, with a Modbus lamp simulator.

Each test says what a person does; selectors are by role, label and text.
"""

from __future__ import annotations

import asyncio
import os
import re
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import psycopg
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Dialog,
    FilePayload,
    Page,
    ViewportSize,
    async_playwright,
    expect,
)

from gateway.core.auth import Principal
from gateway.core.profiles import load_catalog
from gateway.core.site import DeviceSpec, Location, ModbusEndpoint, PoleSpec, SiteSpec
from simulators.modbus_server import ModbusSimulator
from tests.support import add_user, gateway, gateway_settings, prepare_database, publish
from tests.test_console import (
    CHROMIUM,
    FLAGS,
    assert_both_languages,
    assert_fits_a_phone,
    log_in,
)

CATALOG = load_catalog()
LAMP = "P0001-lamp"


def site(modbus_port: int) -> SiteSpec:
    endpoint = ModbusEndpoint(host="127.0.0.1", port=modbus_port, unit=1, interval_s=0.5)

    def pole(pid: str, road: str, lat: float, lon: float, *devices: DeviceSpec) -> PoleSpec:
        return PoleSpec(
            id=pid,
            name=f"{road} {pid[-1]}",
            road=road,
            location=Location(lat=lat, lon=lon),
            devices=list(devices),
        )

    return SiteSpec(
        poles=[
            pole(
                "P0001",
                "Renmin Rd",
                30.6500,
                104.0660,
                DeviceSpec(id=LAMP, profile="lamp-controller", transport="modbus", modbus=endpoint),
                DeviceSpec(id="P0001-tilt", profile="pole-tilt"),
                DeviceSpec(id="P0001-sos", profile="sos-button"),
            ),
            pole(
                "P0002",
                "Renmin Rd",
                30.6510,
                104.0660,
                DeviceSpec(id="P0002-lamp", profile="lamp-controller"),
            ),
            pole(
                "P0003",
                "Tianfu Ave",
                30.6505,
                104.0680,
                DeviceSpec(id="P0003-lamp", profile="lamp-controller"),
            ),
        ],
    )


@dataclass
class Env:
    url: str  # database
    mqtt_url: str
    prefix: str
    api: str  # the app's origin
    admin: dict[str, str]  # bearer headers
    operator: Principal
    maintainer: Principal
    lamp: ModbusSimulator
    browser: Browser


@pytest.fixture(scope="module")
async def env(database_url: str, mqtt_url: str) -> AsyncIterator[Env]:
    spec = DeviceSpec(
        id=LAMP,
        profile="lamp-controller",
        transport="modbus",
        modbus=ModbusEndpoint(host="127.0.0.1", port=1, unit=1),
    )
    prefix = f"console-ops-{os.getpid()}"
    async with ModbusSimulator([(spec, CATALOG["lamp-controller"])]) as lamp:
        await prepare_database(database_url, site(lamp.port))
        operator = add_user(database_url, "operator")
        maintainer = add_user(database_url, "maintainer")
        settings = gateway_settings(
            database_url,
            mqtt_url,
            prefix,
            command_timeout_s=5.0,
            lighting_reload_s=0.5,
            inspection_check_s=0.5,
        )
        async with gateway(settings) as gw, async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                yield Env(
                    database_url,
                    mqtt_url,
                    prefix,
                    gw.api,
                    gw.headers,
                    operator,
                    maintainer,
                    lamp,
                    browser,
                )
            finally:
                await browser.close()


async def new_context(env: Env, *, locale: str = "en", phone: bool = False) -> BrowserContext:
    size: ViewportSize = {"width": 390, "height": 844} if phone else {"width": 1440, "height": 900}
    return await env.browser.new_context(viewport=size, locale=locale, base_url=env.api)


async def api_call(env: Env, method: str, path: str, **kw: Any) -> Any:
    async with httpx.AsyncClient(base_url=env.api, headers=env.admin) as client:
        r = await client.request(method, path, **kw)
        r.raise_for_status()
        return r.json() if r.content else None


async def until(check: Any, *, within: float = 20.0, what: str = "condition") -> Any:
    for _ in range(int(within * 10)):
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not met within {within}s")


def db_one(url: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def png() -> bytes:
    """A real 2x2 PNG, as a phone's camera would send a photo."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def no_errors(page: Page) -> None:
    assert page.errors == []  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- 维护管理


async def test_an_alarm_order_is_taken_on_a_phone_resolved_and_closed(env: Env) -> None:
    # The operator watches the work orders.
    desk = await new_context(env)
    op = await log_in(desk, env.operator.name)
    await op.goto("/console/#/work-orders")
    await expect(op.locator("#wo-list")).to_contain_text("No work order.")
    # The pole leans 20° for 12 s of reading time: a critical alarm, which opens
    # an urgent work order by itself.
    now = datetime.now(UTC)
    await asyncio.to_thread(
        publish,
        env.mqtt_url,
        [
            (
                f"{env.prefix}/P0001/devices/P0001-tilt/telemetry",
                orjson.dumps(
                    {"ts": (now - timedelta(seconds=s)).isoformat(), "values": {"tilt_deg": 20.0}}
                ),
            )
            for s in (12, 6, 0)
        ],
    )

    async def alarm_order() -> int | None:
        found = db_one(
            env.url,
            "SELECT id FROM work_orders WHERE source = 'alarm' AND pole_id = 'P0001'"
            " ORDER BY id DESC LIMIT 1",
        )
        return None if found is None else int(found)

    order_id = await until(alarm_order, what="a work order from the tilt alarm")

    # It shows up in the list by itself; the operator assigns it to the maintainer.
    item = op.locator(f"#wo-list [data-order='{order_id}']")
    await expect(item).to_contain_text("Urgent", timeout=10000)
    await expect(item).to_contain_text("Open")
    await item.locator("a.wo-title").click()
    await expect(op.get_by_role("heading", level=1)).to_contain_text(f"#{order_id}")
    await op.get_by_label("Assign to").select_option(str(env.maintainer.user_id))
    await op.get_by_label("Note", exact=True).fill("nearest crew")
    await op.get_by_role("button", name="Assign", exact=True).click()
    await expect(op.locator("#wo-state")).to_contain_text("Assigned")
    await expect(op.locator("#wo-assignee")).to_have_text(env.maintainer.name)

    # The maintainer, on a phone, sees it under "My orders" and takes it.
    phone = await new_context(env, phone=True)
    mt = await log_in(phone, env.maintainer.name)
    await mt.goto("/console/#/work-orders")
    mine = mt.locator("#wo-mine")
    await expect(mine.get_by_role("heading", name="My orders")).to_be_visible()
    await mine.locator(f"[data-order='{order_id}'] a.wo-title").click()
    await mt.get_by_role("button", name="Take it: start work").click()
    await expect(mt.locator("#wo-state")).to_contain_text("In progress")
    # A photo from the camera: the file input asks for the rear camera.
    photo = mt.get_by_label("Take or attach a photo")
    assert await photo.get_attribute("capture") == "environment"
    assert await photo.get_attribute("accept") == "image/*"
    shot_file: FilePayload = {"name": "pole.png", "mimeType": "image/png", "buffer": png()}
    await photo.set_input_files(files=[shot_file])
    shot = mt.locator("#wo-photos [data-attachment] img")
    await expect(shot).to_have_count(1)
    # The photo is the one uploaded, and it opens from the page.
    await mt.wait_for_function(
        "(img) => img.complete && img.naturalWidth === 2", arg=await shot.element_handle()
    )
    # Spare parts used, then resolved with what was done.
    await mt.get_by_label("Part", exact=True).fill("tilt sensor bracket")
    await mt.get_by_label("Quantity").fill("2")
    await mt.get_by_role("button", name="Add part").click()
    await expect(mt.locator("#wo-parts")).to_contain_text("tilt sensor bracket")
    await mt.get_by_label("What was done").fill("pole straightened, bracket replaced")
    await mt.get_by_role("button", name="Resolved").click()
    await expect(mt.locator("#wo-state")).to_contain_text("Resolved")
    overflow = await mt.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    no_errors(mt)

    # The operator sees it resolved (live, no reload) and closes it.
    await expect(op.locator("#wo-state")).to_contain_text("Resolved", timeout=10000)
    await op.get_by_role("button", name="Close").click()
    await expect(op.locator("#wo-state")).to_contain_text("Closed")
    order = await api_call(env, "GET", f"/api/v1/work-orders/{order_id}")
    assert order["state"] == "closed"
    assert order["assignee"] == env.maintainer.user_id
    assert order["resolution"] == "pole straightened, bracket replaced"
    assert order["spare_parts"] == [{"part": "tilt sensor bracket", "qty": 2.0, "unit": "pcs"}]
    files = await api_call(env, "GET", f"/api/v1/work-orders/{order_id}/attachments")
    assert [(f["filename"], f["content_type"], f["uploaded_by"]) for f in files] == [
        ("pole.png", "image/png", env.maintainer.user_id)
    ]
    # The timeline shows who moved it, when, with the note.
    timeline = op.locator("#wo-timeline")
    await expect(timeline).to_contain_text("nearest crew")
    await expect(timeline).to_contain_text(f"{env.maintainer.name} · In progress → Resolved")
    no_errors(op)
    await desk.close()
    await phone.close()


async def test_an_order_made_by_hand_is_marked_overdue_when_its_deadline_passes(
    env: Env,
) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator.name)
    await page.goto("/console/#/work-orders")
    await page.get_by_role("button", name="New work order").click()
    form = page.locator("#wo-create")
    await form.get_by_label("Pole").fill("P0002")
    await form.get_by_label("Fault").select_option("lamp_failure")
    await form.get_by_label("Priority").select_option("general")
    await form.get_by_label("Description").fill("dark since Monday")
    await form.get_by_role("button", name="Create").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Lamp failure")
    order_id = int(re.findall(r"#/work-orders/(\d+)", page.url)[0])
    order = await api_call(env, "GET", f"/api/v1/work-orders/{order_id}")
    assert (order["pole_id"], order["fault"], order["priority"], order["source"]) == (
        "P0002",
        "lamp_failure",
        "general",
        "manual",
    )
    assert order["description"] == "dark since Monday"
    await expect(page.locator("#wo-state")).not_to_contain_text("Overdue")

    # Time passes: the response deadline is now behind us.
    with psycopg.connect(env.url, autocommit=True) as conn:
        conn.execute(
            "UPDATE work_orders SET response_due = now() - interval '5 minutes' WHERE id = %s",
            (order_id,),
        )
    await page.goto("/console/#/work-orders?overdue=true")
    item = page.locator(f"#wo-list [data-order='{order_id}']")
    mark = item.locator(".badge.overdue")
    await expect(mark).to_have_text(re.compile("⏱\\s*Overdue"))
    await expect(item.locator(".due.missed")).to_contain_text("Respond by")
    # Not overdue: it is not in that list.
    await page.goto("/console/#/work-orders?overdue=false")
    await expect(page.locator("#wo-list > *")).to_have_count(1)  # the list is drawn
    await expect(page.locator(f"#wo-list [data-order='{order_id}']")).to_have_count(0)
    no_errors(page)
    await ctx.close()


async def test_an_inspection_plan_opens_an_order_and_its_checklist_is_filled_per_pole(
    env: Env,
) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator.name)
    await page.goto("/console/#/inspections")
    await page.get_by_role("button", name="New inspection plan").click()
    await page.get_by_label("Name").fill("Renmin Rd monthly")
    await page.get_by_label("Road", exact=True).select_option("Renmin Rd")
    await page.get_by_label("Every (days)").fill("30")
    await page.get_by_label("Checklist (one item a line)").fill("pole upright\ncabinet locked")
    await page.get_by_role("button", name="Create plan").click()
    plans = page.get_by_role("table", name="Inspection plans")
    await expect(plans).to_contain_text("Renmin Rd monthly")
    await expect(plans).to_contain_text("pole upright · cabinet locked")

    # The gateway opens the plan's inspection order; it shows up on the page by itself.
    orders = page.locator("#main .wo-list [data-order]")
    await expect(orders).to_have_count(1, timeout=15000)
    await orders.locator("a.wo-title").click()
    await page.get_by_label("Assign to").select_option(str(env.operator.user_id))
    await page.get_by_role("button", name="Assign", exact=True).click()
    await expect(page.locator("#wo-state")).to_contain_text("Assigned")
    board = page.locator("#wo-checklist")
    await expect(board).to_contain_text("0 of 2 poles recorded")
    p1 = board.get_by_role("form", name="Checklist for pole P0001")
    await p1.get_by_label("cabinet locked", exact=True).uncheck()
    await p1.get_by_label("cabinet locked · Note").fill("lock broken")
    await p1.get_by_role("button", name="Record").click()
    await expect(board).to_contain_text("1 of 2 poles recorded")
    await expect(board.locator("[data-pole=P0001]")).to_contain_text("Failed")
    p2 = board.get_by_role("form", name="Checklist for pole P0002")
    await p2.get_by_role("button", name="Record").click()
    await expect(board.locator("[data-pole=P0002]")).to_contain_text("Passed")
    order_id = int(re.findall(r"#/work-orders/(\d+)", page.url)[0])
    records = await api_call(
        env, "GET", "/api/v1/inspections/records", params={"work_order": order_id}
    )
    got = {r["pole_id"]: (r["passed"], r["results"]) for r in records["items"]}
    assert got == {
        "P0001": (
            False,
            {
                "pole upright": {"ok": True, "note": ""},
                "cabinet locked": {"ok": False, "note": "lock broken"},
            },
        ),
        "P0002": (
            True,
            {"pole upright": {"ok": True, "note": ""}, "cabinet locked": {"ok": True, "note": ""}},
        ),
    }
    no_errors(page)
    await ctx.close()


async def test_the_list_sorts_by_priority_and_filters_by_pole(env: Env) -> None:
    made = []
    for fault, priority in (("door_open", "urgent"), ("noise_high", "general")):
        body = {"title": fault, "pole_id": "P0003", "fault": fault, "priority": priority}
        made.append((await api_call(env, "POST", "/api/v1/work-orders", json=body))["id"])
    urgent, general = made
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator.name)
    await page.goto("/console/#/work-orders?pole=P0003&state=open")
    items = page.locator("#wo-list [data-order]")
    await expect(items).to_have_count(2)
    assert await items.evaluate_all("(els) => els.map((e) => +e.dataset.order)") == [
        general,
        urgent,
    ]
    await page.get_by_label("Sort by").select_option("priority")
    await page.get_by_role("button", name="Apply filters").click()
    await expect(items.first).to_have_attribute("data-order", str(urgent))
    await expect(items).to_have_count(2)
    assert "sort=priority" in page.url
    no_errors(page)
    await ctx.close()


async def test_a_manager_opens_an_emergency_by_hand(env: Env) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator.name)
    await page.goto("/console/#/emergencies")
    await page.get_by_role("button", name="Open an emergency").click()
    form = page.locator("#em-create")
    await form.get_by_label("Type", exact=True).select_option("severe_weather")
    await form.get_by_label("Pole (empty: area-wide)").fill("P0003")
    await form.get_by_label("Title").fill("Typhoon warning")
    await form.get_by_label("Run the type's protective actions on the pole").uncheck()
    await form.get_by_role("button", name="Open it").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Typhoon warning")
    await expect(page.locator("#em-actions")).to_contain_text("No protective action.")
    emergency_id = int(re.findall(r"#/emergencies/(\d+)", page.url)[0])
    em = await api_call(env, "GET", f"/api/v1/emergencies/{emergency_id}")
    assert (em["type"], em["pole_id"], em["opened_by"], em["state"]) == (
        "severe_weather",
        "P0003",
        env.operator.name,
        "open",
    )
    no_errors(page)
    await ctx.close()


async def test_the_assignees_are_the_enabled_staff_users(env: Env) -> None:
    gone = add_user(env.url, "maintainer")
    with psycopg.connect(env.url, autocommit=True) as conn:
        conn.execute("UPDATE users SET disabled = true WHERE id = %s", (gone.user_id,))
    found = await api_call(env, "GET", "/api/v1/work-orders/assignees")
    by_id = {u["id"]: u for u in found}
    assert by_id[env.maintainer.user_id] == {
        "id": env.maintainer.user_id,
        "name": env.maintainer.name,
        "role": "maintainer",
    }
    assert by_id[env.operator.user_id]["role"] == "operator"
    assert gone.user_id not in by_id
    assert [u["name"] for u in found] == sorted(u["name"] for u in found)
    async with httpx.AsyncClient(base_url=env.api) as anonymous:
        assert (await anonymous.get("/api/v1/work-orders/assignees")).status_code == 401


# --------------------------------------------------------------------------- 应急管理


def sos_event(env: Env, kind: str) -> tuple[str, bytes]:
    ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    body = {"ts": ts, "device": "P0001-sos", "type": kind, "data": {}}
    return f"{env.prefix}/P0001/events", orjson.dumps(body)


async def test_an_sos_opens_an_emergency_which_the_operator_records_and_closes(
    env: Env,
) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator.name)
    await page.goto("/console/#/emergencies")
    await expect(page.locator("#em-list")).to_be_visible()
    await asyncio.to_thread(publish, env.mqtt_url, [sos_event(env, "sos_pressed")])
    # It appears on the open list by itself, with its type.
    item = page.locator("#em-list [data-emergency]").filter(has_text="SOS call")
    await expect(item).to_have_count(1, timeout=15000)
    await expect(item).to_contain_text("Open")
    title = await item.locator("a.wo-title").inner_text()
    emergency_id = int(re.findall(r"^#(\d+) ", title)[0])
    # The overview's open emergencies lead to it.
    await page.goto("/console/#/")
    await page.get_by_role("link", name=title.split(" ", 1)[1]).click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(title)
    assert page.url.endswith(f"#/emergencies/{emergency_id}")
    # The lamps go to full: the action and its device command, live, to succeeded.
    acts = page.locator("#em-actions [data-action]").filter(has_text=LAMP)
    await expect(acts).to_have_count(2)  # switch on, dim to 100 %
    for i in range(2):
        await expect(acts.nth(i)).to_contain_text("Lamps to full")
        await expect(acts.nth(i).get_by_role("status")).to_have_text(
            re.compile("Succeeded"), timeout=20000
        )
    await expect(acts.filter(has_text="Done")).to_have_count(2, timeout=20000)
    # The alarm that raised it is linked.
    await expect(page.locator("#em-links [data-alarm]")).to_have_count(1)

    await page.get_by_label("Entry").select_option("dispatched")
    await page.get_by_label("What happened").fill("crew 2 sent from the depot")
    await page.get_by_role("button", name="Add to the timeline").click()
    entry = page.locator("#em-timeline li[data-kind=dispatched]")
    await expect(entry).to_contain_text("crew 2 sent from the depot")
    await expect(entry).to_contain_text(env.operator.name)

    await page.get_by_label("How it was resolved").fill("caller helped, false alarm")
    await page.get_by_role("button", name="Mark resolved").click()
    await expect(page.locator("#em-state")).to_contain_text("Resolved")
    await page.get_by_label("Closing report").fill("Response in 6 minutes. No injury.")
    await page.get_by_role("button", name="Close", exact=True).click()
    await expect(page.locator("#em-state")).to_contain_text("Closed")
    await expect(page.locator("#em-report")).to_have_text("Response in 6 minutes. No injury.")
    # Closed: nothing more goes on its timeline.
    await expect(page.get_by_role("button", name="Add to the timeline")).to_have_count(0)

    detail = await api_call(env, "GET", f"/api/v1/emergencies/{emergency_id}")
    assert (detail["type"], detail["state"], detail["report"]) == (
        "sos_call",
        "closed",
        "Response in 6 minutes. No injury.",
    )
    kinds = [(e["kind"], e["author"], e["text"]) for e in detail["timeline"]]
    assert ("dispatched", env.operator.name, "crew 2 sent from the depot") in kinds
    assert kinds[-1] == ("closed", env.operator.name, "Response in 6 minutes. No injury.")
    actions = await api_call(env, "GET", f"/api/v1/emergencies/{emergency_id}/actions")
    lamp = [a for a in actions if a["device_id"] == LAMP]
    assert sorted((a["action"], a["command"], a["state"]) for a in lamp) == [
        ("lights_full", "set_dim", "succeeded"),
        ("lights_full", "switch_on", "succeeded"),
    ]
    assert all(a["command_id"] for a in lamp)
    no_errors(page)
    await ctx.close()


async def test_a_manager_stores_a_plan_and_records_a_drill(env: Env) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator.name)
    await page.goto("/console/#/emergency-plans")
    await page.get_by_text("Store a plan").click()
    await page.locator("#ep-p-type").select_option("flooding")
    await page.get_by_label("Title").fill("Flooded cabinets")
    await page.get_by_label("Plan text").fill("1. Cut tenant ports. 2. Dispatch crew.")
    await page.get_by_role("button", name="Save plan").click()
    await expect(page.locator("#em-plans")).to_contain_text("Flooded cabinets")
    await page.get_by_text("Record a drill").click()
    await page.locator("#ep-d-type").select_option("flooding")
    await page.get_by_label("Plan", exact=True).select_option(label="Flooded cabinets (1)")
    await page.get_by_label("Held").fill("2026-11-20T09:30")
    await page.get_by_label("Participants (comma-separated)").fill("li.wei, zhang.min")
    await page.get_by_role("button", name="Save drill").click()
    drills = page.get_by_role("table", name="Drills")
    await expect(drills).to_contain_text("li.wei, zhang.min")
    await expect(drills).to_contain_text("Flooded cabinets")
    # By type: another type shows neither.
    filters = page.get_by_role("form", name="Filter")
    await filters.get_by_label("Type").select_option("sos_call")
    await filters.get_by_role("button", name="Filter").click()
    await expect(page.locator("#em-plans")).not_to_contain_text("Flooded cabinets")
    drill = (await api_call(env, "GET", "/api/v1/emergencies/drills"))["items"][0]
    assert drill["participants"] == ["li.wei", "zhang.min"]
    assert drill["held_at"] == "2026-11-20T01:30:00Z"
    no_errors(page)
    await ctx.close()


async def test_the_protective_actions_need_a_staff_user_and_an_emergency(env: Env) -> None:
    async with httpx.AsyncClient(base_url=env.api) as anonymous:
        assert (await anonymous.get("/api/v1/emergencies/1/actions")).status_code == 401
    async with httpx.AsyncClient(base_url=env.api, headers=env.admin) as client:
        missing = await client.get("/api/v1/emergencies/999999/actions")
        assert missing.status_code == 404


# --------------------------------------------------------------------------- 节能

SITE_TZ = ZoneInfo("Asia/Shanghai")  # the settings' default site_timezone


async def lighting_group(env: Env) -> str:
    groups = await api_call(env, "GET", "/api/v1/lighting/groups")
    if not any(g["id"] == "renmin" for g in groups["items"]):
        await api_call(
            env,
            "POST",
            "/api/v1/lighting/groups",
            json={"id": "renmin", "name": "Renmin Rd", "road": "Renmin Rd"},
        )
        steps = [
            {"at": "dusk", "level": 100},
            {"at": "23:00", "level": 50},
            {"at": "dawn", "level": 0},
        ]
        await api_call(
            env,
            "PUT",
            "/api/v1/lighting/groups/renmin/schedule",
            json={"rules": [{"days": [1, 2, 3, 4, 5, 6, 7], "steps": steps}]},
        )
    return "renmin"


async def test_the_lighting_page_shows_the_group_its_nights_and_energy_and_sets_an_override(
    env: Env,
) -> None:
    group = await lighting_group(env)
    # Yesterday evening the lamp burned 2.5 kWh in three hours at up to 900 W.
    yesterday = datetime.now(SITE_TZ).date() - timedelta(days=1)
    evening = datetime.combine(yesterday, time(19, 0), SITE_TZ)
    rows = []
    for i in range(7):
        ts = evening + timedelta(minutes=30 * i)
        rows += [
            (ts, LAMP, "energy_kwh", 10.0 + 2.5 * i / 6),
            (ts, LAMP, "lamp_on", 1.0),
            (ts, LAMP, "power_w", 900.0),
        ]
    copy_sql = "COPY telemetry (ts, device_id, metric, value) FROM STDIN"
    with psycopg.connect(env.url) as conn, conn.cursor() as cur, cur.copy(copy_sql) as copy:
        for row in rows:
            copy.write_row(row)

    ctx = await new_context(env)
    page = await log_in(ctx, env.operator.name)
    await page.goto(f"/console/#/lighting?group={group}")
    # The group's poles stand out on the map.
    await expect(page.locator("#light-map .pole-marker.in-group")).to_have_count(2)
    await expect(page.locator("#light-map .pole-marker.not-in-group")).to_have_count(1)
    await expect(page.locator("#light-members")).to_contain_text("Renmin Rd: 2 poles")
    # The weekly calendar in words, and seven nights drawn as dim-level profiles.
    await expect(page.locator("#light-calendar")).to_contain_text(
        "Dusk → 100% · 23:00 → 50% · Dawn → off"
    )
    nights = page.locator("#light-profile li.night")
    await expect(nights).to_have_count(7)
    await expect(nights.locator("svg path.level")).to_have_count(7)
    # A night's profile rises at dusk: the area is not flat.
    d = await nights.nth(1).locator("path.level").get_attribute("d")
    assert d is not None
    assert len(set(re.findall(r"L[\d.]+,([\d.]+)", d))) >= 3

    # Energy by day: 14 bars, yesterday's use as the API computes it.
    bars = page.locator("#light-energy svg rect.bar-used")
    await expect(bars).to_have_count(14)
    day = bars.nth(12)
    start, end = await day.get_attribute("data-start"), await day.get_attribute("data-end")
    report = await api_call(
        env,
        "GET",
        f"/api/v1/lighting/groups/{group}/energy",
        params={"start": start, "end": end},
    )
    assert report["used_kwh"] == pytest.approx(2.5)
    assert report["saved_kwh"] > 0
    assert start == datetime.combine(yesterday, time(0), SITE_TZ).astimezone(
        UTC
    ).isoformat().replace("+00:00", ".000Z")
    await page.get_by_text("The numbers").click()
    cells = page.locator("#light-energy tbody tr").nth(12).locator("td")
    await expect(cells.nth(1)).to_have_text("2.50")
    await expect(cells.nth(3)).to_have_text(f"{report['saved_kwh']:.2f}")
    await page.get_by_role("button", name="By month").click()
    await expect(bars).to_have_count(12)

    # A one-off override: 30 % until the time given; the API has it and the lamp follows.
    form = page.get_by_role("form", name="One-off override")
    await form.get_by_label("Level (%; 0 = off)").fill("30")
    until = (datetime.now(SITE_TZ) + timedelta(hours=3)).replace(second=0, microsecond=0)
    await form.get_by_label("Until").fill(until.strftime("%Y-%m-%dT%H:%M"))
    await form.get_by_label("Reason").fill("street fair")
    await form.get_by_role("button", name="Set override").click()
    await expect(page.locator("#light-overrides li")).to_contain_text("30%")
    active = await api_call(
        env, "GET", f"/api/v1/lighting/groups/{group}/overrides", params={"active": "true"}
    )
    assert [(o["level"], o["reason"], o["created_by"]) for o in active["items"]] == [
        (30, "street fair", env.operator.name)
    ]
    assert datetime.fromisoformat(active["items"][0]["until"]) == until
    # Tonight's profile shows it.
    await expect(nights.first.locator("svg")).to_have_attribute("aria-label", re.compile("30%"))
    await until_lamp(env, 30)
    # Ended from the page: gone from the active list.
    await page.get_by_role("button", name="End now").click()
    await expect(page.locator("#light-override")).to_contain_text("No override in force.")
    no_errors(page)
    await ctx.close()


async def test_a_schedule_reads_a_week_ahead_with_the_level_in_force_now(env: Env) -> None:
    group = await lighting_group(env)
    url = f"/api/v1/lighting/groups/{group}/schedule"
    now = datetime.now(UTC)
    day = await api_call(env, "GET", url)
    week = await api_call(env, "GET", url, params={"hours": 168})
    last = max(datetime.fromisoformat(x["at"]) for x in week["upcoming"])
    assert last > now + timedelta(days=6)
    assert max(datetime.fromisoformat(x["at"]) for x in day["upcoming"]) <= now + timedelta(
        hours=24, minutes=1
    )
    assert len(week["upcoming"]) >= 7 * 3 - 1  # dusk, 23:00 and dawn every night
    # The schedule was put in force at least a test ago: a level is in force now.
    assert week["level_now"] in (0, 50, 100)
    async with httpx.AsyncClient(base_url=env.api, headers=env.admin) as client:
        bad = await client.get(url, params={"hours": 400})
    assert bad.status_code == 422
    assert "hours" in bad.text


async def until_lamp(env: Env, level: int) -> None:
    async def dimmed() -> bool:
        return bool(env.lamp.values(LAMP).get("dim_pct") == level)

    await until(dimmed, within=20, what=f"the lamp dimmed to {level} %")


def answering(asked: list[str], *, accept: bool) -> Callable[[Dialog], Awaitable[None]]:
    """A dialog handler that notes the dialog's message, then accepts or dismisses it."""

    async def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await (dialog.accept() if accept else dialog.dismiss())

    return answer


def asked_yet(asked: list[str]) -> Callable[[], Awaitable[bool]]:
    """A check for until(): a dialog's message has been seen."""

    async def check() -> bool:
        return bool(asked)

    return check


async def test_a_manager_edits_a_group_on_the_map_and_deletes_it(env: Env) -> None:
    # A group of one pole, with a schedule and an override to be deleted with it.
    # (P0001, the lamp the other tests watch, stays out of it.)
    gid = "square"
    await api_call(
        env,
        "POST",
        "/api/v1/lighting/groups",
        json={"id": gid, "name": "Square", "poles": ["P0003"]},
    )
    await api_call(
        env,
        "PUT",
        f"/api/v1/lighting/groups/{gid}/schedule",
        json={"rules": [{"steps": [{"at": "dusk", "level": 80}, {"at": "dawn", "level": 0}]}]},
    )
    until_at = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    await api_call(
        env,
        "POST",
        f"/api/v1/lighting/groups/{gid}/overrides",
        json={"level": 40, "until": until_at},
    )
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator.name)
    await page.goto(f"/console/#/lighting?group={gid}")
    await expect(page.locator("#light-members")).to_contain_text("1 poles")
    await page.get_by_role("button", name="Edit group").click()
    form = page.get_by_role("form", name="Edit group")
    await expect(form.get_by_label("Name")).to_have_value("Square")
    await expect(form.get_by_label("Poles (ids, comma-separated)")).to_have_value("P0003")

    # An unknown pole: the API's 422, in words, next to the field.
    await form.get_by_label("Poles (ids, comma-separated)").fill("P0003, P9999")
    await form.get_by_role("button", name="Save group").click()
    await expect(page.locator("#light-form-poles-error")).to_have_text("No pole P9999 on the site.")
    await expect(form.get_by_label("Poles (ids, comma-separated)")).to_have_attribute(
        "aria-invalid", "true"
    )
    # The members picked on the map: P0002 in, P0003 out (it is listed), plus a lamp.
    await form.get_by_label("Poles (ids, comma-separated)").fill("P0003")
    await page.locator('#light-map .pole-marker[data-pole="P0002"]').click()
    await page.locator('#light-map .pole-marker[data-pole="P0003"]').click()
    await expect(form.get_by_label("Poles (ids, comma-separated)")).to_have_value("P0002")
    await expect(page.locator("#light-map .pole-marker.in-group")).to_have_attribute(
        "data-pole", "P0002"
    )
    await form.get_by_label("Devices (ids, comma-separated)").fill("P0003-lamp")
    await form.get_by_label("Name").fill("Station square")
    await form.get_by_role("button", name="Save group").click()
    await expect(page.locator("#light-group option:checked")).to_have_text("Station square")
    group = await api_call(env, "GET", f"/api/v1/lighting/groups/{gid}")
    assert (group["name"], group["road"], group["poles"], group["devices"]) == (
        "Station square",
        None,
        ["P0002"],
        ["P0003-lamp"],
    )
    await expect(page.locator("#light-map .pole-marker.in-group")).to_have_count(2)

    # Deleting asks first, saying what goes with the group; declined, nothing goes.
    asked: list[str] = []

    page.once("dialog", answering(asked, accept=False))
    await page.get_by_role("button", name="Delete group").click()
    await until(asked_yet(asked), what="the confirmation")
    assert "Station square" in asked[0]
    for word in ("schedule", "overrides", "history"):
        assert word in asked[0], asked[0]
    await api_call(env, "GET", f"/api/v1/lighting/groups/{gid}")
    page.once("dialog", answering(asked, accept=True))
    await page.get_by_role("button", name="Delete group").click()
    await expect(page.locator(f'#light-group option[value="{gid}"]')).to_have_count(0)
    async with httpx.AsyncClient(base_url=env.api, headers=env.admin) as client:
        for path in ("", "/schedule", "/overrides"):
            r = await client.get(f"/api/v1/lighting/groups/{gid}{path}")
            assert r.status_code == 404, (path, r.text)
    no_errors(page)
    await ctx.close()


async def test_a_group_deleted_meanwhile_is_said_to_be_gone(env: Env) -> None:
    await api_call(
        env,
        "POST",
        "/api/v1/lighting/groups",
        json={"id": "gone", "name": "Gone", "poles": ["P0003"]},
    )
    ctx = await new_context(env, locale="zh-CN")
    page = await log_in(ctx, env.operator.name)
    await page.goto("/console/#/lighting?group=gone")
    # The confirmation is in the user's language.
    asked: list[str] = []
    page.once("dialog", answering(asked, accept=False))
    await page.get_by_role("button", name="删除分组").click()
    await until(asked_yet(asked), what="the confirmation")
    for word in ("日程", "临时调整", "下发记录"):
        assert word in asked[0], asked[0]
    await page.get_by_role("button", name="编辑分组").click()
    await api_call(env, "DELETE", "/api/v1/lighting/groups/gone")
    form = page.get_by_role("form", name="编辑分组")
    await form.get_by_label("名称").fill("Still here?")
    await form.get_by_role("button", name="保存分组").click()
    await expect(form.get_by_role("alert").filter(has_text="已不存在")).to_be_visible()
    # A name left out is said at its field before anything is sent.
    await form.get_by_label("名称").fill("")
    await form.get_by_role("button", name="保存分组").click()
    await expect(form.locator('[data-field="name"] .field-error')).to_have_text("请填写分组名称。")
    no_errors(page)
    await ctx.close()


# --------------------------------------------------------------------------- maps


async def test_a_site_map_drawn_twice_is_removed_without_an_error(env: Env) -> None:
    # The lighting page (and the overview, on live events) draw the map again;
    # leaving the page then must not leave a redraw behind for a removed canvas.
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator.name)
    errors = await page.evaluate(
        """async () => {
            const { SiteMap } = await import('/console/static/sitemap.js');
            const errors = [];
            window.addEventListener('error', (e) => errors.push(e.message));
            const el = document.createElement('div');
            el.style.height = '300px';
            document.body.append(el);
            const poles = [
                {id: 'A1', name: 'A1', road: 'R', lat: 30.65, lon: 104.06, devices_offline: 0},
                {id: 'A2', name: 'A2', road: 'R', lat: 30.66, lon: 104.06, devices_offline: 0},
            ];
            const map = new SiteMap(el, {});
            map.update(poles);
            await new Promise((r) => setTimeout(r, 120));
            map.update(poles);
            await new Promise((r) => setTimeout(r, 30));
            map.destroy();
            el.remove();
            await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
            await new Promise((r) => setTimeout(r, 100));
            return errors;
        }"""
    )
    assert errors == []
    no_errors(page)
    await ctx.close()


# --------------------------------------------------------------------------- roles


async def test_a_maintainer_sees_no_manager_controls(env: Env) -> None:
    await lighting_group(env)
    ctx = await new_context(env, phone=True)
    page = await log_in(ctx, env.maintainer.name)
    await page.goto("/console/#/work-orders")
    await expect(page.get_by_role("heading", name="My orders")).to_be_visible()
    await expect(page.get_by_role("button", name="New work order")).to_have_count(0)
    await page.goto("/console/#/emergencies")
    await expect(page.locator("#em-list")).to_be_visible()
    await expect(page.get_by_role("button", name="Open an emergency")).to_have_count(0)
    await page.goto("/console/#/lighting?group=renmin")
    await expect(page.locator("#light-profile li.night")).to_have_count(7)
    await expect(page.get_by_role("button", name="Set override")).to_have_count(0)
    await expect(page.get_by_role("button", name="New group")).to_have_count(0)
    await expect(page.get_by_role("button", name="Edit group")).to_have_count(0)
    await expect(page.get_by_role("button", name="Delete group")).to_have_count(0)
    # The API agrees: a maintainer may not override the lamps.
    await page.goto("/console/#/")
    status = await page.evaluate(
        """async () => {
            const csrf = document.cookie.match(/polegw_csrf=([^;]+)/)[1];
            const r = await fetch('/api/v1/lighting/groups/renmin/overrides', {
                method: 'POST', credentials: 'same-origin',
                headers: {
                    'Content-Type': 'application/json',
                    'X-CSRF-Token': decodeURIComponent(csrf),
                },
                body: JSON.stringify({
                    level: 10, until: new Date(Date.now() + 3600e3).toISOString(),
                }),
            });
            return r.status;
        }"""
    )
    assert status == 403
    # Nor edit or delete a group.
    statuses = await page.evaluate(
        """async () => {
            const csrf = decodeURIComponent(document.cookie.match(/polegw_csrf=([^;]+)/)[1]);
            const headers = {'Content-Type': 'application/json', 'X-CSRF-Token': csrf};
            const put = await fetch('/api/v1/lighting/groups/renmin', {
                method: 'PUT', credentials: 'same-origin', headers,
                body: JSON.stringify({name: 'mine', road: 'Renmin Rd'}),
            });
            const del = await fetch('/api/v1/lighting/groups/renmin', {
                method: 'DELETE', credentials: 'same-origin', headers,
            });
            return [put.status, del.status];
        }"""
    )
    assert statuses == [403, 403]
    assert (await api_call(env, "GET", "/api/v1/lighting/groups/renmin"))["name"] == "Renmin Rd"
    no_errors(page)
    await ctx.close()


# --------------------------------------------------------------------------- qualities


async def ops_pages(env: Env) -> list[str]:
    """The ops pages, with an object of each kind to show."""
    orders = await api_call(env, "GET", "/api/v1/work-orders", params={"limit": 1})
    await lighting_group(env)
    pages = ["#/work-orders", "#/inspections", "#/emergencies", "#/emergency-plans", "#/lighting"]
    if orders["items"]:
        pages.append(f"#/work-orders/{orders['items'][0]['id']}")
    emergencies = await api_call(env, "GET", "/api/v1/emergencies", params={"limit": 1})
    if emergencies["items"]:
        pages.append(f"#/emergencies/{emergencies['items'][0]['id']}")
    return pages


async def test_the_ops_pages_speak_both_languages_completely(env: Env) -> None:
    # Titles, notes and timeline texts (typed, or written by the gateway) are data,
    # shown as written.
    orders = await api_call(env, "GET", "/api/v1/work-orders", params={"limit": 1000})
    emergencies = await api_call(env, "GET", "/api/v1/emergencies", params={"limit": 1000})
    typed = [o["title"] for o in orders["items"] + emergencies["items"]]
    for o in orders["items"]:
        notes = await api_call(env, "GET", f"/api/v1/work-orders/{o['id']}/notes")
        typed += [n["text"] for n in notes["items"]]
    for e in emergencies["items"]:
        detail = await api_call(env, "GET", f"/api/v1/emergencies/{e['id']}")
        typed += [x["text"] for x in detail["timeline"]]
    ctx = await new_context(env, locale="zh-CN")
    page = await log_in(ctx, env.operator.name)
    await assert_both_languages(page, await ops_pages(env), data=typed)
    no_errors(page)
    await ctx.close()


async def test_the_ops_pages_fit_a_phone(env: Env) -> None:
    ctx = await new_context(env, phone=True)
    page = await log_in(ctx, env.operator.name)
    await assert_fits_a_phone(page, await ops_pages(env))
    no_errors(page)
    await ctx.close()
