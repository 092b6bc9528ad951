"""The mounting service end to end in the browser (issue 13's first journey): a
tenant applies for a slot on the map, an operator reviews and approves it and puts
the lease in service (the port switch reaches the simulated meter), the tenant sees
usage accrue from the meter, a bill run makes the month's bill, and the tenant opens
the invoice and downloads the CSV, all through the console's pages.

The site and the fast simulated meter are those of tests/test_mounting_e2e.py, which
walks the same journey through the API alone.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from simulators.modbus_server import ModbusSimulator
from tests import test_console as tc
from tests.support import add_user, gateway, gateway_settings, prepare_database
from tests.test_mounting_e2e import (
    CST,
    METER,
    PORT,
    TENANT,
    simulated_meter,  # noqa: F401 - the fixture, shared
    site,
)

API = "/api/v1"


async def browser_context(browser: Browser, origin: str) -> BrowserContext:
    return await browser.new_context(
        viewport={"width": 1440, "height": 900}, locale="en", base_url=origin
    )


async def kwh_counted(api: httpx.AsyncClient) -> Decimal:
    r = await api.get(f"{API}/devices/{METER}/latest")
    value = r.json()["values"].get("port1_energy_kwh") if r.status_code == 200 else None
    return Decimal(str(value["value"])) if value else Decimal(0)


async def tenant_applies(page: Page) -> int:
    nav = page.get_by_role("navigation", name="main")
    await nav.get_by_role("link", name="Apply for a slot").click()
    # The e2e site's pole has no coordinates: it is chosen from the list beside the map.
    await page.locator("#apply-poles li[data-pole='E1']").get_by_role("checkbox").check()
    await expect(page.locator("#apply-chosen")).to_have_text("Chosen: E1")
    await page.locator("#slot-E1").select_option("E1-top")
    device = page.locator("fieldset[data-device='1']")
    await device.get_by_label("Type").fill("5G micro station")
    await device.get_by_label("Model").fill("G5")
    await device.get_by_label("Quantity per pole").fill("1")
    await device.get_by_label("Mass each (kg)").fill("18")
    await device.get_by_label("Wind area each (m²)").fill("0.2")
    await device.get_by_label("Power each (W)").fill("800")
    await page.get_by_label("Voltage (V)").fill("220")
    await page.get_by_role("button", name="Check capacity").click()
    await expect(page.locator("#capacity-verdict")).to_contain_text("The equipment fits")
    await page.get_by_role("button", name="Submit application").click()
    await expect(page.locator("#application-state")).to_contain_text("Submitted")
    return int(page.url.rsplit("/", 1)[1])


async def operator_approves_and_puts_in_service(page: Page, app_id: int) -> int:
    await page.locator("#nav").get_by_role("link", name="Applications").click()
    await (
        page.locator("section[data-state=submitted]")
        .get_by_role("link", name=f"Application {app_id}")
        .click()
    )
    state = page.locator("#mount-app-state")
    await page.get_by_role("button", name="Accept as complete").click()
    await expect(state).to_have_text(re.compile("Accepted"))
    await page.get_by_role("button", name="Start the review").click()
    await expect(state).to_have_text(re.compile("Under review"))
    await page.locator("#mount-approve-tariff").select_option("journey-flat")
    await page.get_by_role("button", name="Approve").click()
    await expect(state).to_have_text(re.compile("Approved"))
    lease_link = page.locator("#mount-app-leases").get_by_role("link")
    await expect(lease_link).to_have_count(1)
    lease_id = int((await lease_link.inner_text()).rsplit(" ", 1)[1])
    await lease_link.click()
    form = page.get_by_role("form", name="Move the lease on")
    for to in ("Installing", "Acceptance test", "In service"):
        await form.get_by_label("Next state").select_option(label=to)
        await form.get_by_role("button", name="Move").click()
        await expect(page.locator("#mount-lease-state")).to_have_text(re.compile(to))
    # The port switch went to the meter and ended well, shown as it happened.
    await expect(page.locator("#mount-port-outcome")).to_contain_text("Succeeded", timeout=20000)
    return lease_id


async def test_a_tenant_applies_and_is_billed_for_what_the_meter_counted(
    fresh_database_url: str,
    mqtt_url: str,
    topic_prefix: str,
    simulated_meter: ModbusSimulator,  # noqa: F811 - the fixture imported above
) -> None:
    url, meter = fresh_database_url, simulated_meter
    await prepare_database(url, site(meter.port))
    operator = add_user(url, "operator").name
    tenant = add_user(url, "tenant", tenant=TENANT).name
    settings = gateway_settings(
        url, mqtt_url, topic_prefix, command_timeout_s=5.0, metering_every_s=0.5
    )
    async with (
        gateway(settings) as gw,
        httpx.AsyncClient(base_url=gw.api, headers=gw.headers, timeout=10) as api,
        async_playwright() as pw,
    ):
        # The operator's tariff (set up through the API: the tariff page has its own test).
        now = datetime.now(CST)
        r = await api.post(
            f"{API}/tariffs",
            json={
                "name": "journey-flat",
                "valid_from": (now - timedelta(days=40)).isoformat(),
                "definition": {
                    "energy": {"prices": {"flat": "0.85"}},
                    "rent": {"slot_types": {"standard": "300"}},
                },
            },
        )
        assert r.status_code == 201, r.text
        browser = await pw.chromium.launch(executable_path=tc.CHROMIUM, args=tc.FLAGS)
        tenant_ctx = await browser_context(browser, gw.api)
        tenant_page = await tc.log_in(tenant_ctx, tenant)
        app_id = await tenant_applies(tenant_page)

        operator_ctx = await browser_context(browser, gw.api)
        operator_page = await tc.log_in(operator_ctx, operator)
        lease_id = await operator_approves_and_puts_in_service(operator_page, app_id)
        assert meter.values(METER)["port1_switch_on"] is True
        lease = (await api.get(f"{API}/leases/{lease_id}")).json()
        assert (lease["state"], lease["port_id"], lease["tenant_id"]) == (
            "in_service",
            PORT,
            TENANT,
        )

        # The meter counts; then the port is switched off, so the figures hold still.
        start = await kwh_counted(api)
        for _ in range(300):
            if await kwh_counted(api) >= start + Decimal("0.1"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the simulated meter's port did not count")
        r = await api.post(
            f"{API}/devices/{METER}/commands",
            json={"command": "switch_port", "args": {"port": 1, "on": False}},
        )
        assert r.status_code == 202, r.text
        for _ in range(100):
            done = (await api.get(f"{API}/devices/{METER}/commands/{r.json()['id']}")).json()
            if done["state"] == "succeeded":
                break
            await asyncio.sleep(0.1)
        # The counter holds still once the port is off and the last poll is stored.
        last = await kwh_counted(api)
        for _ in range(50):
            await asyncio.sleep(0.5)
            now_kwh = await kwh_counted(api)
            if now_kwh == last:
                break
            last = now_kwh

        # The tenant's usage page shows the month's kWh as the API has it for the tenant.
        month = now.strftime("%Y-%m")
        await (
            tenant_page.get_by_role("navigation", name="main")
            .get_by_role("link", name="Usage")
            .click()
        )
        await tenant_page.get_by_label("Month").fill(month)
        await tenant_page.get_by_label("Month").dispatch_event("change")
        first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        cell = tenant_page.locator(f"[data-total='{PORT}']")
        # The metering worker puts the last readings into the ledger within its
        # period; the page and the API agree once it has.
        for _ in range(30):
            seen = await tenant_ctx.request.get(
                f"{API}/usage",
                params={"start": first.isoformat(), "end": (now + timedelta(days=1)).isoformat()},
            )
            (port,) = (await seen.json())["ports"]
            await tenant_page.reload()
            await expect(cell).to_be_visible()
            if (await cell.inner_text()).strip() == f"{float(port['kwh']):,.3f}":
                break
            await asyncio.sleep(0.5)
        assert port["port_id"] == PORT
        assert Decimal(port["kwh"]) > 0
        await expect(cell).to_have_text(f"{float(port['kwh']):,.3f}")

        # The bill run, then the tenant's invoice and CSV with the browser session alone.
        await operator_page.locator("#nav").get_by_role("link", name="Metering & billing").click()
        await operator_page.get_by_label("Month").fill(month)
        # The month is not over: refused as a final bill, made as a provisional draft.
        await operator_page.get_by_role("button", name="Generate the drafts").click()
        await expect(operator_page.locator("#mount-run-month-err")).not_to_be_empty()
        await operator_page.get_by_label("Provisional draft").check()
        await operator_page.get_by_role("button", name="Generate the drafts").click()
        await expect(operator_page.locator("#mount-run-outcome")).to_contain_text("bills generated")
        (bill,) = [
            b
            for b in (await api.get(f"{API}/bills", params={"month": month})).json()["items"]
            if b["tenant_id"] == TENANT
        ]
        total = operator_page.locator(f".mount-total[data-tenant='{TENANT}']")
        await expect(total).to_have_attribute("data-total", f"{Decimal(bill['total_amount']):.2f}")
        energy = [ln for ln in (await api.get(f"{API}/bills/{bill['id']}")).json()["lines"]
                  if ln["kind"] == "energy"]  # fmt: skip
        assert energy, "the bill has no electricity line"
        assert all(Decimal(ln["quantity"]) > 0 for ln in energy)

        await (
            tenant_page.get_by_role("navigation", name="main")
            .get_by_role("link", name="Bills")
            .click()
        )
        await (
            tenant_page.locator("#bill-list")
            .get_by_role("link", name=re.compile(rf"\b{bill['id']}\b"))
            .first.click()
        )
        detail = tenant_page.locator("#bill-detail")
        await expect(detail).to_be_visible()
        async with tenant_ctx.expect_page() as opened:
            await detail.get_by_role("link", name="Invoice").click()
        invoice = await opened.value
        await invoice.wait_for_load_state()
        assert "E2E Telecom" in await invoice.content()
        await invoice.close()
        async with tenant_page.expect_download() as dl:
            await detail.get_by_role("link", name="CSV").click()
        path = await (await dl.value).path()
        rows = list(csv.DictReader(io.StringIO(path.read_text("utf-8"))))
        assert {r["bill_id"] for r in rows if r["bill_id"]} == {str(bill["id"])}
        assert any(r.get("kind") == "energy" for r in rows), rows
        await browser.close()
