"""Metering, tariffs and bills against a real database, through the API.

A port-meter-4 on P0001, port 1 (4 kW) leased by tn-telecom, in service from
2026-11-03 10:00 (site time). Readings every 15 minutes at hh:07:30, hh:22:30,
… (so an interval can cross an hour), with a 32-bit wrap, a momentary zero, a
meter reset and one interval above rated power; the tariff changes on 11-16.
Every expected number below is worked out by hand in the comments.
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

from gateway.config import Settings
from tests.support import add_user, api_client, bearer, count, prepare_database

CST = ZoneInfo("Asia/Shanghai")
TENANT, OTHER = "tn-telecom", "tn-other"
DEVICE, PORT = "P0001-pm", "P0001-port1"
MOD = Decimal("42949672.96")  # uint32 x 0.01 kWh
Q = timedelta(minutes=15)

# Energy of the interval that ends at each reading (local "MM-DD HH:MM").
DELTAS = {
    # before the lease is in service: not billed
    "11-02 03:07": "0.5",
    "11-02 03:22": "0.5",
    # 11-05 peak (08-11): 4 x 0.5, the counter wraps at 42949672.96 on the way
    "11-05 08:22": "0.5",
    "11-05 08:37": "0.5",
    "11-05 08:52": "0.5",
    "11-05 09:07": "0.5",
    # 11-10: 07:37:30-07:52:30 valley; 07:52:30-08:07:30 half valley, half peak
    "11-10 07:52": "0.5",
    "11-10 08:07": "0.5",
    # 11-12: reset to 0 at 12:07:30, then 3 x 0.25 flat
    "11-12 12:22": "0.25",
    "11-12 12:37": "0.25",
    "11-12 12:52": "0.25",
    # across the tariff change at 11-16 00:00: 1.25 flat (v1) + 0.75 valley (v2)
    "11-15 23:37": "0.5",
    "11-15 23:52": "0.5",
    "11-16 00:07": "0.5",
    "11-16 00:22": "0.5",
    # 11-20 peak (18-22), tariff v2
    "11-20 19:22": "0.5",
    "11-20 19:37": "0.5",
    "11-20 19:52": "0.5",
    "11-20 20:07": "0.5",
    # 11-25 flat: 1.5 kWh in 15 min at 4 kW: 1 billed, 0.5 for review
    "11-25 15:07": "1.5",
}
RESET_AT = "11-12 12:07"
GLITCH_AT = "11-06 14:07"  # a momentary 0; as a reset it would bill the whole counter

PRICES_V1 = {"sharp": "1.5", "peak": "1.00", "flat": "0.60", "valley": "0.30"}
PRICES_V2 = {"sharp": "1.8", "peak": "1.20", "flat": "0.70", "valley": "0.35"}
SEASON = {
    "months": [11, 12],
    "ranges": [
        {"period": "valley", "start": 0, "end": 8},
        {"period": "peak", "start": 8, "end": 11},
        {"period": "sharp", "start": 11, "end": 12},
        {"period": "peak", "start": 18, "end": 22},
    ],
}


def definition(prices: dict[str, str], rent: str) -> dict[str, Any]:
    return {
        "energy": {"prices": prices, "seasons": [SEASON]},
        "rent": {"slot_types": {"standard": rent}},
        "maintenance_fee": "60",
    }


def local(month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=CST)


def readings(extra: dict[str, str] | None = None) -> list[tuple[datetime, float]]:
    """The counter from 10-30 to 12-02 (local), one reading every 15 minutes."""
    deltas = DELTAS | (extra or {})
    out = []
    counter = Decimal("42949671.00")
    t = local(10, 30, 0, 7) + timedelta(seconds=30)
    while t < local(12, 2):
        key = t.strftime("%m-%d %H:%M")
        if key == RESET_AT:
            counter = Decimal(0)
        counter = (counter + Decimal(deltas.get(key, "0"))) % MOD
        value = Decimal(0) if key == GLITCH_AT else counter
        out.append((t.astimezone(UTC), float(value)))
        t += Q
    return out


def store_readings(url: str, rows: list[tuple[datetime, float]]) -> None:
    """As the telemetry writer does: a reading stored twice is one row."""
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO telemetry (ts, device_id, metric, value) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            [(ts, DEVICE, "port1_energy_kwh", v) for ts, v in rows],
        )


@dataclass
class Env:
    url: str
    client: httpx.AsyncClient
    manager: dict[str, str]
    maintainer: dict[str, str]
    tenant: dict[str, str]
    other: dict[str, str]


def seed(url: str) -> None:
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
            " VALUES (%s, 'P0001', %s, 1, 4000), ('P0001-port2', 'P0001', %s, 2, 4000)",
            (PORT, DEVICE, DEVICE),
        )
        lease = conn.execute(
            "INSERT INTO leases (tenant_id, pole_id, state, slot_id, port_id, rates)"
            " VALUES (%s, 'P0001', 'in_service', 'P0001-arm', %s, %s) RETURNING id",
            (TENANT, PORT, Jsonb({"tariff": "city"})),
        ).fetchone()
        assert lease is not None
        conn.execute(
            "INSERT INTO lease_history (lease_id, state, since) VALUES (%s, 'contracted', %s),"
            " (%s, 'in_service', %s)",
            (lease[0], local(10, 20), lease[0], local(11, 3, 10)),
        )
        other = conn.execute(
            "INSERT INTO leases (tenant_id, pole_id, state, port_id)"
            " VALUES (%s, 'P0001', 'contracted', 'P0001-port2') RETURNING id",
            (OTHER,),
        ).fetchone()
        assert other is not None
    store_readings(url, readings())


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    await prepare_database(database_url)
    seed(database_url)
    settings = Settings(database_url=database_url)
    async with api_client(settings, base_url="http://api/api/v1") as client:
        yield Env(
            database_url,
            client,
            bearer(add_user(database_url, "operator")),
            bearer(add_user(database_url, "maintainer")),
            bearer(add_user(database_url, "tenant", tenant=TENANT)),
            bearer(add_user(database_url, "tenant", tenant=OTHER)),
        )


async def test_tariff_versions_may_not_overlap(env: Env) -> None:
    v1 = {
        "name": "city",
        "valid_from": local(1, 1).isoformat(),
        "valid_to": local(11, 16).isoformat(),
        "definition": definition(PRICES_V1, "300"),
    }
    r = await env.client.post("/tariffs", json=v1, headers=env.maintainer)
    assert r.status_code == 403
    r = await env.client.post("/tariffs", json=v1, headers=env.manager)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1
    v2 = v1 | {"valid_from": local(11, 16).isoformat(), "valid_to": None}
    v2["definition"] = definition(PRICES_V2, "450")
    r = await env.client.post("/tariffs", json=v2, headers=env.manager)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2
    clash = v1 | {"valid_from": local(12, 1).isoformat(), "valid_to": None}
    r = await env.client.post("/tariffs", json=clash, headers=env.manager)
    assert r.status_code == 409
    assert r.json()["detail"]["conflicts_with"]["version"] == 2
    bad = v1 | {"definition": {"energy": {"prices": {"flat": "1"}, "seasons": [SEASON]}}}
    r = await env.client.post("/tariffs", json=bad | {"name": "x"}, headers=env.manager)
    assert r.status_code == 422
    r = await env.client.get("/tariffs?name=city", headers=env.maintainer)
    assert [t["version"] for t in r.json()["items"]] == [1, 2]
    assert (await env.client.get("/tariffs", headers=env.tenant)).status_code == 403
    assert count(env.url, "SELECT count(*) FROM audit_log WHERE resource = 'tariff'") == 2


EXPECTED_LINES = [
    # (kind, period, quantity, unit price, amount)
    # v1 peak: 2 (11-05, across the wrap) + 0.25 (11-10 08:00-08:07:30) = 2.25 x 1.00
    ("energy", "peak", "2.25", "1.00", "2.25"),
    # v1 flat: 0.75 after the reset (11-12) + 1.25 (11-15 23:22:30-24:00) = 2 x 0.60
    ("energy", "flat", "2", "0.60", "1.20"),
    # v1 valley: 0.75 (11-10 07:37:30-08:00) x 0.30 = 0.225 -> 0.23
    ("energy", "valley", "0.75", "0.30", "0.23"),
    # v2 peak: 2 (11-20) x 1.20
    ("energy", "peak", "2", "1.20", "2.40"),
    # v2 flat: 1 of the 1.5 (11-25; capped at 4 kW x 15 min) x 0.70
    ("energy", "flat", "1", "0.70", "0.70"),
    # v2 valley: 0.75 (11-16 00:00-00:22:30) x 0.35 = 0.2625 -> 0.26
    ("energy", "valley", "0.75", "0.35", "0.26"),
    # in service from the 3rd: days 3-15 on v1 (13), 16-30 on v2 (15), of 30
    ("rent", None, "13", "10", "130.00"),  # 300 / 30 a day
    ("maintenance", None, "13", "2", "26.00"),  # 60 / 30
    ("rent", None, "15", "15", "225.00"),  # 450 / 30
    ("maintenance", None, "15", "2", "30.00"),
]
TOTAL = "418.04"  # 7.04 energy + 355.00 rent + 56.00 maintenance


def lines_of(bill: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (
            ln["kind"],
            ln["period"],
            str(Decimal(ln["quantity"]).normalize()),
            str(Decimal(ln["unit_price"]).normalize()),
            ln["amount"],
        )
        for ln in bill["lines"]
    ]


def normal(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [
        (k, p, str(Decimal(q).normalize()), str(Decimal(u).normalize()), a)
        for k, p, q, u, a in rows
    ]


async def generate(env: Env, **body: str) -> list[dict[str, Any]]:
    r = await env.client.post("/bills/generate", json=body, headers=env.manager)
    assert r.status_code == 200, r.text
    result: list[dict[str, Any]] = r.json()
    return result


async def test_monthly_bill_line_by_line(env: Env) -> None:
    (generated,) = await generate(env, month="2026-11")
    assert generated["outcome"] == "created"
    bill_id = generated["bill"]["id"]
    r = await env.client.get(f"/bills/{bill_id}", headers=env.tenant)
    assert r.status_code == 200
    bill = r.json()
    assert (bill["tenant_id"], bill["month"], bill["state"]) == (TENANT, "2026-11", "draft")
    assert lines_of(bill) == normal(EXPECTED_LINES)
    assert Decimal(bill["energy_kwh"]) == Decimal("8.75")
    assert bill["energy_amount"] == "7.04"
    assert bill["rent_amount"] == "355.00"
    assert bill["maintenance_amount"] == "56.00"
    assert bill["total_amount"] == TOTAL
    flags = {ln["period"]: ln["flags"] for ln in bill["lines"][:3]}
    assert "wrapped" in flags["peak"]
    assert bill["lines"][4]["flags"] == ["capped"]
    excess = count(
        env.url,
        "SELECT count(*) FROM usage_flags WHERE port_id = %s AND excess_kwh = 0.5",
        PORT,
    )
    assert excess == 1


async def test_replay_and_regenerate_give_the_same_bill(env: Env) -> None:
    before = (await env.client.get("/bills?month=2026-11", headers=env.manager)).json()
    (bill,) = before["items"]
    first = (await env.client.get(f"/bills/{bill['id']}", headers=env.manager)).json()
    store_readings(env.url, readings())  # the whole month delivered again
    (again,) = await generate(env, month="2026-11", tenant=TENANT)
    assert again["outcome"] == "replaced"
    assert again["bill"]["id"] == bill["id"]
    second = (await env.client.get(f"/bills/{bill['id']}", headers=env.manager)).json()
    assert lines_of(second) == lines_of(first)
    assert second["total_amount"] == TOTAL
    assert count(env.url, "SELECT count(*) FROM bills") == 1


async def test_tenants_see_only_their_own(env: Env) -> None:
    (bill,) = (await env.client.get("/bills", headers=env.tenant)).json()["items"]
    assert (await env.client.get("/bills", headers=env.other)).json()["items"] == []
    r = await env.client.get("/bills?tenant=" + TENANT, headers=env.other)
    assert r.json()["items"] == []  # the tenant filter is forced to their own
    assert (await env.client.get(f"/bills/{bill['id']}", headers=env.other)).status_code == 404
    r = await env.client.get(
        "/usage",
        params={"port": PORT, "start": local(11, 1).isoformat(), "end": local(12, 1).isoformat()},
        headers=env.other,
    )
    assert r.status_code == 404
    r = await env.client.post("/bills/generate", json={"month": "2026-11"}, headers=env.tenant)
    assert r.status_code == 403


async def test_usage_by_interval_and_period(env: Env) -> None:
    params = {
        "start": local(11, 10, 7).isoformat(),
        "end": local(11, 10, 9).isoformat(),
        "bucket": "1h",
    }
    r = await env.client.get("/usage", params=params, headers=env.tenant)
    assert r.status_code == 200, r.text
    (port,) = r.json()["ports"]
    assert port["port_id"] == PORT
    assert port["tenant_id"] == TENANT
    buckets = {
        b["start"]: {k: str(Decimal(v).normalize()) for k, v in b["periods"].items()}
        for b in port["buckets"]
    }
    start7 = local(11, 10, 7).astimezone(UTC).isoformat().replace("+00:00", "Z")
    start8 = local(11, 10, 8).astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert buckets[start7] == {"valley": "0.75"}
    assert buckets[start8] == {"peak": "0.25"}
    assert Decimal(port["kwh"]) == 1
    assert port["gaps"] == []

    day = {"start": local(11, 6).isoformat(), "end": local(11, 7).isoformat(), "bucket": "1d"}
    r = await env.client.get("/usage", params=day | {"port": PORT}, headers=env.maintainer)
    (port,) = r.json()["ports"]
    assert Decimal(port["kwh"]) == 0  # the momentary zero is no energy
    assert ["glitch"] in [f["flags"] for f in port["flags"]]
    # Before the lease was in service: on the port, but not the tenant's.
    early = {"start": local(11, 2).isoformat(), "end": local(11, 3).isoformat()}
    r = await env.client.get("/usage", params=early | {"port": PORT}, headers=env.maintainer)
    assert Decimal(r.json()["ports"][0]["kwh"]) == 1
    r = await env.client.get("/usage", params=early, headers=env.tenant)
    assert sum(Decimal(p["kwh"]) for p in r.json()["ports"]) == 0
    r = await env.client.get("/usage", params=early, headers=env.maintainer)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "tenant"]


async def test_gaps_are_reported(env: Env) -> None:
    params = {
        "port": "P0001-port2",
        "start": local(11, 1).isoformat(),
        "end": local(11, 2).isoformat(),
    }
    r = await env.client.get("/usage", params=params, headers=env.manager)
    (port,) = r.json()["ports"]
    assert port["gaps"] == [
        {
            "start": local(11, 1).astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "end": local(11, 2).astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "duration_s": 86400.0,
        }
    ]


async def test_meter_replacement_is_recorded(env: Env) -> None:
    body = {
        "replaced_at": local(12, 5, 10).isoformat(),
        "old_final_kwh": "12.5",
        "new_first_kwh": "0",
    }
    path = f"/ports/{PORT}/meter-replacements"
    assert (await env.client.post(path, json=body, headers=env.maintainer)).status_code == 403
    r = await env.client.post(path, json=body, headers=env.manager)
    assert r.status_code == 201, r.text
    assert r.json()["port_id"] == PORT
    r = await env.client.post("/ports/nope/meter-replacements", json=body, headers=env.manager)
    assert r.status_code == 404
    r = await env.client.post(path, json=body | {"old_final_kwh": "-1"}, headers=env.manager)
    assert r.status_code == 422


async def test_an_issued_bill_never_changes(env: Env) -> None:
    (bill,) = (await env.client.get("/bills", headers=env.manager)).json()["items"]
    r = await env.client.post(f"/bills/{bill['id']}/issue", headers=env.tenant)
    assert r.status_code == 403
    r = await env.client.post(f"/bills/{bill['id']}/issue", headers=env.manager)
    assert r.status_code == 200
    issued = r.json()
    assert issued["state"] == "issued"
    # Late readings that would change the month, then a regeneration: nothing moves.
    late = [(t, v) for t, v in readings({"11-28 02:07": "1"}) if t >= local(11, 28).astimezone(UTC)]
    with psycopg.connect(env.url) as conn:
        conn.execute(
            "DELETE FROM telemetry WHERE device_id = %s AND ts >= %s", (DEVICE, local(11, 28))
        )
    store_readings(env.url, late)
    (again,) = await generate(env, month="2026-11")
    assert again["outcome"] == "issued, unchanged"
    after = (await env.client.get(f"/bills/{bill['id']}", headers=env.manager)).json()
    assert after == issued
    r = await env.client.post(f"/bills/{bill['id']}/issue", headers=env.manager)
    assert r.status_code == 409
    assert (await env.client.post("/bills/999999/issue", headers=env.manager)).status_code == 404


async def test_no_valid_tariff_is_a_conflict(env: Env) -> None:
    r = await env.client.post("/bills/generate", json={"month": "2025-11"}, headers=env.manager)
    assert r.status_code == 200
    assert r.json() == []  # nobody in service then
    r = await env.client.post("/bills/generate", json={"month": "2026-13"}, headers=env.manager)
    assert r.status_code == 422


async def test_a_second_bill_run_of_a_month_while_one_runs_is_a_conflict(env: Env) -> None:
    # Another gateway (a replica) is running the month's bills: it holds the
    # month's bill-run lock for the run.
    with psycopg.connect(env.url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(hashtext('polegw bill run ' || %s))", ("2026-11",))
        r = await env.client.post("/bills/generate", json={"month": "2026-11"}, headers=env.manager)
        assert r.status_code == 409
        assert r.json()["detail"]["month"] == "2026-11"
        assert "in progress" in r.json()["detail"]["msg"]
        # Another month is not held up.
        r = await env.client.post("/bills/generate", json={"month": "2025-11"}, headers=env.manager)
        assert r.status_code == 200
    # That run is over: this one goes ahead, and lets the lock go after it.
    (first,) = await generate(env, month="2026-11")
    (second,) = await generate(env, month="2026-11")
    assert second["bill"]["id"] == first["bill"]["id"]
