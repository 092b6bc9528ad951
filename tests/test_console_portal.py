"""The tenant portal in a real browser (issue 13): a tenant applies for a slot from
the map, answers and withdraws applications, reads its leases, usage and bills,
opens the invoice in both languages, and reaches nothing of another tenant's.

The real gateway, PostgreSQL and Mosquitto, through tests/test_console.py's `env`
(tenants tn-a on pole M1 and tn-b on M2, each with a lease in service, a returned
application, readings and a bill). Selectors are by role, label and text.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from playwright.async_api import BrowserContext, Page, Response, expect

from tests.test_console import (
    Env,
    api_get,
    assert_both_languages,
    assert_fits_a_phone,
    env,
    log_in,
    new_context,
)

SITE_TZ = ZoneInfo("Asia/Shanghai")
__all__ = ["env"]  # the module-scoped fixture, shared with tests/test_console.py's setup


@pytest.fixture(scope="module", autouse=True)
def placed(env: Env) -> Env:
    """M1 and M2 stand on a road of the map (the shared site leaves them unplaced)."""
    with psycopg.connect(env.url, autocommit=True) as conn:
        conn.execute("UPDATE poles SET lat = 30.6520, lon = 104.0700, road = 'Shuncheng St',"
                     " name = 'Shuncheng 1' WHERE id = 'M1'")  # fmt: skip
        conn.execute("UPDATE poles SET lat = 30.6530, lon = 104.0700, road = 'Shuncheng St',"
                     " name = 'Shuncheng 2' WHERE id = 'M2'")  # fmt: skip
    return env


async def as_admin(env: Env, method: str, path: str, body: Any = None) -> Any:
    async with httpx.AsyncClient(base_url=env.api, headers=env.admin) as client:
        r = await client.request(method, path, json=body)
        assert r.status_code < 300, r.text
        return r.json()


async def tenant_page(
    env: Env, *, locale: str = "en", phone: bool = False
) -> tuple[BrowserContext, Page]:
    ctx = await new_context(env, locale=locale, phone=phone)
    page = await log_in(ctx, env.tenant_a_user)
    return ctx, page


async def fill_device(page: Page, *, weight: str = "6", power: str = "120") -> None:
    device = page.locator("fieldset[data-device='1']")
    await device.get_by_label("Type").fill("camera")
    await device.get_by_label("Model").fill("C9")
    await device.get_by_label("Quantity per pole").fill("1")
    await device.get_by_label("Mass each (kg)").fill(weight)
    await device.get_by_label("Width (mm)").fill("200")
    await device.get_by_label("Height (mm)").fill("300")
    await device.get_by_label("Depth (mm)").fill("150")
    await device.get_by_label("Wind area each (m²)").fill("0.1")
    await device.get_by_label("Power each (W)").fill(power)
    await page.get_by_label("Voltage (V)").fill("220")


# --------------------------------------------------------------------------- applying


async def test_a_tenant_applies_for_a_slot_from_the_map_after_seeing_the_verdict(
    env: Env,
) -> None:
    ctx, page = await tenant_page(env)
    nav = page.get_by_role("navigation", name="main")
    await nav.get_by_role("link", name="Apply for a slot").click()
    await expect(page.get_by_role("heading", name="Apply for a slot", exact=True)).to_be_visible()
    # Its own pole is marked; the other tenant's pole offers only its free slot, unnamed.
    mine = page.locator("#apply-poles li[data-pole='M1']")
    await expect(mine).to_contain_text("Your lease: M1-top")
    theirs = page.locator("#apply-poles li[data-pole='M2']")
    await expect(theirs).to_contain_text("1 free slots")
    await expect(theirs).not_to_contain_text("Your lease")
    await expect(page.locator("#apply-poles")).not_to_contain_text("tn-b")
    options = await page.locator("#slot-M2 option").all_inner_texts()
    assert [o.split(" ")[0] for o in options[1:]] == ["M2-mid"]
    # A click on the pole on the map chooses it.
    await page.locator("#apply-map .pole-marker[title^='M2 ']").click()
    await expect(page.get_by_label("Choose pole M2 Shuncheng 2")).to_be_checked()
    await expect(page.locator("#apply-chosen")).to_have_text("Chosen: M2")
    await page.locator("#slot-M2").select_option("M2-mid")
    await fill_device(page)
    submit = page.get_by_role("button", name="Submit application")
    await expect(submit).to_be_disabled()  # the verdict comes first
    await page.get_by_role("button", name="Check capacity").click()
    verdict = page.locator("#capacity-verdict")
    await expect(verdict).to_contain_text("The equipment fits")
    await expect(verdict).to_contain_text("Slot M2-mid · port M2-p2")
    await expect(verdict.locator("[data-check=slot_load]")).to_contain_text(
        "needs 6 kg, available 30 kg"
    )
    # Nothing was stored by the check.
    assert (await ctx.request.get("/api/v1/applications")).ok
    before = {
        a["id"] for a in (await (await ctx.request.get("/api/v1/applications")).json())["items"]
    }
    assert len(before) == 1
    # A change to the form asks for a new check.
    await page.get_by_label("Mass each (kg)").fill("45")
    await expect(submit).to_be_disabled()
    await page.get_by_role("button", name="Check capacity").click()
    await expect(verdict).to_contain_text("does not fit")
    await expect(verdict.locator("[data-check=slot_load]")).to_contain_text("Fails")
    await page.get_by_label("Mass each (kg)").fill("6")
    await page.get_by_role("button", name="Check capacity").click()
    await expect(verdict).to_contain_text("The equipment fits")
    await submit.click()
    await expect(page.get_by_role("heading", name=re.compile(r"Application \d+"))).to_be_visible()
    await expect(page.locator("#application-state")).to_contain_text("Submitted")
    app_id = int(page.url.rsplit("/", 1)[1])
    assert app_id not in before
    app = await api_get(env, f"/api/v1/applications/{app_id}")
    assert (app["state"], app["tenant_id"], app["kind"]) == ("submitted", "tn-a", "new")
    assert app["poles"] == [{"pole_id": "M2", "slots": ["M2-mid"]}]
    (device,) = app["devices"]
    assert (device["type"], device["model"], device["weight_kg"], device["power_w"]) == (
        "camera", "C9", 6, 120)  # fmt: skip
    assert device["dimensions"] == {"width_mm": 200, "height_mm": 300, "depth_mm": 150}
    assert (app["supply"], app["voltage_v"]) == ("AC", 220)
    # It is in the list, and its timeline starts with the submission.
    await expect(page.locator("#application-timeline li")).to_have_count(1)
    await nav.get_by_role("link", name="Applications").click()
    await expect(
        page.locator(f"#application-list a[href='#/portal/applications/{app_id}']")
    ).to_be_visible()
    assert page.errors == []  # type: ignore[attr-defined]
    await ctx.close()


async def test_a_tenant_answers_a_returned_application_and_withdraws_another(env: Env) -> None:
    ctx, page = await tenant_page(env)
    # The tenant applied; the operator returns it with a question.
    r = await ctx.request.post(
        "/api/v1/applications",
        data={
            "devices": [{"type": "sensor", "weight_kg": 2, "power_w": 10}],
            "voltage_v": 220,
            "poles": [{"pole_id": "M1"}],
        },
        headers={"X-CSRF-Token": await csrf(ctx)},
    )
    assert r.status == 201, await r.text()
    app_id = (await r.json())["id"]
    question = {"to": "returned", "reasons": ["the sensor's wind area is missing"]}
    await as_admin(env, "POST", f"/api/v1/applications/{app_id}/transitions", question)
    await page.goto("/console/#/portal/applications")
    row = page.locator(
        "#application-list tr", has=page.locator(f"a[href='#/portal/applications/{app_id}']")
    )
    await expect(row).to_contain_text("Returned with questions")
    await row.get_by_role("link").click()
    await expect(page.locator("#return-reasons")).to_contain_text(
        "the sensor's wind area is missing"
    )
    await page.get_by_role("link", name="Answer the questions").click()
    await expect(page.get_by_role("heading", name=f"Answer application {app_id}")).to_be_visible()
    await expect(page.get_by_label("Choose pole M1 Shuncheng 1")).to_be_checked()
    device = page.locator("fieldset[data-device='1']")
    await expect(device.get_by_label("Type")).to_have_value("sensor")
    await device.get_by_label("Wind area each (m²)").fill("0.05")
    await page.get_by_role("button", name="Check capacity").click()
    await expect(page.locator("#capacity-verdict")).to_contain_text("Pole M1")
    await page.get_by_label("Your answer").fill("wind area added: 0.05 m²")
    await page.get_by_role("button", name="Send the answer").click()
    await expect(page.locator("#application-state")).to_contain_text("Submitted")
    app = await api_get(env, f"/api/v1/applications/{app_id}")
    assert app["state"] == "submitted"
    assert app["devices"][0]["wind_area_m2"] == 0.05
    history = await api_get(env, f"/api/v1/applications/{app_id}/history")
    assert [(h["from_state"], h["to_state"]) for h in history][-2:] == [
        (None, None),
        ("returned", "submitted"),
    ]
    assert history[-1]["note"] == "wind area added: 0.05 m²"
    timeline = page.locator("#application-timeline")
    await expect(timeline).to_contain_text("Returned with questions")
    await expect(timeline).to_contain_text("Amended")

    # The other one (returned when seeded) is withdrawn.
    await page.goto(f"/console/#/portal/applications/{env.a.application}")
    await page.get_by_label("Why (optional)").fill("no longer needed")
    await page.get_by_role("button", name="Withdraw application").click()
    await expect(page.locator("#application-state")).to_contain_text("Withdrawn")
    await expect(page.get_by_role("button", name="Withdraw application")).to_have_count(0)
    assert (await api_get(env, f"/api/v1/applications/{env.a.application}"))["state"] == "withdrawn"
    assert page.errors == []  # type: ignore[attr-defined]
    await ctx.close()


async def csrf(ctx: BrowserContext) -> str:
    for c in await ctx.cookies():
        if c["name"] == "polegw_csrf":
            return c["value"]
    raise AssertionError("no CSRF cookie")


# --------------------------------------------------------------------------- leases


async def test_a_tenant_reads_its_lease_history_and_port_state_and_applies_for_a_change(
    env: Env,
) -> None:
    ctx, page = await tenant_page(env)
    await expect(page.locator("#lease-list tbody tr")).to_have_count(1)
    await page.locator("#lease-list").get_by_role("link", name=f"Lease {env.a.lease}").click()
    await expect(page.locator("#lease-state")).to_contain_text("In service")
    history = page.locator("#lease-detail table tbody tr")
    await expect(history).to_have_count(2)
    await expect(history.nth(0)).to_contain_text("Contracted")
    await expect(history.nth(1)).to_contain_text("In service")
    # No switch command yet: the port is on because the lease is in service, since then.
    port_state = page.locator("#lease-port-state")
    await expect(port_state).to_contain_text("On since 2026-11-09")
    await expect(port_state).to_contain_text("no switch command recorded")
    # A switch made by a state change is shown with when (staff suspend and resume).
    await as_admin(env, "POST", f"/api/v1/leases/{env.a.lease}/transitions", {"to": "suspended"})
    await as_admin(env, "POST", f"/api/v1/leases/{env.a.lease}/transitions", {"to": "in_service"})
    lease = await api_get(env, f"/api/v1/leases/{env.a.lease}")
    await page.reload()
    assert lease["port_switch"]["on"] is True
    switched = datetime.fromisoformat(lease["port_switch"]["at"]).astimezone(SITE_TZ)
    await expect(port_state).to_contain_text(f"On since {switched:%Y-%m-%d, %H:%M}")
    await expect(port_state).not_to_contain_text("no switch command recorded")
    await page.get_by_text("Apply to change this lease").click()
    await (
        page.locator("#lease-change fieldset[data-device='1']").get_by_label("Type").fill("camera")
    )
    await (
        page.locator("#lease-change fieldset[data-device='1']")
        .get_by_label("Mass each (kg)")
        .fill("8")
    )
    await page.get_by_role("button", name="Submit the change").click()
    await expect(page.locator("#application-state")).to_contain_text("Submitted")
    app_id = int(page.url.rsplit("/", 1)[1])
    app = await api_get(env, f"/api/v1/applications/{app_id}")
    assert (app["kind"], app["lease_id"], app["devices"][0]["weight_kg"]) == (
        "change",
        env.a.lease,
        8,
    )
    await ctx.close()


# --------------------------------------------------------------------------- usage


def number(text: str) -> float:
    return float(text.replace(",", "").strip())


async def test_a_months_usage_by_day_and_period_equals_the_api(env: Env) -> None:
    ctx, page = await tenant_page(env)
    await page.get_by_role("navigation", name="main").get_by_role("link", name="Usage").click()
    await page.get_by_label("Month").fill("2026-11")
    await page.get_by_label("Month").dispatch_event("change")
    await expect(page).to_have_url(re.compile(r"month=2026-11"))
    # The same month through the API with the browser's session (Asia/Shanghai days).
    start = datetime(2026, 10, 31, 16, tzinfo=UTC).isoformat()
    end = datetime(2026, 11, 30, 16, tzinfo=UTC).isoformat()
    r = await ctx.request.get("/api/v1/usage", params={"start": start, "end": end, "bucket": "1d"})
    usage = await r.json()
    (port,) = usage["ports"]
    assert port["port_id"] == env.a.port
    assert float(port["kwh"]) > 0
    table = page.locator(f"table.usage-table[data-port='{env.a.port}']")
    await expect(table.locator(f"[data-total='{env.a.port}']")).to_have_text(
        f"{float(port['kwh']):,.3f}"
    )
    for period, kwh in port["periods"].items():
        cell = table.locator(f"tfoot [data-period='{period}']")
        assert number(await cell.inner_text()) == pytest.approx(float(kwh), abs=5e-4)
    rows = table.locator("tbody tr")
    await expect(rows).to_have_count(len(port["buckets"]))
    day_sum = sum([number(t) for t in await rows.locator("td:nth-last-child(2)").all_inner_texts()])
    assert day_sum == pytest.approx(float(port["kwh"]), abs=5e-3)
    await expect(page.locator("#usage-total")).to_contain_text(f"{float(port['kwh']):,.3f} kWh")
    await expect(page.locator(".usage-bars")).to_have_attribute("role", "img")
    # The bars are drawn to scale (the CSP refuses style attributes: set through the CSSOM).
    heights = await page.locator(".usage-stack").evaluate_all(
        "els => els.map((e) => e.getBoundingClientRect().height)"
    )
    assert len(heights) == len(port["buckets"])
    assert max(heights) > 100
    # The seeded quarter-hour the meter ran over is explained in words.
    if any(f["flags"] for f in port["flags"]):
        await expect(page.locator(".flag-words")).to_be_visible()
    else:
        await expect(page.locator(".usage-port")).to_contain_text("Nothing unusual")
    assert page.errors == []  # type: ignore[attr-defined]
    await ctx.close()


# --------------------------------------------------------------------------- bills


async def test_a_tenant_opens_the_invoice_in_chinese_and_english_and_downloads_the_csv(
    env: Env,
) -> None:
    ctx, page = await tenant_page(env, locale="zh-CN")
    await page.get_by_role("navigation", name="main").get_by_role("link", name="账单").click()
    await page.locator("#bill-list").get_by_role("link", name=f"第 {env.a.bill} 号").click()
    await expect(page.get_by_role("heading", name=f"账单 {env.a.bill}")).to_be_visible()
    await expect(page.locator("#bill-detail table tbody tr")).to_have_count(1)
    await expect(page.locator("#bill-detail table")).to_contain_text("挂载租金")
    async with ctx.expect_page() as opened:
        await page.locator("#bill-detail").get_by_role("link", name="发票").click()
    invoice = await opened.value
    await invoice.wait_for_load_state()
    body = await invoice.content()
    for text in (
        '<html lang="zh-CN">',
        "服务期间",
        "2026-10-01 至 2026-10-31",
        "付款截止日",
        "付款方",
        "A Telecom",
    ):
        assert text in body, text
    await invoice.close()
    # In English the same link opens the English invoice.
    await page.get_by_label("语言").select_option("en")
    await expect(page.get_by_role("heading", name=f"Bill {env.a.bill}")).to_be_visible()
    async with ctx.expect_page() as opened:
        await page.locator("#bill-detail").get_by_role("link", name="Invoice").click()
    invoice = await opened.value
    await invoice.wait_for_load_state()
    body = await invoice.content()
    for text in ("Service period", "2026-10-01 to 2026-10-31", "Due date", "Bill to", "Rent"):
        assert text in body, text
    assert "付款截止日" not in body
    async with page.expect_download() as dl:
        await page.locator("#bill-detail").get_by_role("link", name="CSV").click()
    download = await dl.value
    path = await download.path()
    rows = list(csv.DictReader(io.StringIO(path.read_text("utf-8"))))
    assert rows[0]["bill_id"] == str(env.a.bill)
    assert rows[-1]["kind"] == "total"
    await ctx.close()


# --------------------------------------------------------------------------- isolation


def answer_of(path: str) -> Callable[[Response], bool]:
    return lambda r: r.url.endswith(path)


async def test_a_tenant_reaches_no_operator_page_and_no_other_tenants_object_by_url(
    env: Env,
) -> None:
    ctx, page = await tenant_page(env)
    nav = page.get_by_role("navigation", name="main")
    await expect(nav.get_by_role("link")).to_have_text(
        ["Leases", "Apply for a slot", "Applications", "Usage", "Bills"]
    )
    theirs = f"/api/v1/applications/{env.b.application}"
    objects = {
        f"#/portal/leases/{env.b.lease}": f"/api/v1/leases/{env.b.lease}",
        f"#/portal/applications/{env.b.application}": theirs,
        f"#/portal/applications/{env.b.application}/answer": theirs,
        f"#/bills/{env.b.bill}": f"/api/v1/bills/{env.b.bill}",
    }
    for path, api in objects.items():
        async with page.expect_response(answer_of(api)) as resp:
            await page.goto(f"/console/{path}")
        assert (await resp.value).status == 404, path
        await expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        await expect(page.locator("main")).not_to_contain_text("tn-b")
    for path in ("#/", "#/map", "#/alarms", "#/poles/M2", "#/devices/M2-pm", "#/portal/leases/x"):
        await page.goto(f"/console/{path}")
        await expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    await ctx.close()


async def test_staff_still_see_every_tenants_leases_and_bills(env: Env) -> None:
    ctx = await new_context(env)
    page = await log_in(ctx, env.operator)
    await page.goto("/console/#/leases")
    await expect(page.locator("#lease-list")).to_contain_text("tn-b")
    await expect(page.locator("#lease-list")).to_contain_text("tn-a")
    await page.goto("/console/#/bills")
    await page.locator("#bill-list").get_by_role("link", name=f"No. {env.b.bill}").click()
    await expect(page.locator("#bill-detail")).to_contain_text("tn-b")
    # The operator's pages are not the tenant's: no portal menu.
    await expect(
        page.get_by_role("navigation", name="main").get_by_role("link", name="Usage")
    ).to_have_count(0)
    await ctx.close()


# --------------------------------------------------------------------------- qualities


def pages(env: Env) -> list[str]:
    return [
        "#/leases",
        "#/portal/apply",
        "#/portal/applications",
        f"#/portal/applications/{env.a.application}",
        f"#/portal/leases/{env.a.lease}",
        "#/portal/usage?month=2026-11",
        "#/bills",
        f"#/bills/{env.a.bill}",
    ]


async def test_the_portal_speaks_both_languages_on_every_page(env: Env) -> None:
    ctx, page = await tenant_page(env, locale="zh-CN")
    await assert_both_languages(page, pages(env))
    await ctx.close()


async def test_the_portal_has_no_horizontal_scrolling_on_a_phone(env: Env) -> None:
    ctx, page = await tenant_page(env, phone=True)
    await assert_fits_a_phone(page, pages(env))
    await ctx.close()
