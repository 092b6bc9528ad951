"""The web console in a real browser (issue 15): headless Chromium from Debian's
package, driven by Playwright, against the real gateway (API, ingest, commands,
live events) on real PostgreSQL and Mosquitto.

Each test says what a person does; selectors are by role, label and text.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    ViewportSize,
    async_playwright,
    expect,
)

from gateway.core.profiles import load_catalog
from gateway.core.site import DeviceSpec, Location, ModbusEndpoint, PoleSpec, SiteSpec
from simulators.modbus_server import ModbusSimulator
from tests.support import (
    TEST_PASSWORD,
    add_user,
    gateway,
    gateway_settings,
    prepare_database,
    publish,
)
from tests.test_tenant_isolation import SITE as TENANT_SITE
from tests.test_tenant_isolation import Tenant, seed

CHROMIUM = os.environ.get("POLEGW_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
STATIC = Path(__file__).parents[1] / "gateway" / "console" / "static"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

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
        tenants=TENANT_SITE.tenants,
        poles=[
            pole(
                "P0001",
                "Renmin Rd",
                30.6500,
                104.0660,
                DeviceSpec(id=LAMP, profile="lamp-controller", transport="modbus", modbus=endpoint),
                DeviceSpec(id="P0001-tilt", profile="pole-tilt"),
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
                DeviceSpec(id="P0003-env", profile="env-station"),
            ),
            *TENANT_SITE.poles,
        ],
    )


@dataclass
class Env:
    url: str  # database
    mqtt_url: str
    prefix: str
    api: str  # the app's origin
    admin: dict[str, str]  # bearer headers
    operator: str  # user name (password TEST_PASSWORD)
    a: Tenant
    b: Tenant
    tenant_a_user: str
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
    prefix = f"console-{os.getpid()}"
    async with ModbusSimulator([(spec, CATALOG["lamp-controller"])]) as lamp:
        await prepare_database(database_url, site(lamp.port))
        a = seed(database_url, "tn-a", "M1")
        b = seed(database_url, "tn-b", "M2")
        operator = add_user(database_url, "operator").name
        tenant_a_user = add_user(database_url, "tenant", tenant="tn-a").name
        settings = gateway_settings(database_url, mqtt_url, prefix, command_timeout_s=5.0)
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
                    a,
                    b,
                    tenant_a_user,
                    lamp,
                    browser,
                )
            finally:
                await browser.close()


async def new_context(env: Env, *, locale: str = "en", phone: bool = False) -> BrowserContext:
    size: ViewportSize = {"width": 390, "height": 844} if phone else {"width": 1440, "height": 900}
    return await env.browser.new_context(viewport=size, locale=locale, base_url=env.api)


async def log_in(ctx: BrowserContext, user: str, password: str = TEST_PASSWORD) -> Page:
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto("/")
    await page.get_by_label(re.compile("User name|用户名")).fill(user)
    await page.get_by_label(re.compile("Password|密码")).fill(password)
    await page.get_by_role("button", name=re.compile("Log in|登录")).click()
    await expect(page.locator(".login-form")).to_have_count(0)
    await expect(page.locator("#topbar")).to_be_visible()
    page.errors = errors  # type: ignore[attr-defined]
    return page


async def api_get(env: Env, path: str) -> Any:
    async with httpx.AsyncClient(base_url=env.api, headers=env.admin) as client:
        r = await client.get(path)
        r.raise_for_status()
        return r.json()


# --------------------------------------------------------------------------- operator


async def test_operator_sees_the_overview_with_the_sites_poles(env: Env) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator)
    expected = await api_get(env, "/api/v1/overview")
    numbers = page.locator("#overview-numbers")
    await expect(numbers.locator("[data-figure=poles] .card-value")).to_have_text(
        str(expected["poles"])
    )
    devices = expected["devices"]
    await expect(numbers.locator("[data-figure=devices] .card-value")).to_have_text(
        re.compile(rf"\d+ / {devices['total']}")
    )
    await expect(numbers.locator("[data-figure=lamps] .card-value")).to_have_text(
        f"{expected['lamps']['lit']} / {expected['lamps']['total']}"
    )
    # Every pole with coordinates is on the map, named for a screen reader.
    with_coords = [p for p in (await api_get(env, "/api/v1/overview/poles"))["poles"] if p["lat"]]
    await expect(page.locator("#overview-map .pole-marker")).to_have_count(len(with_coords))
    await expect(page.locator("#overview-map .pole-marker[title^='P0003 ']")).to_have_count(1)
    # A click on a pole opens it.
    await page.locator("#overview-map .pole-marker[title^='P0002 ']").click()
    await expect(page.get_by_role("heading", name=re.compile("Pole P0002"))).to_be_visible()
    assert page.errors == []  # type: ignore[attr-defined]
    await ctx.close()


async def marker_centre(page: Page, pole: str) -> tuple[float, float]:
    box = await page.locator(f"#overview-map .pole-marker[data-pole='{pole}']").bounding_box()
    assert box is not None
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


async def test_the_map_follows_the_zoom_and_a_keyboard_opens_a_pole(env: Env) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator)
    states = "All well|Alarm|Critical alarm|Device offline|Not in service"
    marker = page.get_by_role(
        "button", name=re.compile(rf"^P0003 Tianfu Ave 3 · Tianfu Ave · ({states})$")
    )
    await expect(marker).to_have_count(1)
    # The markers are placed again when the zoom ends: one step in doubles the
    # distance between two poles on the screen.
    (x1, y1), (x3, y3) = await marker_centre(page, "P0001"), await marker_centre(page, "P0003")
    before = ((x3 - x1) ** 2 + (y3 - y1) ** 2) ** 0.5
    await page.locator("#overview-map").get_by_role("button", name="Zoom in").click()
    after = before
    for _ in range(50):
        await asyncio.sleep(0.1)
        (x1, y1), (x3, y3) = await marker_centre(page, "P0001"), await marker_centre(page, "P0003")
        after = ((x3 - x1) ** 2 + (y3 - y1) ** 2) ** 0.5
        if abs(after / before - 2) < 0.05:
            break
    assert after / before == pytest.approx(2, rel=0.05)
    # Tab to a pole and press Enter: its page opens.
    await marker.focus()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name=re.compile("Pole P0003"))).to_be_visible()
    assert page.errors == []  # type: ignore[attr-defined]
    await ctx.close()


async def test_an_alarm_appears_live_and_is_acknowledged_in_the_browser(env: Env) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator)
    await expect(page.locator("#overview-alarms")).to_contain_text("No alarm")
    navigations = await page.evaluate("performance.getEntriesByType('navigation').length")
    # The map's elements are kept across live refreshes, not made again.
    road_label = await page.locator("#overview-map .road-label").first.element_handle()
    marker = await page.locator("#overview-map .pole-marker[data-pole='P0001']").element_handle()
    # The pole leans 20° for 12 s of reading time: the critical tilt rule (10 s) fires.
    now = datetime.now(UTC)
    messages = [
        (
            f"{env.prefix}/P0001/devices/P0001-tilt/telemetry",
            orjson.dumps(
                {"ts": (now - timedelta(seconds=s)).isoformat(), "values": {"tilt_deg": 20.0}}
            ),
        )
        for s in (12, 6, 0)
    ]
    await asyncio.to_thread(publish, env.mqtt_url, messages)
    alarm_id = await committed_alarm(env.url, "P0001-tilt")
    committed_at = asyncio.get_running_loop().time()
    item = page.locator(f"#overview-alarms [data-alarm='{alarm_id}']")
    await expect(item).to_be_visible(timeout=5000)
    assert asyncio.get_running_loop().time() - committed_at < 5.5
    await expect(item).to_contain_text("Pole tilt")
    await expect(item).to_contain_text("Critical")
    # No reload: the same document is still there.
    assert await page.evaluate("performance.getEntriesByType('navigation').length") == navigations
    await expect(page.locator("#overview-map .pole-marker.state-critical")).to_have_count(1)
    assert await marker.evaluate("e => e.isConnected && e.classList.contains('state-critical')")
    assert await marker.get_attribute("title") == "P0001 Renmin Rd 1 · Renmin Rd · Critical alarm"
    await asyncio.sleep(0.5)  # Leaflet removes a closed label after a 200 ms fade
    assert await road_label.evaluate("e => e.isConnected")

    # The operator opens the alarm, reads it on a chart and acknowledges it with a note.
    await item.get_by_role("link", name="Pole tilt").click()
    detail = page.locator("#alarm-detail")
    await expect(detail.get_by_role("heading")).to_contain_text("Pole tilt")
    await expect(detail.locator("canvas")).to_be_visible()
    await detail.get_by_label("Note").fill("checked on site: struck by a truck")
    await detail.get_by_role("button", name="Acknowledge").click()
    await expect(detail.locator("#alarm-state")).to_have_text("Acknowledged")
    alarm = await api_get(env, f"/api/v1/alarms/{alarm_id}")
    assert alarm["state"] == "acknowledged"
    assert alarm["acknowledged_by"] == env.operator
    assert alarm["ack_note"] == "checked on site: struck by a truck"
    await ctx.close()


async def committed_alarm(url: str, device: str) -> int:
    for _ in range(150):
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT id FROM alarms WHERE device_id = %s ORDER BY id DESC LIMIT 1", (device,)
            ).fetchone()
        if row:
            return int(row[0])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no alarm for {device}")


async def test_the_operator_dims_a_lamp_from_the_pole_page(env: Env) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator)
    await page.goto("/console/#/poles/P0001")
    card = page.locator(f"article[data-device='{LAMP}']")
    await expect(card.get_by_text("Online")).to_be_visible(timeout=10000)
    form = card.locator("form[data-command=set_dim]")
    await form.get_by_label("Level (%)").fill("35")
    await form.get_by_role("button", name="Dim to").click()
    state = form.get_by_role("status")
    await expect(state).to_have_text(re.compile("Succeeded"), timeout=15000)
    assert env.lamp.values(LAMP)["dim_pct"] == 35
    # The card shows the new level once the next poll has stored it.
    await expect(card.locator("tr[data-metric=dim_pct] td").first).to_have_text(
        re.compile(r"^35\b"), timeout=10000
    )
    await ctx.close()


async def test_a_month_of_minute_readings_is_charted_from_buckets(env: Env) -> None:
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    minutes = 30 * 24 * 60
    copy_sql = "COPY telemetry (ts, device_id, metric, value) FROM STDIN"
    with (
        psycopg.connect(env.url) as conn,
        conn.cursor() as cur,
        cur.copy(copy_sql) as copy,
    ):
        for i in range(minutes):
            ts = end - timedelta(minutes=minutes - i)
            volts = 225 + 5 * ((i % 1440) / 1440)
            copy.write_row((ts, "P0002-lamp", "voltage_v", volts))
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/telemetry" in r.url else None)
    await page.goto("/console/#/devices/P0002-lamp?range=30d&metrics=voltage_v")
    box = page.locator("#device-charts .chart-box")
    await expect(box).to_have_attribute("data-bucket", re.compile(r"^\d+[smhd]$"), timeout=15000)
    assert requests, "the chart asked for no data"
    assert all("bucket=" in u for u in requests), requests
    await expect(page.locator("#device-charts")).to_contain_text("Averages per")
    await ctx.close()


# --------------------------------------------------------------------------- tenant


async def test_a_tenant_sees_no_operator_page_and_no_other_tenants_data(env: Env) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.tenant_a_user)
    nav = page.get_by_role("navigation", name="main")
    await expect(nav.get_by_role("link")).to_have_text(
        ["Leases", "Apply for a slot", "Applications", "Usage", "Bills"]
    )
    await expect(page.locator("#lease-list tbody tr")).to_have_count(1)
    await expect(page.locator("#lease-list")).to_contain_text("M1")
    await expect(page.locator("#lease-list")).not_to_contain_text("M2")
    await page.goto("/console/#/bills")
    await expect(page.locator("#bill-list tbody tr")).to_have_count(1)
    # The invoice opens in a tab with only the browser session.
    invoice = await ctx.request.get(f"/api/v1/bills/{env.a.bill}/invoice.html")
    assert invoice.status == 200
    assert "text/html" in invoice.headers["content-type"]
    # Another tenant's bill and every operator page do not exist for this user.
    assert (await ctx.request.get(f"/api/v1/bills/{env.b.bill}/invoice.html")).status == 404
    assert (await ctx.request.get("/api/v1/overview")).status == 403
    for path in ("#/", "#/map", "#/alarms", "#/poles/M1", f"#/devices/{LAMP}"):
        await page.goto(f"/console/{path}")
        await expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    await ctx.close()


async def test_logging_out_ends_the_session(env: Env) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator)
    assert (await ctx.request.get("/api/v1/auth/me")).status == 200
    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert (await ctx.request.get("/api/v1/auth/me")).status == 401
    await ctx.close()


async def test_a_disabled_user_is_sent_back_to_the_login_page(env: Env) -> None:
    user = add_user(env.url, "maintainer")
    ctx = await new_context(env)
    page = await log_in(ctx, user.name)
    async with httpx.AsyncClient(base_url=env.api, headers=env.admin) as client:
        r = await client.patch(f"/api/v1/users/{user.user_id}", json={"disabled": True})
        assert r.status_code == 200, r.text
    await page.goto("/console/#/alarms")
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await ctx.close()


# --------------------------------------------------------------------------- qualities

PAGES = ("#/", "#/map", "#/alarms?state=", "#/poles/P0001", f"#/devices/{LAMP}")


def areas() -> list[str]:
    """The areas i18n.js loads (AREAS = [...])."""
    found = re.search(r"AREAS = \[([^\]]*)\]", (STATIC / "i18n.js").read_text("utf-8"))
    assert found, "i18n.js lists no AREAS"
    return re.findall(r'"([\w-]+)"', found[1])


def catalogue(lang: str) -> dict[str, str]:
    merged: dict[str, str] = {}
    for area in areas():
        part: dict[str, str] = json.loads(
            (STATIC / "i18n" / f"{area}.{lang}.json").read_text("utf-8")
        )
        assert not set(part) & set(merged), f"{area}.{lang}: keys of another area"
        merged |= part
    return merged


def test_the_catalogues_have_the_same_keys_and_cover_the_code() -> None:
    files = {p.name for p in (STATIC / "i18n").glob("*.json")}
    assert files == {f"{a}.{lang}.json" for a in areas() for lang in ("en", "zh-CN")}
    en, zh = catalogue("en"), catalogue("zh-CN")
    assert set(en) == set(zh)
    assert [k for k, v in zh.items() if not v.strip()] == []
    code = "\n".join(p.read_text("utf-8") for p in STATIC.rglob("*.js"))
    used = set(re.findall(r"\bt\(\s*\"([a-z_]+\.[\w.-]+)\"", code))
    assert used, "no t() call found: the pattern no longer matches the code"
    assert sorted(used - set(en)) == []


async def visible_text(page: Page) -> str:
    text: str = await page.evaluate(
        "['nav', 'who', 'logout', 'live', 'main']"
        ".map((id) => document.getElementById(id).innerText).join('\\n')"
    )
    return text


def english_words() -> set[str]:
    """English catalogue texts that would betray an untranslated label on a Chinese
    page: three letters or more, unless the Chinese catalogue uses them itself (a
    format's name: "明细 CSV")."""
    en, zh = catalogue("en"), catalogue("zh-CN")
    return {
        v
        for v in en.values()
        if re.search(r"[A-Za-z]{3}", v) and not any(v in z for z in zh.values())
    }


async def settled(page: Page, path: str) -> str:
    """Open `path` (a console route) and return its visible text once it has loaded."""
    await page.goto(f"/console/{path}")
    await page.wait_for_load_state("networkidle")
    await page.wait_for_timeout(300)
    return await visible_text(page)


async def assert_both_languages(
    page: Page, paths: Iterable[str], *, data: Iterable[str] = ()
) -> None:
    """Every page of `paths`, shown in Chinese then in English (the switch in the top
    bar), keeps no English label in Chinese and no Chinese in English, and asks the
    catalogues for no key they lack. `data` (titles people typed) is shown as written."""
    english = english_words()
    written = list(data)
    await page.evaluate("window.__polegwMissing = new Set()")
    for path in paths:
        text = await settled(page, path)
        for d in written:
            text = text.replace(d, "")
        leftovers = sorted(
            w for w in english if re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text)
        )
        assert leftovers == [], f"{path}: English on the Chinese page: {leftovers}"
        await page.get_by_label("语言").select_option("en")
        await expect(page.get_by_role("button", name="Log out")).to_be_attached()
        await page.wait_for_load_state("networkidle")
        await page.wait_for_timeout(300)
        text = await visible_text(page)
        assert re.findall(r"[\u4e00-\u9fff]+", text) == [], f"{path}: Chinese on the English page"
        await page.get_by_label("Language").select_option("zh-CN")
        await expect(page.get_by_role("button", name="退出登录")).to_be_attached()
    assert await page.evaluate("[...window.__polegwMissing]") == []


async def assert_fits_a_phone(page: Page, paths: Iterable[str]) -> None:
    """No page of `paths` scrolls sideways at the viewport's width (390 px)."""
    for path in paths:
        await settled(page, path)
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px"


async def test_the_language_switch_changes_every_visible_label(env: Env) -> None:
    ctx = await new_context(env, locale="zh-CN")
    page = await log_in(ctx, env.operator)
    await assert_both_languages(page, PAGES)
    # The choice is kept, even by a reload at once.
    await page.get_by_label("语言").select_option("en")
    await page.reload()
    await expect(page.get_by_role("button", name="Log out")).to_be_visible(timeout=15000)
    await ctx.close()


async def test_the_pages_have_no_horizontal_scrolling_on_a_phone(env: Env) -> None:
    ctx = await new_context(env, phone=True)
    page = await log_in(ctx, env.operator)
    await assert_fits_a_phone(page, PAGES)
    await ctx.close()


async def test_the_api_docs_render_with_only_the_apps_own_origin(env: Env) -> None:
    ctx = await new_context(env)
    blocked: list[str] = []

    async def only_ours(route: Any) -> None:
        if route.request.url.startswith(env.api):
            await route.continue_()
        else:
            blocked.append(route.request.url)
            await route.abort()

    await ctx.route("**/*", only_ours)
    page = await ctx.new_page()
    await page.goto("/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("polegw")
    await expect(page.locator(".opblock").first).to_be_visible()
    await page.goto("/redoc")
    await expect(page.locator("h1").first).to_contain_text("polegw", timeout=30000)
    assert blocked == []
    await ctx.close()
