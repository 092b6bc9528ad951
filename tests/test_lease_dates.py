"""A lease's dates entered after the fact (issue 16, item 7): `effective_at` on a
transition, checked, kept beside when it was entered and by whom, and billed from.

The lease of tests/test_billing_api.py (port 1 of P0001, tn-telecom, the same
tariffs and readings) is approved in October but its installation, acceptance and
service are entered only now, in December, dated back to 11-01, 11-02 and 11-03
10:00: November's bill must be the hand-worked bill of that test, to the fen.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from gateway.adapters import mounting_store as ms
from gateway.adapters.command_store import CommandStore
from gateway.config import Settings
from gateway.core.profiles import load_catalog
from gateway.core.tariffs import money
from gateway.demo import seed_mounting, with_capacity
from gateway.service import open_pool
from simulators.demo_site import demo_site
from tests.support import add_user, api_client, bearer, prepare_database
from tests.test_billing_api import (
    DEVICE,
    EXPECTED_LINES,
    OTHER,
    PORT,
    PRICES_V1,
    PRICES_V2,
    TENANT,
    TOTAL,
    definition,
    lines_of,
    local,
    normal,
    readings,
    store_readings,
)


@dataclass
class Env:
    url: str
    client: httpx.AsyncClient
    operator: dict[str, str]
    operator_name: str
    lease_id: int


def seed(url: str) -> int:
    """P0001's meter, slot and port; tn-telecom's lease on it, approved on 10-20 and
    not yet installed (no term start: made without an application's term)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO tenants (id, name) VALUES (%s, 'Other Co')", (OTHER,))
        conn.execute(
            "INSERT INTO devices (id, pole_id, profile, transport)"
            " VALUES (%s, 'P0001', 'port-meter-4', 'modbus')",
            (DEVICE,),
        )
        conn.execute(
            "INSERT INTO slots (id, pole_id, position, slot_type, max_load_kg,"
            " max_wind_area_m2, max_power_w) VALUES ('P0001-arm', 'P0001', 'arm-east',"
            " 'standard', 30, 1, 4000)"
        )
        conn.execute(
            "INSERT INTO ports (id, pole_id, meter_device_id, port_no, rated_w)"
            " VALUES (%s, 'P0001', %s, 1, 4000)",
            (PORT, DEVICE),
        )
        lease = conn.execute(
            "INSERT INTO leases (tenant_id, pole_id, state, slot_id, port_id, rates)"
            " VALUES (%s, 'P0001', 'contracted', 'P0001-arm', %s, %s) RETURNING id",
            (TENANT, PORT, Jsonb({"tariff": "city"})),
        ).fetchone()
        assert lease is not None
        conn.execute(
            "INSERT INTO lease_history (lease_id, state, since, entered_at)"
            " VALUES (%s, 'contracted', %s, %s)",
            (lease[0], local(10, 20), local(10, 20)),
        )
    store_readings(url, readings())
    return int(lease[0])


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    await prepare_database(database_url)
    lease_id = seed(database_url)
    settings = Settings(database_url=database_url)
    operator = add_user(database_url, "operator")
    async with api_client(settings, base_url="http://api/api/v1") as client:
        headers = bearer(operator)
        for valid_from, valid_to, prices, rent in (
            (local(1, 1), local(11, 16), PRICES_V1, "300"),
            (local(11, 16), None, PRICES_V2, "450"),
        ):
            version = {
                "name": "city",
                "valid_from": valid_from.isoformat(),
                "valid_to": valid_to.isoformat() if valid_to else None,
                "definition": definition(prices, rent),
            }
            r = await client.post("/tariffs", json=version, headers=headers)
            assert r.status_code == 201, r.text
        yield Env(database_url, client, headers, operator.name, lease_id)


async def move(env: Env, to: str, **extra: Any) -> httpx.Response:
    return await env.client.post(
        f"/leases/{env.lease_id}/transitions", json={"to": to, **extra}, headers=env.operator
    )


def field_of(r: httpx.Response) -> list[Any]:
    assert r.status_code == 422, r.text
    return [d["loc"] for d in r.json()["detail"]]


async def test_effective_times_are_checked_and_an_unknown_field_is_refused(env: Env) -> None:
    # "at" is not a field: refused, named (it was silently ignored: issue 16, item 16)
    r = await move(env, "installing", at=local(11, 1, 10).isoformat())
    assert field_of(r) == [["body", "at"]]
    future = datetime.now(UTC) + timedelta(hours=1)
    r = await move(env, "installing", effective_at=future.isoformat())
    assert field_of(r) == [["body", "effective_at"]]
    assert "in the future" in r.json()["detail"][0]["msg"]
    r = await move(env, "installing", effective_at=local(10, 19).isoformat())  # before approval
    assert field_of(r) == [["body", "effective_at"]]
    assert "before the lease's previous transition" in r.json()["detail"][0]["msg"]
    r = await move(env, "installing", effective_at="2026-11-01T10:00:00")  # no offset
    assert field_of(r) == [["body", "effective_at"]]
    lease = (await env.client.get(f"/leases/{env.lease_id}", headers=env.operator)).json()
    assert lease["state"] == "contracted"  # nothing of the refused moves was kept


async def test_a_lease_entered_late_bills_its_past_month(env: Env) -> None:
    entered_from = datetime.now(UTC)
    for to, day in (("installing", 1), ("acceptance_test", 2), ("in_service", 3)):
        r = await move(env, to, effective_at=local(11, day, 10).isoformat(), note="entered late")
        assert r.status_code == 200, r.text
    lease = r.json()
    assert lease["state"] == "in_service"
    assert lease["starts_on"] == "2026-11-03"  # no term start: the day it went into service

    # One effective time may not go back before the last.
    r = await move(env, "suspended", effective_at=local(11, 2).isoformat())
    assert field_of(r) == [["body", "effective_at"]]

    history = await env.client.get(f"/leases/{env.lease_id}/history", headers=env.operator)
    rows = history.json()
    assert [(h["state"], h["since"]) for h in rows[1:]] == [
        (to, local(11, day, 10).astimezone(UTC).isoformat().replace("+00:00", "Z"))
        for to, day in (("installing", 1), ("acceptance_test", 2), ("in_service", 3))
    ]
    for h in rows[1:]:
        assert h["by"] == env.operator_name
        assert datetime.fromisoformat(h["entered_at"]) >= entered_from - timedelta(seconds=5)
    admin = bearer(add_user(env.url, "admin"))
    entries = (await env.client.get("/audit", params={"resource": "lease"}, headers=admin)).json()[
        "items"
    ]
    assert [e["after"]["effective_at"] for e in reversed(entries)] == [
        local(11, day, 10).isoformat() for day in (1, 2, 3)
    ]
    assert {e["actor"] for e in entries} == {env.operator_name}

    r = await env.client.post("/bills/generate", json={"month": "2026-11"}, headers=env.operator)
    assert r.status_code == 200, r.text
    (generated,) = r.json()
    bill = (await env.client.get(f"/bills/{generated['bill']['id']}", headers=env.operator)).json()
    assert lines_of(bill) == normal(EXPECTED_LINES)
    assert bill["total_amount"] == TOTAL


async def test_the_demo_dates_its_leases_through_the_lease_transition(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """The demo's leases go into service on the 1st through the route's own store
    function (ms.lease_transition), so they show starts_on and an ordered history
    whose entry times are now (it used to write the history and state directly and
    left starts_on null: issue 16, items 7 and 19)."""
    tz = ZoneInfo("Asia/Shanghai")
    site = with_capacity(demo_site(20, modbus_base_port=29700))
    await prepare_database(fresh_database_url, site)
    began = datetime.now(UTC)
    seeded = await seed_mounting(fresh_database_url, site, load_catalog(), tz, tmp_path)
    assert seeded.since is not None
    assert seeded.leases > 0
    with psycopg.connect(fresh_database_url) as conn:
        leases = conn.execute("SELECT id, state, starts_on FROM leases ORDER BY id").fetchall()
        assert len(leases) == seeded.leases
        for lease_id, state, starts_on in leases:
            assert (state, starts_on) == ("in_service", seeded.since.date())
            history = conn.execute(
                "SELECT state, since, entered_at, by FROM lease_history"
                " WHERE lease_id = %s ORDER BY since, id",
                (lease_id,),
            ).fetchall()
            assert [(s, t) for s, t, _, _ in history] == [
                ("contracted", seeded.since - timedelta(days=3)),
                ("installing", seeded.since - timedelta(days=2)),
                ("acceptance_test", seeded.since - timedelta(days=1)),
                ("in_service", seeded.since),
            ]
            assert all(e >= began - timedelta(seconds=5) for _, _, e, _ in history)
            assert {b for *_, b in history} == {"demo"}


async def test_a_port_switch_takes_its_commands_outcome_whichever_ends_first(
    env: Env,
) -> None:
    """Issue 16, item 18: the lease recorded only that the switch was sent. A command
    that ended before the lease was written is taken at the write; one that ends
    after is copied to the lease when it ends."""
    opened = open_pool(env.url)
    await opened.open()
    store = CommandStore(opened)
    try:
        early = await store.create(DEVICE, "switch_port", {"port": 1, "on": True})
        await store.finished(early["id"], "failed", error="port relay stuck")
        ask = {"on": True, "at": datetime.now(UTC), "sent": True, "command_id": str(early["id"])}
        async with opened.connection() as conn, conn.transaction():
            row = await ms.lease_port_switch(conn, env.lease_id, ask)
        switch = row["port_switch"]
        assert (switch["state"], switch["command_error"]) == ("failed", "port relay stuck")
        assert switch["finished_at"] is not None

        late = await store.create(DEVICE, "switch_port", {"port": 1, "on": False})
        ask = ask | {"on": False, "command_id": str(late["id"])}
        async with opened.connection() as conn, conn.transaction():
            row = await ms.lease_port_switch(conn, env.lease_id, ask)
        assert (row["port_switch"]["state"], row["port_switch"].get("finished_at")) == (
            "pending",
            None,
        )
        await store.finished(late["id"], "succeeded")
        got = (await env.client.get(f"/leases/{env.lease_id}", headers=env.operator)).json()
        assert got["port_switch"]["command_id"] == str(late["id"])
        assert (got["port_switch"]["state"], got["port_switch"]["command_error"]) == (
            "succeeded",
            None,
        )
        assert got["port_switch"]["finished_at"] is not None
    finally:
        await opened.close()


async def test_bill_numbers_come_quantised(env: Env) -> None:
    """Issue 16, item 17: a day's rent of 450 / 31 read 14.51612903225806451612903226,
    and float readings gave energy like 115.819999. December's bill (the lease is in
    service since 11-03): the unit price to 4 decimals, kWh to 1 Wh, money to the fen;
    the amounts still from the exact price."""
    last_ts, last = readings()[-1]
    more, value = [], last
    for k in range(1, 4):
        value = value + 0.1 + 0.2  # float steps: 0.30000000000000004 each
        more.append((last_ts + timedelta(minutes=15 * k), value))
    store_readings(env.url, more)
    r = await env.client.post(
        "/bills/generate",
        json={"month": "2026-12", "tenant": TENANT, "provisional": True},
        headers=env.operator,
    )
    assert r.status_code == 200, r.text
    (generated,) = r.json()
    bill = (await env.client.get(f"/bills/{generated['bill']['id']}", headers=env.operator)).json()
    rent = [ln for ln in bill["lines"] if ln["kind"] == "rent"]
    assert rent
    assert {ln["unit_price"] for ln in rent} == {"14.5161"}
    for ln in rent:
        days = Decimal(ln["quantity"])
        assert ln["amount"] == str(money(Decimal(450) / 31 * days))
    energy = [ln for ln in bill["lines"] if ln["kind"] == "energy"]
    assert energy
    assert all(Decimal(ln["quantity"]).as_tuple().exponent == -3 for ln in energy), energy
    assert bill["energy_kwh"] == "0.900", bill["energy_kwh"]
    r = await env.client.get(f"/bills/{bill['id']}/lines.csv", headers=env.operator)
    assert "14.5161," in r.text
    assert "14.51612" not in r.text
