"""A month's bill with credits for unusable time, worked out by hand to the fen.

tn-telecom has two leases in November 2026 (30 days, site time Asia/Shanghai):

- lease A on P0001: slot P0001-arm (type standard) and port P0001-port1 (a
  port-meter-4, 4 kW), in service since 10-20, so all month;
- lease B on P0002: slot P0002-top (position top) and compartment P0002-c1,
  in service from 11-10 14:00 (mid-month).

Tariff "metro" v1 is open-ended at first, is then ended through the API at
11-15 00:00, and v2 starts there. A power_outage emergency on P0002 from 11-20
09:00 to 13:00 (four hours) is credited to lease B; an sos_call on P0001 is not
(the policy does not list it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from gateway.api.app import create_app
from gateway.api.routes import outages
from gateway.config import Settings
from gateway.service import open_pool
from tests.support import add_user, api_context, bearer, count, prepare_database

CST = ZoneInfo("Asia/Shanghai")
TENANT = "tn-telecom"
DEVICE, PORT = "P0001-pm", "P0001-port1"
Q = timedelta(minutes=15)

# Energy of the 15-minute interval ending at each reading (local "MM-DD HH:MM";
# readings at hh:07:30, hh:22:30, …, so each of these lies inside one hour).
DELTAS = {
    "11-05 09:22": "0.8",  # v1 peak (08-12)
    "11-05 09:37": "0.8",  # v1 peak
    "11-10 03:22": "0.95",  # v1 valley (00-08)
    "11-10 03:37": "0.95",  # v1 valley
    "11-16 15:22": "0.9",  # v2 flat
    "11-25 10:22": "0.35",  # v2 peak
}
SEASON = {
    "months": [11],
    "ranges": [
        {"period": "valley", "start": 0, "end": 8},
        {"period": "peak", "start": 8, "end": 12},
    ],
}
CREDITS = {"emergencies": {"power_outage": "1"}, "outages": {"maintenance": "0.5"}}
V1 = {
    "energy": {"prices": {"flat": "0.60", "peak": "1.00", "valley": "0.30"}, "seasons": [SEASON]},
    "rent": {
        "slot_types": {"standard": "310"},
        "positions": {"top": "455"},
        "compartment": "95",
        "credits": CREDITS,
    },
    "maintenance_fee": "60",
}
V2 = {
    "energy": {"prices": {"flat": "0.73", "peak": "1.20", "valley": "0.35"}, "seasons": [SEASON]},
    "rent": {
        "slot_types": {"standard": "320"},
        "positions": {"top": "545"},
        "compartment": "120",
        "credits": CREDITS,
    },
    "maintenance_fee": "65",
}

# The bill, line by line, by hand. Rent and maintenance: monthly x days / 30,
# rounded half up once per line. Credit: share x (slot + compartment +
# maintenance) / (30 x 24) per hour x hours, rounded once, negated.
#
#  lease  kind         tariff  quantity  unit price            amount
#  A      energy peak  v1      1.6 kWh   1.00                  1.60
#  A      energy valley v1     1.9 kWh   0.30                  0.57
#  A      energy peak  v2      0.35 kWh  1.20                  0.42
#  A      energy flat  v2      0.9 kWh   0.73         0.657 -> 0.66
#  A      rent slot    v1      14 days   310/30     144.666.. -> 144.67
#  A      maintenance  v1      14 days   60/30 = 2            28.00
#  A      rent slot    v2      16 days   320/30     170.666.. -> 170.67
#  A      maintenance  v2      16 days   65/30       34.666.. -> 34.67
#  B      rent top     v1      5 days    455/30      75.833.. -> 75.83   (days 10-14)
#  B      compartment  v1      5 days    95/30       15.833.. -> 15.83
#  B      maintenance  v1      5 days    60/30 = 2            10.00
#  B      rent top     v2      16 days   545/30     290.666.. -> 290.67  (days 15-30)
#  B      compartment  v2      16 days   120/30 = 4           64.00
#  B      maintenance  v2      16 days   65/30       34.666.. -> 34.67
#  B      credit       v2      4 h       -(545+120+65)/720 = -1.01388..
#                                        x 4 = -4.0555.. ->   -4.06
#
#  energy 1.60 + 0.57 + 0.42 + 0.66 = 3.25
#  rent 144.67 + 170.67 + 75.83 + 15.83 + 290.67 + 64.00 = 761.67
#  maintenance 28.00 + 34.67 + 10.00 + 34.67 = 107.34
#  credit -4.06
#  total 3.25 + 761.67 + 107.34 - 4.06 = 868.20
EXPECTED = [
    # (lease, kind, period, quantity, amount)
    ("A", "energy", "peak", "1.6", "1.60"),
    ("A", "energy", "valley", "1.9", "0.57"),
    ("A", "energy", "peak", "0.35", "0.42"),
    ("A", "energy", "flat", "0.9", "0.66"),
    ("A", "rent", None, "14", "144.67"),
    ("A", "maintenance", None, "14", "28.00"),
    ("A", "rent", None, "16", "170.67"),
    ("A", "maintenance", None, "16", "34.67"),
    ("B", "rent", None, "5", "75.83"),
    ("B", "rent", None, "5", "15.83"),
    ("B", "maintenance", None, "5", "10.00"),
    ("B", "rent", None, "16", "290.67"),
    ("B", "rent", None, "16", "64.00"),
    ("B", "maintenance", None, "16", "34.67"),
    ("B", "credit", None, "4", "-4.06"),
]
TOTAL = "868.20"


def local(month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=CST)


def readings() -> list[tuple[datetime, float]]:
    out = []
    counter = Decimal("1500.00")
    t = local(10, 30, 0, 7) + timedelta(seconds=30)
    while t < local(12, 2):
        counter += Decimal(DELTAS.get(t.strftime("%m-%d %H:%M"), "0"))
        out.append((t.astimezone(UTC), float(counter)))
        t += Q
    return out


@dataclass
class Env:
    url: str
    client: httpx.AsyncClient
    manager: dict[str, str]
    maintainer: dict[str, str]
    tenant: dict[str, str]
    leases: dict[str, int]


def seed(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO devices (id, pole_id, profile, transport)"
            " VALUES (%s, 'P0001', 'port-meter-4', 'modbus')",
            (DEVICE,),
        )
        conn.execute(
            "INSERT INTO slots (id, pole_id, position, slot_type, max_load_kg,"
            " max_wind_area_m2, max_power_w) VALUES"
            " ('P0001-arm', 'P0001', 'arm-east', 'standard', 30, 1, 4000),"
            " ('P0002-top', 'P0002', 'top', 'standard', 30, 1, 4000)"
        )
        conn.execute(
            "INSERT INTO compartments (id, pole_id, name, units) VALUES"
            " ('P0002-c1', 'P0002', 'cabinet 1', 2)"
        )
        conn.execute(
            "INSERT INTO ports (id, pole_id, meter_device_id, port_no, rated_w)"
            " VALUES (%s, 'P0001', %s, 1, 4000)",
            (PORT, DEVICE),
        )
        leases = {}
        for name, pole, slot, port, compartment, since in (
            ("A", "P0001", "P0001-arm", PORT, None, local(10, 20)),
            ("B", "P0002", "P0002-top", None, "P0002-c1", local(11, 10, 14)),
        ):
            row = conn.execute(
                "INSERT INTO leases (tenant_id, pole_id, state, slot_id, port_id,"
                " compartment_id, rates) VALUES (%s, %s, 'in_service', %s, %s, %s, %s)"
                " RETURNING id",
                (TENANT, pole, slot, port, compartment, Jsonb({"tariff": "metro"})),
            ).fetchone()
            assert row is not None
            leases[name] = row[0]
            conn.execute(
                "INSERT INTO lease_history (lease_id, state, since) VALUES"
                " (%s, 'contracted', %s), (%s, 'in_service', %s)",
                (row[0], local(10, 1), row[0], since),
            )
        # Four hours without power on P0002 (credited), a call on P0001 (not).
        conn.execute(
            "INSERT INTO emergencies (type, state, title, pole_id, opened_by, opened_at,"
            " resolved_at) VALUES ('power_outage', 'resolved', 'feeder cut', 'P0002', 'op',"
            " %s, %s), ('sos_call', 'resolved', 'call', 'P0001', 'op', %s, %s)",
            (local(11, 20, 9), local(11, 20, 13), local(11, 21, 10), local(11, 21, 12)),
        )
        conn.cursor().executemany(
            "INSERT INTO telemetry (ts, device_id, metric, value) VALUES (%s, %s, %s, %s)",
            [(ts, DEVICE, "port1_energy_kwh", v) for ts, v in readings()],
        )
    return leases


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    await prepare_database(database_url)
    leases = seed(database_url)
    settings = Settings(database_url=database_url)
    pool: AsyncConnectionPool = open_pool(database_url)
    await pool.open()
    app = create_app(api_context(settings, pool))
    if not any(getattr(r, "path", "").startswith("/api/v1/outages") for r in app.routes):
        app.include_router(outages.router, prefix="/api/v1")  # until app.py registers it
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api/api/v1") as client:
        yield Env(
            database_url,
            client,
            bearer(add_user(database_url, "operator")),
            bearer(add_user(database_url, "maintainer")),
            bearer(add_user(database_url, "tenant", tenant=TENANT)),
            leases,
        )
    await pool.close()


async def generate(env: Env) -> dict[str, Any]:
    r = await env.client.post("/bills/generate", json={"month": "2026-11"}, headers=env.manager)
    assert r.status_code == 200, r.text
    (generated,) = r.json()
    r = await env.client.get(f"/bills/{generated['bill']['id']}", headers=env.tenant)
    assert r.status_code == 200, r.text
    bill: dict[str, Any] = r.json()
    return bill


def lines_of(env: Env, bill: dict[str, Any]) -> list[tuple[Any, ...]]:
    name = {v: k for k, v in env.leases.items()}
    return [
        (
            name[ln["lease_id"]],
            ln["kind"],
            ln["period"],
            f"{Decimal(ln['quantity']).normalize():f}",
            ln["amount"],
        )
        for ln in bill["lines"]
    ]


async def test_an_open_tariff_version_is_ended_so_the_next_may_start(env: Env) -> None:
    v1 = {"name": "metro", "valid_from": local(1, 1).isoformat(), "definition": V1}
    r = await env.client.post("/tariffs", json=v1, headers=env.manager)
    assert r.status_code == 201, r.text
    v1_id = r.json()["id"]
    v2 = {"name": "metro", "valid_from": local(11, 15).isoformat(), "definition": V2}
    r = await env.client.post("/tariffs", json=v2, headers=env.manager)
    assert r.status_code == 409  # v1 is still open-ended
    end = {"valid_to": local(11, 15).isoformat()}
    r = await env.client.post(f"/tariffs/{v1_id}/end", json=end, headers=env.maintainer)
    assert r.status_code == 403
    early = {"valid_to": local(1, 1).isoformat()}
    r = await env.client.post(f"/tariffs/{v1_id}/end", json=early, headers=env.manager)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "valid_to"]
    r = await env.client.post(f"/tariffs/{v1_id}/end", json=end, headers=env.manager)
    assert r.status_code == 200, r.text
    assert datetime.fromisoformat(r.json()["valid_to"]) == local(11, 15)
    r = await env.client.post(f"/tariffs/{v1_id}/end", json=end, headers=env.manager)
    assert r.status_code == 409
    assert "end already" in r.json()["detail"]["msg"]
    r = await env.client.post("/tariffs/999999/end", json=end, headers=env.manager)
    assert r.status_code == 404
    r = await env.client.post("/tariffs", json=v2, headers=env.manager)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2
    audited = "SELECT count(*) FROM audit_log WHERE resource = 'tariff' AND action = 'end'"
    assert count(env.url, audited) == 1
    # A policy naming an emergency type that does not exist is refused.
    bad = V2 | {"rent": {"credits": {"emergencies": {"power_cut": "1"}}}}
    r = await env.client.post(
        "/tariffs",
        json={"name": "x", "valid_from": local(1, 1).isoformat(), "definition": bad},
        headers=env.manager,
    )
    assert r.status_code == 422
    assert "power_cut" in r.text


async def test_two_leases_tariff_change_and_emergency_credit_to_the_fen(env: Env) -> None:
    bill = await generate(env)
    assert lines_of(env, bill) == EXPECTED
    assert bill["energy_amount"] == "3.25"
    assert bill["rent_amount"] == "761.67"
    assert bill["maintenance_amount"] == "107.34"
    assert bill["credit_amount"] == "-4.06"
    assert bill["total_amount"] == TOTAL
    assert sum(Decimal(ln["amount"]) for ln in bill["lines"]) == Decimal(TOTAL)
    (credit,) = [ln for ln in bill["lines"] if ln["kind"] == "credit"]
    with psycopg.connect(env.url) as conn:
        row = conn.execute("SELECT id FROM emergencies WHERE type = 'power_outage'").fetchone()
    assert row is not None
    assert credit["emergency_id"] == row[0]
    assert credit["outage_id"] is None
    assert credit["unit"] == "h"
    assert credit["unit_price"] == "-1.0139"  # -1.013888… shown to 4 decimals (issue 16)
    assert "power_outage" in credit["label"]


async def test_regenerating_the_draft_with_credits_gives_the_same_bill(env: Env) -> None:
    first = await generate(env)
    second = await generate(env)
    assert second["id"] == first["id"]
    assert lines_of(env, second) == lines_of(env, first) == EXPECTED
    assert second["total_amount"] == TOTAL
    assert count(env.url, "SELECT count(*) FROM bills") == 1


async def test_outages_credit_by_cause_and_never_twice(env: Env) -> None:
    def outage(**kw: Any) -> dict[str, Any]:
        return {"cause": "maintenance", "description": ""} | kw

    # Port 1 (lease A) for 4 h across the tariff change, at half the hourly charges.
    across = outage(
        pole_id="P0001",
        port_id=PORT,
        start=local(11, 14, 22).isoformat(),
        end=local(11, 15, 2).isoformat(),
    )
    r = await env.client.post("/outages", json=across, headers=env.maintainer)
    assert r.status_code == 403
    r = await env.client.post("/outages", json=across, headers=env.manager)
    assert r.status_code == 201, r.text
    assert r.json()["created_by"].startswith("operator-")
    # P0002 (lease B) 11:00-15:00 on 11-20: 11-13 is the emergency's already.
    overlapping = outage(pole_id="P0002", start=local(11, 20, 11).isoformat())
    r = await env.client.post("/outages", json=overlapping, headers=env.manager)
    assert r.status_code == 201
    overlap_id = r.json()["id"]
    r = await env.client.patch(
        f"/outages/{overlap_id}", json={"end": local(11, 20, 15).isoformat()}, headers=env.manager
    )
    assert r.status_code == 200, r.text
    assert r.json()["updated_by"].startswith("operator-")
    # A cause the policy does not list: no credit.
    tenant_asked = outage(
        pole_id="P0002",
        cause="tenant_request",
        start=local(11, 22, 8).isoformat(),
        end=local(11, 22, 20).isoformat(),
    )
    assert (await env.client.post("/outages", json=tenant_asked, headers=env.manager)).is_success
    # Refusals name the field.
    for body, field in (
        (outage(pole_id="P0002", port_id=PORT, start=local(11, 1).isoformat()), "port_id"),
        (outage(pole_id="P9999", start=local(11, 1).isoformat()), "pole_id"),
        (
            outage(pole_id="P0001", start=local(11, 2).isoformat(), end=local(11, 1).isoformat()),
            "end",
        ),
        (outage(pole_id="P0001", cause="Bad Cause", start=local(11, 1).isoformat()), "cause"),
    ):
        r = await env.client.post("/outages", json=body, headers=env.manager)
        assert r.status_code == 422, (field, r.text)
        assert r.json()["detail"][0]["loc"][-1] == field
    r = await env.client.patch(
        f"/outages/{overlap_id}", json={"end": local(11, 1).isoformat()}, headers=env.manager
    )
    assert r.status_code == 422
    assert (await env.client.get("/outages", headers=env.tenant)).status_code == 403
    r = await env.client.get("/outages?pole=P0002", headers=env.maintainer)
    assert len(r.json()["items"]) == 2
    assert (await env.client.get("/outages/999999", headers=env.maintainer)).status_code == 404

    bill = await generate(env)
    credits = [ln for ln in bill["lines"] if ln["kind"] == "credit"]
    # Lease A: monthly (slot + maintenance) v1 310 + 60 = 370, v2 320 + 65 = 385.
    #   2 h x 0.5 x 370 / 720 = 0.51388.. -> -0.51 (v1, 22:00-24:00)
    #   2 h x 0.5 x 385 / 720 = 0.53472.. -> -0.53 (v2, 00:00-02:00)
    # Lease B: the emergency as before, -4.06; the outage only 13:00-15:00:
    #   2 h x 0.5 x 730 / 720 = 1.01388.. -> -1.01
    assert [
        (
            lines_of(env, {"lines": [ln]})[0][0],
            f"{Decimal(ln['quantity']).normalize():f}",
            ln["amount"],
        )
        for ln in credits
    ] == [("A", "2", "-0.51"), ("A", "2", "-0.53"), ("B", "4", "-4.06"), ("B", "2", "-1.01")]
    assert [ln["outage_id"] is not None for ln in credits] == [True, True, False, True]
    assert bill["credit_amount"] == "-6.11"
    assert bill["total_amount"] == "866.15"  # 868.20 - 0.51 - 0.53 - 1.01
    assert sum(Decimal(ln["amount"]) for ln in bill["lines"]) == Decimal("866.15")
    again = await generate(env)
    assert lines_of(env, again) == lines_of(env, bill)
    assert count(env.url, "SELECT count(*) FROM audit_log WHERE resource = 'outage'") == 4
