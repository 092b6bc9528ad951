"""The console's mounting service for the operator (issue 13) in a real browser:
受理申请和审核 (the application queue and its capacity review), 挂载服务 (the lease
board, moving a lease with the time it took effect), 计费 (tariff versions and
their time-of-use strip) and 计量与计费 (bill runs), against the real gateway on
real PostgreSQL and Mosquitto (the `env` fixture of tests/test_console.py).

Each test says what a person does; selectors are by role, label and text.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
from playwright.async_api import Page, expect

from tests import test_console as tc
from tests.support import add_user, bearer
from tests.test_tenant_isolation import application_body

env = tc.env  # the module-scoped gateway, chromium and seeded tenants
Env = tc.Env
SITE_TZ = ZoneInfo("Asia/Shanghai")  # the settings' default site_timezone


async def call(
    env: Env, method: str, path: str, headers: dict[str, str], **kw: Any
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=env.api, headers=headers) as client:
        return await client.request(method, path, **kw)


async def submitted_application(env: Env, slot: str) -> int:
    """Tenant A applies for a camera on pole M1 (through the API, as its portal would)."""
    r = await call(
        env, "POST", "/api/v1/applications", env.a.headers, json=application_body("M1", [slot])
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def default_tariff(env: Env) -> int:
    """The `default` tariff the seeded leases are billed with (created once)."""
    r = await call(env, "GET", "/api/v1/tariffs", env.admin, params={"name": "default"})
    items = r.json()["items"]
    if items:
        return int(items[0]["id"])
    body = {
        "name": "default",
        "valid_from": "2026-01-01T00:00:00+08:00",
        "definition": {
            "energy": {"prices": {"peak": "1.00", "flat": "0.60", "valley": "0.30"}},
            "maintenance_fee": "60",
        },
    }
    r = await call(env, "POST", "/api/v1/tariffs", env.admin, json=body)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def wall(at: datetime) -> str:
    """The value a person types in a datetime-local field, in the site's time zone."""
    return at.astimezone(SITE_TZ).strftime("%Y-%m-%dT%H:%M:%S")


async def move_lease(page: Page, to: str, at: datetime, note: str) -> None:
    form = page.get_by_role("form", name="Move the lease on")
    await form.get_by_label("Next state").select_option(label=to)
    await form.get_by_label("Note").fill(note)
    await form.get_by_label(re.compile(r"Took effect at")).fill(wall(at))
    await form.get_by_role("button", name="Move").click()
    await expect(page.locator("#mount-lease-state")).to_have_text(re.compile(to))


# ------------------------------------------------------------------ applications and leases


async def test_operator_reviews_approves_and_puts_the_lease_in_service_back_dated(env: Env) -> None:
    app_id = await submitted_application(env, "M1-mid")
    ctx = await tc.new_context(env)
    page = await tc.log_in(ctx, env.operator)
    await page.locator("#nav").get_by_role("link", name="Applications").click()
    submitted = page.locator("section[data-state=submitted]")
    await submitted.get_by_role("link", name=f"Application {app_id}").click()
    await expect(page.locator("#mount-app-state")).to_have_text(re.compile("Submitted"))

    # The capacity review: each check of pole M1 with its figures and verdict, as the API has it.
    review = (await tc.api_get(env, f"/api/v1/applications/{app_id}/review"))["poles"][0]
    pole = page.locator("section[data-pole=M1]")
    await expect(pole.get_by_role("heading", name=re.compile("Pole M1"))).to_be_visible()
    rows = pole.locator("tbody tr")
    await expect(rows).to_have_count(len(review["checks"]))
    assert review["assignment"]["slot_id"] == "M1-mid"
    await expect(pole).to_contain_text("slot M1-mid")
    for i, check in enumerate(review["checks"]):
        verdict = "fits" if check["ok"] else "does_not_fit"
        await expect(rows.nth(i).locator(f"[data-verdict={verdict}]")).to_have_count(1)
    load = next(c for c in review["checks"] if c["name"] == "pole_load")
    load_row = pole.locator("tr", has_text="Pole load")
    await expect(load_row).to_contain_text(f"{load['needed']:g} kg")
    await expect(load_row).to_contain_text(f"{load['available']:g} kg")

    await page.get_by_role("button", name="Accept as complete").click()
    await expect(page.locator("#mount-app-state")).to_have_text(re.compile("Accepted"))
    await page.get_by_role("button", name="Start the review").click()
    await expect(page.locator("#mount-app-state")).to_have_text(re.compile("Under review"))
    await page.get_by_label("Note").fill("fits; structural report 2026-114")
    await page.get_by_role("button", name="Approve").click()
    await expect(page.locator("#mount-app-state")).to_have_text(re.compile("Approved"))
    await expect(page.locator("#mount-app-timeline li")).to_have_count(4)
    app = await tc.api_get(env, f"/api/v1/applications/{app_id}")
    assert app["state"] == "approved"
    (lease_id,) = app["decision"]["lease_ids"]

    # The contract dates from three days ago and the field team's work was entered
    # late: the database row is moved back (a test cannot wait for days).
    with psycopg.connect(env.url, autocommit=True) as conn:
        conn.execute(
            "UPDATE lease_history SET since = since - interval '3 days' WHERE lease_id = %s",
            (lease_id,),
        )
    await page.locator("#mount-app-leases").get_by_role("link", name=f"Lease {lease_id}").click()
    await expect(page.locator("#mount-lease-state")).to_have_text(re.compile("Contracted"))
    now = datetime.now(SITE_TZ).replace(microsecond=0)
    installed, tested, in_service = (
        now - timedelta(days=2),
        now - timedelta(days=1),
        now - timedelta(hours=5),
    )
    await move_lease(page, "Installing", installed, "crew 3 on site")
    await move_lease(page, "Acceptance test", tested, "test booked")
    await move_lease(page, "In service", in_service, "acceptance test passed")

    lease = await tc.api_get(env, f"/api/v1/leases/{lease_id}")
    assert lease["state"] == "in_service"
    history = await tc.api_get(env, f"/api/v1/leases/{lease_id}/history")
    assert [h["state"] for h in history][-3:] == ["installing", "acceptance_test", "in_service"]
    assert datetime.fromisoformat(history[-1]["since"]) == in_service
    assert datetime.fromisoformat(history[-3]["since"]) == installed
    assert lease["starts_on"] == in_service.date().isoformat()
    # The port switch the move asked for, and what became of it.
    assert lease["port_switch"]["on"] is True
    port = page.locator("#mount-port-state")
    await expect(port).to_contain_text("Switch on")
    await expect(port).to_contain_text(lease["port_id"])
    # Nobody answers the meter's command here: its timeout arrives live, without a reload.
    navigations = await page.evaluate("performance.getEntriesByType('navigation').length")
    outcome = page.locator("#mount-port-outcome")
    await expect(outcome).to_contain_text("Timed out", timeout=20000)
    switched = (await tc.api_get(env, f"/api/v1/leases/{lease_id}"))["port_switch"]
    assert switched["state"] == "timed_out"
    await expect(outcome).to_contain_text(switched["command_error"])
    assert await page.evaluate("performance.getEntriesByType('navigation').length") == navigations
    await expect(page.locator("time.mount-since").last).to_have_attribute(
        "datetime", re.compile(r".")
    )

    # The board shows it in its column.
    await page.locator("#nav").get_by_role("link", name="Mounting service").click()
    column = page.locator("section.mount-column[data-state=in_service]")
    await expect(column.locator(f"[data-lease='{lease_id}']")).to_be_visible()
    assert page.errors == []  # type: ignore[attr-defined]
    await ctx.close()


async def test_a_return_needs_the_question_and_a_refused_time_is_shown_by_its_field(
    env: Env,
) -> None:
    app_id = await submitted_application(env, "M1-top")
    ctx = await tc.new_context(env)
    page = await tc.log_in(ctx, env.operator)
    await page.goto(f"/console/#/mount/applications/{app_id}")
    await page.get_by_label("What is missing or unclear").fill("the wind area of the camera?")
    await page.get_by_role("button", name="Return with the question").click()
    await expect(page.locator("#mount-app-state")).to_have_text(re.compile("Returned"))
    await expect(page.locator("#mount-app-reasons")).to_have_text("the wind area of the camera?")
    app = await tc.api_get(env, f"/api/v1/applications/{app_id}")
    assert app["reasons"] == ["the wind area of the camera?"]

    # A lease move back-dated before the lease's last transition is refused next to the time.
    await page.goto(f"/console/#/mount/leases/{env.a.lease}")
    await expect(page.locator("#mount-lease-state")).to_have_text(re.compile("In service"))
    form = page.get_by_role("form", name="Move the lease on")
    await form.get_by_label("Next state").select_option(label="Suspended")
    await form.get_by_label(re.compile("Took effect at")).fill("2020-01-01T08:00:00")
    await form.get_by_role("button", name="Move").click()
    time_field = form.get_by_label(re.compile("Took effect at"))
    await expect(time_field).to_have_attribute("aria-invalid", "true")
    await expect(form.locator(".field-error").filter(has_text="before")).to_be_visible()
    assert (await tc.api_get(env, f"/api/v1/leases/{env.a.lease}"))["state"] == "in_service"
    await ctx.close()


async def test_a_check_that_does_not_fit_is_waived_with_a_reason(env: Env) -> None:
    body = application_body("M2", ["M2-mid"])
    body["devices"][0] |= {"type": "panel antenna", "wind_area_m2": 0.6}  # the slot takes 0.5
    r = await call(env, "POST", "/api/v1/applications", env.a.headers, json=body)
    assert r.status_code == 201, r.text
    app_id = r.json()["id"]
    ctx = await tc.new_context(env)
    page = await tc.log_in(ctx, env.operator)
    await page.goto(f"/console/#/mount/applications/{app_id}")
    await page.get_by_role("button", name="Accept as complete").click()
    await page.get_by_role("button", name="Start the review").click()
    await expect(page.locator("#mount-app-state")).to_have_text(re.compile("Under review"))
    await expect(page.locator("#mount-review-verdict")).to_contain_text("does not fit")
    row = page.locator("section[data-pole=M2] tr", has_text="Slot wind area")
    await expect(row.locator("[data-verdict=does_not_fit]")).to_be_visible()
    await expect(row).to_contain_text("0.6 m²")
    await expect(row).to_contain_text("0.5 m²")
    # Never offered for a slot or port taken by a live lease; offered here.
    await expect(page.locator("tr", has_text="Slot free").get_by_role("button")).to_have_count(0)
    await row.get_by_label(re.compile("Reason to waive")).fill("structural report 2026-114")
    await row.get_by_role("button", name="Waive this check").click()
    row = page.locator("section[data-pole=M2] tr", has_text="Slot wind area")
    await expect(row.locator("[data-verdict=waived]")).to_be_visible()
    await expect(row).to_contain_text("structural report 2026-114")
    await expect(page.locator("#mount-review-verdict")).to_contain_text("Everything fits")
    review = await tc.api_get(env, f"/api/v1/applications/{app_id}/review")
    check = next(c for c in review["poles"][0]["checks"] if c["name"] == "slot_wind_area")
    assert check["overridden"]["reason"] == "structural report 2026-114"
    assert review["approvable"] is True
    await ctx.close()


# --------------------------------------------------------------------------- tariffs


async def test_a_manager_creates_a_tariff_version_and_its_strip_shows_the_periods(env: Env) -> None:
    ctx = await tc.new_context(env)
    page = await tc.log_in(ctx, env.operator)
    await page.locator("#nav").get_by_role("link", name="Tariffs").click()
    await page.get_by_role("link", name="New tariff version").click()
    form = page.locator("form.mount-form")
    await form.get_by_label("Tariff name").fill("summer-tou")
    await form.get_by_label("Sharp peak").fill("1.20")
    await form.get_by_label("Peak", exact=True).fill("1.00")
    await form.get_by_label("Flat", exact=True).fill("0.60")
    await form.get_by_label("Valley", exact=True).fill("0.30")
    await form.get_by_role("button", name="Add a season").click()
    season = form.locator("[data-season='0']")
    await season.get_by_label("Months", exact=True).fill("7, 8")
    await season.get_by_role("button", name="Add hours").click()
    second = season.locator("fieldset.mount-range").nth(1)
    await second.get_by_label("Period").select_option(label="Sharp peak")
    await second.get_by_label("From hour").fill("12")
    await second.get_by_label("To hour").fill("11")
    # Forgotten start and an hour range backwards: each error is shown by its field.
    await form.get_by_role("button", name="Create the version").click()
    valid_from = form.get_by_label(re.compile("Valid from"))
    await expect(valid_from).to_have_attribute("aria-invalid", "true")
    await expect(form.locator(f"#{await valid_from.get_attribute('id')}-err")).not_to_be_empty()
    await expect(season.locator("fieldset.mount-range[aria-invalid=true]")).to_have_count(1)
    await expect(season).to_contain_text("start must be before end")
    assert (await tc.api_get(env, "/api/v1/tariffs?name=summer-tou"))["items"] == []

    await valid_from.fill("2027-07-01T00:00")
    await second.get_by_label("From hour").fill("11")
    await second.get_by_label("To hour").fill("12")
    # The preview follows what is typed.
    await expect(season.locator(".tou-hour[data-hour='11']")).to_have_attribute(
        "data-period", "sharp"
    )
    await form.get_by_role("button", name="Create the version").click()
    await expect(page.get_by_role("heading", name="summer-tou · version 1")).to_be_visible()
    made = (await tc.api_get(env, "/api/v1/tariffs?name=summer-tou"))["items"][0]
    assert datetime.fromisoformat(made["valid_from"]) == datetime(2027, 7, 1, tzinfo=SITE_TZ)
    assert made["definition"]["energy"]["seasons"] == [
        {
            "months": [7, 8],
            "ranges": [
                {"period": "peak", "start": 8, "end": 11},
                {"period": "sharp", "start": 11, "end": 12},
            ],
        }
    ]
    strips = page.locator("#mount-tou .tou-strip")
    await expect(strips).to_have_count(2)  # July-August, and the other months
    summer = [
        await c.get_attribute("data-period") for c in await strips.nth(0).locator(".tou-hour").all()
    ]
    assert summer == ["flat"] * 8 + ["peak"] * 3 + ["sharp"] + ["flat"] * 12
    await expect(strips.nth(0)).to_have_attribute(
        "aria-label", re.compile("08:00\u201311:00 Peak, 11:00\u201312:00 Sharp peak")
    )
    other = [
        await c.get_attribute("data-period") for c in await strips.nth(1).locator(".tou-hour").all()
    ]
    assert other == ["flat"] * 24
    await ctx.close()


# --------------------------------------------------------------------------- bill runs


async def test_a_bill_run_shows_each_tenants_total_as_the_api_has_it(env: Env) -> None:
    await default_tariff(env)
    ctx = await tc.new_context(env)
    page = await tc.log_in(ctx, env.operator)
    await page.locator("#nav").get_by_role("link", name="Metering & billing").click()
    await page.get_by_label("Month").fill("2026-11")
    await page.get_by_role("button", name="Generate the drafts").click()
    await expect(page.locator("#mount-run-outcome")).to_contain_text("bills generated")
    bills = (await tc.api_get(env, "/api/v1/bills?month=2026-11"))["items"]
    tenants = sorted({b["tenant_id"] for b in bills})
    assert {"tn-a", "tn-b"} <= set(tenants)
    for tenant in tenants:
        want = sum(
            (
                Decimal(b["total_amount"])
                for b in bills
                if b["tenant_id"] == tenant and b["state"] != "void"
            ),
            Decimal(0),
        )
        total = page.locator(f".mount-total[data-tenant='{tenant}']")
        await expect(total).to_have_attribute("data-total", f"{want:.2f}")
        await expect(total).to_contain_text(f"{want:,.2f}")

    # Open tenant A's draft: its lines, the documents, and issue it.
    bill = next(b for b in bills if b["tenant_id"] == "tn-a" and b["kind"] == "invoice")
    await page.get_by_role("link", name=f"Bill {bill['id']}", exact=True).click()
    lines = (await tc.api_get(env, f"/api/v1/bills/{bill['id']}"))["lines"]
    await expect(page.locator("main tbody tr")).to_have_count(len(lines))
    await expect(page.get_by_role("link", name="Invoice")).to_have_attribute(
        "href", f"/api/v1/bills/{bill['id']}/invoice.html"
    )
    await expect(page.get_by_role("link", name="CSV")).to_have_attribute(
        "href", f"/api/v1/bills/{bill['id']}/lines.csv"
    )
    await page.get_by_role("button", name="Issue the bill").click()
    await expect(page.locator("#mount-bill-state")).to_have_text(re.compile("Issued"))
    # Paid, then corrected with a credit note.
    pay = page.get_by_role("form", name="Record the payment")
    await pay.get_by_label("Paid on").fill("2026-12-03")
    await pay.get_by_label("Payment reference").fill("BANK-778")
    await pay.get_by_role("button", name="Mark as paid").click()
    await expect(page.locator("#mount-bill-state")).to_have_text(re.compile("Paid"))
    paid = await tc.api_get(env, f"/api/v1/bills/{bill['id']}")
    assert (paid["state"], paid["paid_on"], paid["payment_reference"]) == (
        "paid",
        "2026-12-03",
        "BANK-778",
    )
    credit = page.get_by_role("form", name="Write a credit note")
    await credit.get_by_label("Reason").fill("two days without power")
    await credit.get_by_label("Line").fill("outage credit")
    await credit.get_by_label(re.compile("Amount")).fill("-3.20")
    await credit.get_by_role("button", name="Create the credit note").click()
    await expect(page.locator("h1")).to_contain_text("Credit note")
    notes = (await tc.api_get(env, f"/api/v1/bills/{bill['id']}"))["credit_notes"]
    assert len(notes) == 1
    note = await tc.api_get(env, f"/api/v1/bills/{notes[0]}")
    assert Decimal(note["total_amount"]) == Decimal("-3.20")
    await ctx.close()


# --------------------------------------------------------------------------- roles


async def test_a_maintainer_sees_no_approve_or_issue_button_and_the_api_refuses(env: Env) -> None:
    app_id = await submitted_application(env, "M1-top")
    for to in ("accepted", "under_review"):
        r = await call(
            env, "POST", f"/api/v1/applications/{app_id}/transitions", env.admin, json={"to": to}
        )
        assert r.status_code == 200, r.text
    maintainer = add_user(env.url, "maintainer")
    ctx = await tc.new_context(env)
    page = await tc.log_in(ctx, maintainer.name)
    await page.goto(f"/console/#/mount/applications/{app_id}")
    await expect(page.locator("#mount-app-state")).to_have_text(re.compile("Under review"))
    await expect(page.get_by_role("button", name="Refuse")).to_be_visible()  # staff may refuse
    await expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    r = await call(
        env, "POST", f"/api/v1/applications/{app_id}/approve", bearer(maintainer), json={}
    )
    assert r.status_code == 403

    await page.goto(f"/console/#/mount/bills/{env.a.bill}")
    await expect(page.locator("#mount-bill-state")).to_have_text(re.compile("Draft"))
    await expect(page.get_by_role("button", name="Issue the bill")).to_have_count(0)
    r = await call(env, "POST", f"/api/v1/bills/{env.a.bill}/issue", bearer(maintainer))
    assert r.status_code == 403
    await page.goto("/console/#/mount/bills?month=2026-10")
    await expect(page.locator(".mount-total[data-tenant='tn-a']")).to_be_visible()
    await expect(page.get_by_role("button", name="Generate the drafts")).to_have_count(0)
    await page.goto("/console/#/mount/tariffs")
    await expect(page.locator("#mount-tariffs")).not_to_contain_text("Loading")
    await expect(page.get_by_role("link", name="New tariff version")).to_have_count(0)
    await ctx.close()


# --------------------------------------------------------------------------- qualities


async def mount_pages(env: Env) -> list[str]:
    tariff = await default_tariff(env)
    return [
        "#/mount/applications",
        f"#/mount/applications/{env.a.application}",
        "#/mount/leases",
        f"#/mount/leases/{env.a.lease}",
        "#/mount/tariffs",
        f"#/mount/tariffs/{tariff}",
        f"#/mount/tariffs/new?from={tariff}",
        "#/mount/bills?month=2026-10",
        f"#/mount/bills/{env.a.bill}",
    ]


async def test_the_language_switch_changes_every_label_of_the_mounting_pages(env: Env) -> None:
    ctx = await tc.new_context(env, locale="zh-CN")
    page = await tc.log_in(ctx, env.operator)
    await tc.assert_both_languages(page, await mount_pages(env))
    assert page.errors == []  # type: ignore[attr-defined]
    await ctx.close()


async def test_the_mounting_pages_have_no_horizontal_scrolling_on_a_phone(env: Env) -> None:
    ctx = await tc.new_context(env, phone=True)
    page = await tc.log_in(ctx, env.operator)
    await tc.assert_fits_a_phone(page, await mount_pages(env))
    await ctx.close()
