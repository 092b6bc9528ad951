"""The console's operation archive (运行档案), takeover (接管) and administration
pages (issue 13) in a real browser against the real gateway, PostgreSQL and
Mosquitto. Each test says what a person does; selectors are by role, label and text.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Download,
    Page,
    ViewportSize,
    async_playwright,
    expect,
)

from gateway.core.site import DeviceSpec, ModbusEndpoint
from simulators.modbus_server import ModbusSimulator
from tests.support import TEST_PASSWORD, add_user, gateway, gateway_settings, prepare_database
from tests.test_console import (
    CATALOG,
    CHROMIUM,
    FLAGS,
    LAMP,
    assert_both_languages,
    assert_fits_a_phone,
    site,
)
from tests.test_tenant_isolation import seed

ADMIN_PAGES = (
    "#/archive",
    "#/archive?kind=devices",
    "#/archive/poles/P0001",
    f"#/archive/devices/{LAMP}",
    "#/admin/users",
    "#/admin/keys",
    "#/admin/audit",
    "#/admin/exports",
)


@dataclass
class Env:
    url: str  # database
    api: str  # the app's origin
    admin_headers: dict[str, str]  # bearer headers
    admin: str  # user names (password TEST_PASSWORD)
    operator: str
    browser: Browser


@pytest.fixture(scope="module")
async def env(database_url: str, mqtt_url: str) -> AsyncIterator[Env]:
    spec = DeviceSpec(
        id=LAMP,
        profile="lamp-controller",
        transport="modbus",
        modbus=ModbusEndpoint(host="127.0.0.1", port=1, unit=1),
    )
    prefix = f"console-admin-{os.getpid()}"
    async with ModbusSimulator([(spec, CATALOG["lamp-controller"])]) as lamp:
        await prepare_database(database_url, site(lamp.port))
        seed(database_url, "tn-a", "M1")
        admin = add_user(database_url, "admin").name
        operator = add_user(database_url, "operator").name
        settings = gateway_settings(database_url, mqtt_url, prefix, command_timeout_s=5.0)
        async with gateway(settings) as gw, async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                yield Env(database_url, gw.api, gw.headers, admin, operator, browser)
            finally:
                await browser.close()


async def new_context(env: Env, *, locale: str = "en", phone: bool = False) -> BrowserContext:
    size: ViewportSize = {"width": 390, "height": 844} if phone else {"width": 1440, "height": 900}
    return await env.browser.new_context(viewport=size, locale=locale, base_url=env.api)


async def log_in(
    ctx: BrowserContext, user: str, at: str = "#/archive", password: str = TEST_PASSWORD
) -> Page:
    """Log in through the form on the page `at` (the console keeps the address):
    these tests do not pass the overview, whose map is not theirs to test."""
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(f"/console/{at}")
    await page.get_by_label(re.compile("User name|用户名")).fill(user)
    await page.get_by_label(re.compile("Password|密码")).fill(password)
    await page.get_by_role("button", name=re.compile("Log in|登录")).click()
    await expect(page.locator(".login-form")).to_have_count(0)
    await expect(page.locator("#topbar")).to_be_visible()
    page.errors = errors  # type: ignore[attr-defined]
    return page


async def api(env: Env, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = kw.pop("headers", env.admin_headers)
    async with httpx.AsyncClient(base_url=env.api, headers=headers) as client:
        return await client.request(method, path, **kw)


async def api_json(env: Env, path: str) -> Any:
    r = await api(env, "GET", path)
    assert r.status_code == 200, r.text
    return r.json()


async def read(download: Download) -> str:
    return await asyncio.to_thread(Path(await download.path()).read_text, "utf-8")


def no_errors(page: Page) -> None:
    assert page.errors == []  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- users


async def create_user_in_browser(page: Page, name: str, role: str) -> None:
    await page.goto("/console/#/admin/users")
    form = page.locator("#user-create")
    await form.get_by_label("User name").fill(name)
    await form.get_by_label("Role").select_option(label=role)
    await form.get_by_label("Password").fill(TEST_PASSWORD)
    await form.get_by_role("button", name="Create the user").click()
    await expect(page.locator("#user-list")).to_contain_text(name)


async def test_an_admin_creates_a_user_who_can_then_log_in(env: Env) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.admin)
    await (
        page.get_by_role("navigation", name="main")
        .get_by_role("link", name="Administration")
        .click()
    )
    await expect(page.get_by_role("heading", name="Users and roles")).to_be_visible()
    form = page.locator("#user-create")
    # A password too short is refused by the API and the reason shows at the field.
    await form.get_by_label("User name").fill("wang.fang")
    await form.get_by_label("Role").select_option(label="maintainer")
    await form.get_by_label("Password").fill("short")
    await form.get_by_role("button", name="Create the user").click()
    password = form.get_by_label("Password")
    await expect(password).to_have_attribute("aria-invalid", "true")
    await expect(form.locator("[data-field=password] .field-error")).to_contain_text("10")
    await expect(form.locator("[data-field=name] .field-error")).to_be_empty()
    # A tenant user needs a tenant: the field appears with the role.
    await expect(form.get_by_label("Tenant")).to_be_hidden()
    await form.get_by_label("Role").select_option(label="tenant")
    await expect(form.get_by_label("Tenant")).to_be_visible()
    await form.get_by_label("User name").fill("a.telecom.ops")
    await form.get_by_label("Password").fill(TEST_PASSWORD)
    await form.get_by_role("button", name="Create the user").click()
    # Without a tenant it is not sent; the field says why.
    await expect(form.locator("[data-field=tenant_id] .field-error")).to_have_text(
        "A tenant user belongs to a tenant: choose it."
    )
    await form.get_by_label("Tenant").select_option(value="tn-a")
    await form.get_by_role("button", name="Create the user").click()
    await expect(page.locator("#user-list tr", has_text="a.telecom.ops")).to_contain_text("tn-a")
    await form.get_by_label("User name").fill("wang.fang")
    await form.get_by_label("Role").select_option(label="maintainer")
    await password.fill(TEST_PASSWORD)
    await form.get_by_role("button", name="Create the user").click()
    row = page.locator("#user-list tr", has_text="wang.fang")
    await expect(row).to_contain_text("maintainer")
    await expect(row).to_contain_text("Active")
    no_errors(page)

    # The new user logs in with the password the admin gave.
    other = await new_context(env)
    theirs = await log_in(other, "wang.fang")
    await expect(theirs.locator("#who")).to_contain_text("wang.fang · maintainer")
    await other.close()

    # Disabled, they can no longer log in; enabled again, they can.
    await row.get_by_role("button", name="Disable wang.fang").click()
    await expect(row).to_contain_text("Disabled")
    r = await api(
        env,
        "POST",
        "/api/v1/auth/token",
        headers={},
        data={"username": "wang.fang", "password": TEST_PASSWORD},
    )
    assert r.status_code == 401
    await row.get_by_role("button", name="Enable wang.fang").click()
    await expect(row).to_contain_text("Active")
    r = await api(
        env,
        "POST",
        "/api/v1/auth/token",
        headers={},
        data={"username": "wang.fang", "password": TEST_PASSWORD},
    )
    assert r.status_code == 200, r.text
    await ctx.close()


async def test_the_audit_log_shows_a_user_creation_with_its_after_state(env: Env) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.admin)
    await create_user_in_browser(page, "zhao.lei", "operator")
    await page.get_by_role("link", name="Audit log").click()
    await page.get_by_label("Kind of record").fill("user")
    await page.get_by_label("Action").fill("create")
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page).to_have_url(re.compile(r"resource=user&action=create"))
    entry = page.locator(".audit-entry", has_text="zhao.lei").first
    # Only creations of users are listed.
    summaries = await page.locator(".audit-entry summary").all_inner_texts()
    assert summaries
    assert all(" · created · user " in s for s in summaries), summaries
    await expect(entry.locator("summary")).to_contain_text(env.admin)
    await entry.locator("summary").click()
    diff = entry.get_by_role("table")
    await expect(diff.locator("tr[data-field=name] td.diff-new")).to_have_text("zhao.lei")
    await expect(diff.locator("tr[data-field=role] td.diff-new")).to_have_text("operator")
    await expect(diff.locator("tr[data-field=disabled] td.diff-new")).to_have_text("No")
    await expect(diff.locator("tr[data-field=name] td.diff-old")).to_have_text("—")
    # A user's change shows only what changed, before and after.
    users = await api_json(env, "/api/v1/users?limit=1000")
    uid = next(u["id"] for u in users["items"] if u["name"] == "zhao.lei")
    r = await api(env, "PATCH", f"/api/v1/users/{uid}", json={"disabled": True})
    assert r.status_code == 200, r.text
    await page.goto(f"/console/#/admin/audit?resource=user&resource_id={uid}&action=update")
    change = page.locator(".audit-entry").first
    await change.locator("summary").click()
    await expect(change.locator("tbody tr")).to_have_count(1)
    await expect(change.locator("tr[data-field=disabled] td.diff-old")).to_have_text("No")
    await expect(change.locator("tr[data-field=disabled] td.diff-new")).to_have_text("Yes")
    no_errors(page)
    await ctx.close()


async def test_the_audit_log_filters_by_action(env: Env) -> None:
    await api(env, "POST", "/api/v1/api-keys", json={"name": "for the filter"})
    creations = await api_json(env, "/api/v1/audit?action=create&limit=1000")
    assert creations["items"]
    assert {e["action"] for e in creations["items"]} == {"create"}
    everything = await api_json(env, "/api/v1/audit?limit=1000")
    assert len(everything["items"]) >= len(creations["items"])
    r = await api(env, "GET", "/api/v1/audit", params={"action": "x" * 65})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "action"]


# --------------------------------------------------------------------------- API keys


async def test_an_admin_creates_an_api_key_sees_it_once_uses_it_and_revokes_it(
    env: Env,
) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.admin)
    await page.goto("/console/#/admin/keys")
    form = page.locator("#key-create")
    await form.get_by_label("What it is for").fill("SCADA nightly pull")
    await form.get_by_role("button", name="Create the key").click()
    shown = page.locator("#new-key")
    await expect(shown).to_contain_text("only time")
    key = await shown.get_by_label(re.compile("The key")).input_value()
    assert len(key) > 20
    await shown.get_by_role("button", name="Copy").click()
    await expect(shown.get_by_role("status")).to_have_text(re.compile("Copied|Could not copy"))
    # The key works against the API as X-API-Key.
    r = await api(env, "GET", "/api/v1/auth/me", headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == env.admin
    # Shown once: after leaving the page it is nowhere on it.
    await page.reload()
    row = page.locator("#key-list tr", has_text="SCADA nightly pull")
    await expect(row).to_contain_text("Active")
    assert key not in await page.content()
    # Revoked, it stops working.
    page.once("dialog", lambda d: d.accept())
    await row.get_by_role("button", name="Revoke the key SCADA nightly pull").click()
    await expect(row).to_contain_text("Revoked")
    r = await api(env, "GET", "/api/v1/auth/me", headers={"X-API-Key": key})
    assert r.status_code == 401
    no_errors(page)
    await ctx.close()


# --------------------------------------------------------------------------- archive


async def test_an_operator_edits_a_poles_record_and_its_history_shows_who_and_when(
    env: Env,
) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator)
    await page.goto("/console/#/poles/P0002")
    await page.get_by_role("link", name="Operation archive and change history").click()
    await expect(
        page.get_by_role("heading", name=re.compile("Operation archive P0002"))
    ).to_be_visible()
    await page.get_by_role("button", name="Edit the record").click()
    form = page.locator("#archive-edit")
    await form.get_by_label("Serial number").fill("SP2026-000777")
    await form.get_by_label("Vendor").fill("Sichuan Smart Pole Co.")
    await form.get_by_label("Installed on").fill("2026-05-20")
    # A warranty ending before the installation is refused, at its field.
    await form.get_by_label("Warranty until").fill("2026-01-01")
    await form.get_by_role("button", name="Save").click()
    warranty = form.get_by_label("Warranty until")
    await expect(warranty).to_have_attribute("aria-invalid", "true")
    await expect(form.locator("[data-field=warranty_until] .field-error")).to_contain_text(
        "installed_on"
    )
    await warranty.fill("2029-06-01")
    await form.get_by_role("button", name="Save").click()
    await expect(page.locator("#archive-record")).to_contain_text("SP2026-000777")
    entry = page.locator("#archive-history .history-entry").first
    await expect(entry.locator(".history-who")).to_have_text(env.operator)
    await expect(entry.locator("tr[data-field=serial] td.diff-new")).to_have_text("SP2026-000777")
    await expect(entry.locator("tr[data-field=warranty_until] td.diff-new")).to_have_text(
        "2029-06-01"
    )
    when = await entry.locator("time").get_attribute("datetime")
    assert when is not None
    assert abs(datetime.fromisoformat(when) - datetime.now(UTC)) < timedelta(minutes=2)
    history = await api_json(env, "/api/v1/archive/poles/P0002/history")
    assert history["items"][0]["changed_by"] == env.operator
    assert history["items"][0]["changes"]["serial"][1] == "SP2026-000777"
    # The archive list finds the pole by its new serial number.
    await page.goto("/console/#/archive")
    await page.get_by_label(re.compile("Search")).fill("000777")
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page.locator("#archive-list tbody tr")).to_have_count(1)
    await expect(page.locator("#archive-list")).to_contain_text("P0002")
    no_errors(page)
    await ctx.close()


async def test_a_takeover_from_the_page_sets_the_poles_taken_over_date(env: Env) -> None:
    r = await api(
        env,
        "POST",
        "/api/v1/poles",
        json={"id": "P0099", "name": "Renmin Rd 99", "road": "Renmin Rd", "status": "planned"},
    )
    assert r.status_code == 201, r.text
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator)
    await page.goto("/console/#/archive?taken=no")
    await expect(page.locator("#archive-list")).to_contain_text("P0099")
    await page.get_by_role("link", name="P0099").click()
    box = page.locator("#takeover")
    await expect(box.locator("#takeover-state")).to_contain_text("not been taken over")
    await box.get_by_label("Taken over from").fill("Chengdu Municipal Construction")
    await box.get_by_label("Takeover date").fill("2026-11-30")
    # Not every item of the checklist ticked: nothing is sent.
    await box.get_by_label(re.compile("Pole body")).check()
    await box.get_by_role("button", name="Take over").click()
    await expect(box.locator("#to-checks-error")).to_contain_text("Tick every item")
    assert (await api_json(env, "/api/v1/poles/P0099"))["taken_over_on"] is None
    for item in ("Cabinet", "Mounted devices", "As-built"):
        await box.get_by_label(re.compile(item)).check()
    await box.get_by_role("button", name="Take over").click()
    await expect(box.locator("#takeover-state")).to_contain_text("Taken over on 2026-11-30")
    # The keyboard's and screen reader's focus is on the result.
    await expect(box.locator("#takeover-state")).to_be_focused()
    pole = await api_json(env, "/api/v1/poles/P0099")
    assert pole["taken_over_on"] == "2026-11-30"
    assert pole["taken_over_from"] == "Chengdu Municipal Construction"
    assert pole["status"] == "in_service"
    assert "As-built drawings" in pole["notes"]
    await expect(page.locator("#archive-history .history-entry").first).to_contain_text(
        env.operator
    )
    no_errors(page)
    await ctx.close()


async def test_an_operator_replaces_a_devices_unit_and_retires_another(env: Env) -> None:
    r = await api(env, "PATCH", "/api/v1/devices/P0002-lamp/archive", json={"serial": "OLD-1"})
    assert r.status_code == 200, r.text
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator)
    await page.goto("/console/#/archive/poles/P0002")
    await page.locator("#archive-devices").get_by_role("link", name="P0002-lamp").click()
    form = page.locator("#replace-form")
    await form.get_by_label("New unit's serial number").fill("NEW-2")
    await form.get_by_label("Reason").fill("driver burnt out")
    await form.get_by_role("button", name="Record the replacement").click()
    await expect(page.locator("#archive-record")).to_contain_text("NEW-2")
    entry = page.locator("#archive-history .history-entry").first
    await expect(entry.locator("tr[data-field=serial] td.diff-old")).to_have_text("OLD-1")
    await expect(entry.locator("tr[data-field=serial] td.diff-new")).to_have_text("NEW-2")
    device = await api_json(env, "/api/v1/devices/P0002-lamp")
    assert device["serial"] == "NEW-2"
    assert device["status"] == "in_service"
    assert "OLD-1 → NEW-2" in device["notes"]

    # The devices' archive lists it with its new serial; the other is found by its pole.
    await page.goto("/console/#/archive")
    await page.get_by_label("Show").select_option(label="Devices")
    await page.get_by_role("button", name="Apply filters").click()
    await page.get_by_label(re.compile("Search")).fill("new-2")
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page.locator("#archive-list tbody tr")).to_have_count(1)
    await expect(page.locator("#archive-list tbody")).to_contain_text("P0002-lamp")
    await page.get_by_label(re.compile("Search")).fill("P0003")
    await page.get_by_role("button", name="Apply filters").click()
    await page.locator("#archive-list").get_by_role("link", name="P0003-env").click()
    page.once("dialog", lambda d: d.accept())
    retire = page.locator("#retire-form")
    await retire.get_by_label("Reason").fill("station moved to another pole")
    await retire.get_by_role("button", name="Retire").click()
    await expect(page.locator("#retired-state")).to_contain_text("Retired")
    assert (await api_json(env, "/api/v1/devices/P0003-env"))["status"] == "retired"
    no_errors(page)
    await ctx.close()


# --------------------------------------------------------------------------- exports


async def test_an_export_downloads_a_csv_with_the_browser_session_only(env: Env) -> None:
    at = datetime.now(UTC) - timedelta(minutes=30)
    with psycopg.connect(env.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO telemetry (ts, device_id, metric, value) VALUES (%s, %s, %s, %s)",
            (at, "P0002-lamp", "voltage_v", 228.5),
        )
    ctx = await new_context(env)
    page = await log_in(ctx, env.admin)
    await page.goto("/console/#/admin/exports")
    form = page.locator("#export-form")
    await form.get_by_label("Device").fill("P0002-lamp")
    # An end before the start: no download is offered, the reason is at the field.
    end = form.get_by_label("To", exact=True)
    await end.fill("2020-01-01T00:00")
    await expect(end).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#export-link")).not_to_have_attribute("href", re.compile("."))
    await form.get_by_role("button", name="Last day").click()
    link = page.locator("#export-link")
    await expect(link).to_have_attribute("href", re.compile(r"device=P0002-lamp"))
    async with page.expect_download() as info:
        await link.click()
    download = await info.value
    assert re.match(r"telemetry_\d{8}T\d{6}Z_\d{8}T\d{6}Z\.csv", download.suggested_filename)
    text = await read(download)
    lines = text.splitlines()
    assert lines[0] == "ts,device_id,metric,value,quality"
    assert any(",P0002-lamp,voltage_v,228.5," in line for line in lines), lines[:5]
    # Alarms: every column of the table, for the chosen range.
    await form.get_by_label("What").select_option(label="Alarms")
    await expect(form.get_by_label("Device")).to_be_hidden()
    async with page.expect_download() as info:
        await link.click()
    alarms = await read(await info.value)
    assert alarms.splitlines()[0].startswith("id,")
    no_errors(page)
    await ctx.close()


# --------------------------------------------------------------------------- access


async def test_a_non_admin_sees_no_administration_page_and_the_api_refuses(env: Env) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator)
    nav = page.get_by_role("navigation", name="main")
    await expect(nav.get_by_role("link", name="Archive")).to_be_visible()
    await expect(nav.get_by_role("link", name="Administration")).to_have_count(0)
    for path in ("#/admin/users", "#/admin/keys", "#/admin/audit", "#/admin/exports"):
        await page.goto(f"/console/{path}")
        await expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    for path in ("/api/v1/users", "/api/v1/audit"):
        assert (await ctx.request.get(path)).status == 403, path
    # With the session the API refuses writes too (the CSRF token is the page's).
    csrf = next(c["value"] for c in await ctx.cookies() if c["name"] == "polegw_csrf")
    r = await ctx.request.post(
        "/api/v1/users",
        data={"name": "intruder", "role": "admin", "password": "x" * 12},
        headers={"X-CSRF-Token": csrf},
    )
    assert r.status == 403
    # An operator may read the archive but a maintainer may not edit it.
    maint = add_user(env.url, "maintainer").name
    other = await new_context(env)
    mpage = await log_in(other, maint)
    await mpage.goto("/console/#/archive/poles/P0001")
    await expect(mpage.locator("#archive-record")).to_be_visible()
    await expect(mpage.get_by_role("button", name="Edit the record")).to_have_count(0)
    await other.close()
    await ctx.close()


# --------------------------------------------------------------------------- qualities


async def test_the_language_switch_changes_every_label_of_the_admin_pages(env: Env) -> None:
    ctx = await new_context(env, locale="zh-CN")
    page = await log_in(ctx, env.admin)
    await assert_both_languages(page, ADMIN_PAGES)
    await ctx.close()


async def test_the_admin_pages_have_no_horizontal_scrolling_on_a_phone(env: Env) -> None:
    ctx = await new_context(env, phone=True)
    page = await log_in(ctx, env.admin)
    await assert_fits_a_phone(page, ADMIN_PAGES)
    await ctx.close()


async def test_the_console_config_names_the_telemetry_export_limit(env: Env) -> None:
    r = await api(env, "GET", "/console/config.json")
    assert r.json()["export_max_range_d"] == 31
