"""The meter-data ledger against a real database: readings arriving late, in any
order and twice end in the ledger the metering of the final readings gives,
and a bill from the ledger is the bill metered from the readings, to the fen;
late readings after a bill is issued land on the next one; clock-suspect
readings are held out; a month not over is billed only as a provisional draft.

A port-meter-4 on P0001, port 1 (4 kW, a uint32 x 0.01 kWh counter) leased by
tn-telecom from 2026-10-03 10:07:30 (site time) under tariff "city": October
in four periods (valley 0-8, peak 8-11, sharp 11-12, flat otherwise), with
gaps across resets estimated.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from gateway.adapters.billing_store import BillingStore, MonthNotEnded
from gateway.adapters.ledger_store import LedgerStore
from gateway.adapters.usage_store import UsageStore
from gateway.cli import app
from gateway.config import Settings
from gateway.core import ledger as lg
from gateway.core import metering as mt
from gateway.core.profiles import load_catalog
from gateway.core.tariffs import money
from gateway.metering_worker import MeteringWorker
from gateway.metrics import Metrics
from tests.support import add_user, api_client, bearer, opened_pool, prepare_database_sync

CST = ZoneInfo("Asia/Shanghai")
TENANT = "tn-telecom"
DEVICE, PORT, METRIC = "P0001-pm", "P0001-port1", "port1_energy_kwh"
MOD = Decimal("42949672.96")
# Readings from here on: the lease enters service, and the tariff's second
# version starts, inside 15-minute slots among them.
T0 = datetime(2026, 10, 3, 9, 20, tzinfo=CST)
VERSION_2 = datetime(2026, 10, 3, 13, 5, 10, tzinfo=CST)
PRICES = {"sharp": "1.37", "peak": "1.11", "flat": "0.73", "valley": "0.29"}
DEFINITION = {
    "energy": {
        "prices": PRICES,
        "seasons": [
            {
                "months": [10, 11, 12],
                "ranges": [
                    {"period": "valley", "start": 0, "end": 8},
                    {"period": "peak", "start": 8, "end": 11},
                    {"period": "sharp", "start": 11, "end": 12},
                ],
            }
        ],
    },
    "maintenance_fee": "0",
}
CATALOG = load_catalog()


@pytest.fixture(scope="module")
def url(database_url: str) -> str:
    prepare_database_sync(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO devices (id, pole_id, profile, transport)"
            " VALUES (%s, 'P0001', 'port-meter-4', 'modbus')",
            (DEVICE,),
        )
        conn.execute(
            "INSERT INTO ports (id, pole_id, meter_device_id, port_no, rated_w)"
            " VALUES (%s, 'P0001', %s, 1, 4000)",
            (PORT, DEVICE),
        )
        conn.execute(
            "INSERT INTO tariffs (name, version, valid_from, valid_to, definition, estimate_gaps)"
            " VALUES ('city', 1, %s, %s, %s, true), ('city', 2, %s, NULL, %s, true)",
            (
                datetime(2026, 1, 1, tzinfo=CST),
                VERSION_2,
                Jsonb(DEFINITION),
                VERSION_2,
                Jsonb(DEFINITION),
            ),
        )
        row = conn.execute(
            "INSERT INTO leases (tenant_id, pole_id, state, port_id, rates)"
            " VALUES (%s, 'P0001', 'in_service', %s, %s) RETURNING id",
            (TENANT, PORT, Jsonb({"tariff": "city"})),
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO lease_history (lease_id, state, since) VALUES (%s, 'in_service', %s)",
            (row[0], datetime(2026, 10, 3, 10, 7, 30, tzinfo=CST)),
        )
    return database_url


def clear(url: str) -> None:
    """No readings, ledger or bills for the port: each example starts afresh."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM telemetry WHERE device_id = %s", (DEVICE,))
        conn.execute("DELETE FROM meter_replacements WHERE port_id = %s", (PORT,))
        for table in (
            "meter_ledger",
            "meter_slots",
            "meter_ledger_changes",
            "meter_held",
            "meter_ports",
        ):
            conn.execute(f"DELETE FROM {table} WHERE port_id = %s", (PORT,))
        conn.execute("DELETE FROM meter_queue")
        conn.execute("DELETE FROM usage_flags")
        conn.execute(
            "DELETE FROM bill_lines WHERE bill_id IN (SELECT id FROM bills WHERE state = 'draft')"
        )
        conn.execute("DELETE FROM bills WHERE state = 'draft'")
        # Issued bills cannot go; void, they are history and a month bills afresh.
        conn.execute(
            "UPDATE bills SET state = 'void', void_reason = 'test', voided_at = now(),"
            " voided_by = 'test' WHERE state = 'issued'"
        )
        conn.execute("UPDATE tariffs SET estimate_gaps = true")


def store(url: str, rows: list[tuple[datetime, Decimal]], quality: int = 0) -> None:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO telemetry (ts, device_id, metric, value, quality)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(ts, DEVICE, METRIC, float(v), quality) for ts, v in rows],
        )


def ledger_rows(url: str, port_id: str = PORT) -> list[lg.Piece]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            'SELECT start, "end", iv_start, iv_end, kwh, est_kwh, excess_kwh, flags'
            " FROM meter_ledger WHERE port_id = %s ORDER BY start",
            (port_id,),
        ).fetchall()
    return [lg.Piece(*r) for r in rows]


def reference(url: str, port_id: str = PORT, metric: str = METRIC) -> list[lg.Piece]:
    """The metering of the final readings (the slow reference, all of them at
    once), cut into the ledger's pieces, estimates beside."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT ts, value FROM telemetry WHERE device_id = %s AND metric = %s"
            " AND quality = 0 ORDER BY ts",
            (DEVICE, metric),
        ).fetchall()
        swaps = conn.execute(
            "SELECT replaced_at, old_final_kwh, new_first_kwh FROM meter_replacements"
            " WHERE port_id = %s ORDER BY replaced_at",
            (port_id,),
        ).fetchall()
    series = lg.slot_ends(mt.Reading(ts.astimezone(UTC), mt.to_decimal(v)) for ts, v in rows)
    replacements = [mt.Replacement(a, Decimal(o), Decimal(n)) for a, o, n in swaps]
    kwargs: dict[str, Any] = {
        "rated_w": Decimal(4000),
        "modulus": MOD,
        "replacements": replacements,
        "max_gap": lg.MAX_GAP,
    }
    plain = mt.meter_reference(series, **kwargs).intervals
    estimated = mt.meter_reference(series, estimate_gaps=True, **kwargs).intervals
    changed = {i: e for i, (p, e) in enumerate(zip(plain, estimated, strict=True)) if p != e}
    return lg.pieces(plain, changed)


def energy_lines(bill: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted(
        (
            ln["tariff_id"],
            ln["period"],
            ln["estimated"],
            ln["quantity"],
            ln["amount"],
            tuple(ln["flags"]),
        )
        for ln in bill["lines"]
        if ln["kind"] == "energy"
    )


async def bill_of(billing: BillingStore, month: str, source: str) -> dict[str, Any]:
    ((bill, _),) = await billing.generate(month, TENANT, source=source)
    full = await billing.bill(bill["id"])
    assert full is not None
    return full


# ------------------------------------------------------------------ the property


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """Readings with wraps, resets, glitches, spikes, gaps, maybe a meter
    replacement; the order they arrive in, in batches, some twice."""
    n = draw(st.integers(3, 36))
    t = T0
    value = draw(st.sampled_from([Decimal("12.5"), MOD - Decimal("0.4")]))
    rows: list[tuple[datetime, Decimal]] = []
    swap: tuple[datetime, Decimal, Decimal] | None = None
    swap_at = draw(st.one_of(st.none(), st.integers(1, n - 1)))
    for i in range(n):
        minutes = draw(st.sampled_from([1, 1, 2, 5, 7, 15, 20, 75, 130]))
        t += timedelta(minutes=minutes, seconds=draw(st.sampled_from([0, 0, 17, 30])))
        # up to 1.2 x the 4 kW cap per minute (a few intervals are capped)
        value += Decimal(draw(st.integers(0, 80))) / 1000 * minutes
        kind = draw(st.sampled_from(["count"] * 8 + ["reset", "glitch", "spike"]))
        if swap_at == i:
            old_final = value % MOD
            value = Decimal(draw(st.integers(0, 50))) / 100
            swap = (t - timedelta(seconds=20), old_final, value)
            value += Decimal("0.01")
        if kind == "reset":
            value = Decimal(draw(st.integers(0, 30))) / 100
        stored = value % MOD
        if kind == "glitch":
            stored = Decimal(0)
        elif kind == "spike":
            stored = stored + 5000
        rows.append((t, stored))
    order = draw(st.permutations(range(n)))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=4)))
    batches = [list(order[a:b]) for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    again = draw(st.lists(st.integers(0, n - 1), max_size=4))  # delivered twice
    for k, i in enumerate(again):
        batches[min(len(batches) - 1, k)].append(i)
    swap_batch = draw(st.integers(0, len(batches) - 1))
    return {"rows": rows, "batches": batches, "swap": swap, "swap_batch": swap_batch}


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_ledger_equals_the_metering_of_the_final_readings(
    url: str, scenario: dict[str, Any]
) -> None:
    ledger_equals_the_metering(url, scenario)


def ledger_equals_the_metering(url: str, scenario: dict[str, Any]) -> None:
    clear(url)

    async def run() -> None:
        async with opened_pool(url) as pool:
            ledger = LedgerStore(pool, CATALOG)
            usage = UsageStore(pool, CATALOG)
            for b, batch in enumerate(scenario["batches"]):
                store(url, [scenario["rows"][i] for i in batch])
                if scenario["swap"] is not None and b == scenario["swap_batch"]:
                    at, old, new = scenario["swap"]
                    async with pool.connection() as conn, conn.transaction():
                        await usage.add_replacement(
                            conn,
                            PORT,
                            replaced_at=at,
                            old_final_kwh=old,
                            new_first_kwh=new,
                            note=None,
                        )
                await ledger.catch_up([PORT])
            got = ledger_rows(url)
            want = reference(url)
            assert [p.start for p in got] == [p.start for p in want]
            for g, w in zip(got, want, strict=True):
                assert g.same(w), (g, w)
            billing = BillingStore(pool, CATALOG, CST)
            metered = await bill_of(billing, "2026-10", "readings")
            from_ledger = await bill_of(billing, "2026-10", "ledger")
            assert energy_lines(from_ledger) == energy_lines(metered)
            assert from_ledger["total_amount"] == metered["total_amount"]

    asyncio.run(run())


def test_ledger_re_estimates_a_gap_whose_neighbours_arrive_after_another_gap(url: str) -> None:
    """Found by the property above (shrunk): flat readings, a reset across a gap,
    another gap; the readings after that one arrive in a second batch and give
    the first gap's estimate its neighbours (the reference estimates it)."""
    t0 = datetime(2026, 10, 3, 9, 21, tzinfo=CST)
    rows = [(t0 + timedelta(minutes=m), Decimal("12.50")) for m in range(5)]
    rows += [(t0 + timedelta(minutes=m), Decimal(0)) for m in (79, 80, 210)]
    rows += [(t0 + timedelta(minutes=m), Decimal("0.01")) for m in range(211, 224)]
    batches = [list(range(8)), list(range(8, len(rows)))]
    scenario = {"rows": rows, "batches": batches, "swap": None, "swap_batch": 0}
    ledger_equals_the_metering(url, scenario)


def test_ledger_rewrites_an_interval_that_new_readings_end_sooner(url: str) -> None:
    """Found by the property above: in the first batch the readings of 09:41,
    11:51 and 12:01 look like a glitch run (12:10 follows 09:21 plausibly), so
    the ledger has an interval 09:21-12:10; the second batch brings readings
    between them (no glitch then), and the piece of 09:21-09:30, far before
    them, must be rewritten as part of the interval 09:21-09:41."""
    t0 = datetime(2026, 10, 3, 9, 21, tzinfo=CST)
    values = [
        (0, "0"), (20, "13.705"), (150, "22.545"), (151, "22.591"), (152, "22.623"),
        (153, "22.623"), (160, "23.134"), (161, "23.146"), (162, "23.205"), (163, "0.21"),
        (164, "0.00"), (165, "0.053"), (166, "0.066"), (167, "0.066"), (168, "0.116"),
        (169, "0.30"), (170, "0.331"), (171, "0.392"), (172, "0.434"), (173, "0.446"),
        (174, "0.513"), (175, "0.537"), (176, "0.569"), (177, "0.620"), (178, "0.00"),
        (179, "0.067"), (180, "0.01"), (181, "0.01"), (182, "0.01"), (183, "0.01"),
    ]  # fmt: skip
    rows = [(t0 + timedelta(minutes=m), Decimal(v)) for m, v in values]
    batches = [
        [0, 21, 2, 19, 15, 24, 1, 29, 28, 6],
        [20, 13, 18, 17, 25, 16, 22, 3, 14, 9, 27, 7, 5, 23, 4, 10, 26, 11, 12, 8],
    ]
    swap = (datetime(2026, 10, 3, 12, 20, 40, tzinfo=CST), Decimal("0.120"), Decimal(0))
    scenario = {"rows": rows, "batches": batches, "swap": swap, "swap_batch": 0}
    ledger_equals_the_metering(url, scenario)


# ------------------------------------------------------------------ late data


def steady(start: datetime, end: datetime, kwh_per_min: Decimal, v0: Decimal) -> list[Any]:
    out, t, v = [], start, v0
    while t < end:
        out.append((t, v))
        t += timedelta(minutes=1)
        v += kwh_per_min
    return out


async def test_late_reading_re_meters_and_after_issue_lands_on_the_next_bill(url: str) -> None:
    clear(url)
    with psycopg.connect(url, autocommit=True) as conn:  # measured energy only
        conn.execute("UPDATE tariffs SET estimate_gaps = false")
    # 10-20, flat hours: 13:00-14:00 at 0.01 kWh a minute; then the meter is
    # dark until it comes back reset at 16:00 (a gap across a reset: what it
    # counted after 14:00 is lost, unless a late reading brings it).
    day = datetime(2026, 10, 20, 13, 0, tzinfo=CST)
    rows = steady(day, day + timedelta(hours=1), Decimal("0.01"), Decimal("100"))
    after = steady(day + timedelta(hours=3), day + timedelta(hours=4), Decimal("0.01"), Decimal(0))
    store(url, rows + after)
    async with opened_pool(url) as pool:
        billing = BillingStore(pool, CATALOG, CST)
        before = await bill_of(billing, "2026-10", "ledger")
        # A reading from 15:00 arrives late: 100.59 at 13:59, 101.50 at 15:00.
        store(url, [(day + timedelta(hours=2), Decimal("101.50"))])
        draft = await bill_of(billing, "2026-10", "ledger")
        flat = Decimal(PRICES["flat"])

        def flat_line(bill: dict[str, Any]) -> dict[str, Any]:
            line: dict[str, Any]
            (line,) = [
                ln
                for ln in bill["lines"]
                if ln["kind"] == "energy" and ln["period"] == "flat" and not ln["estimated"]
            ]
            return line

        # Its energy, 0.91 kWh (100.59 -> 101.50), at the flat price: the flat
        # line goes from 1.18 kWh (0.59 + 0.59; the reset lost the rest) to 2.09.
        assert flat_line(before)["quantity"] == Decimal("1.18")
        assert flat_line(draft)["quantity"] - flat_line(before)["quantity"] == Decimal("0.91")
        assert draft["total_amount"] - before["total_amount"] == (
            money(Decimal("2.09") * flat) - money(Decimal("1.18") * flat)
        )
        changes = await _changes(pool)
        assert changes
        assert all(r == "late reading" for r in changes)

        # Issued; then another late reading (15:45, 101.80): October's invoice
        # does not move.
        async with pool.connection() as aconn, aconn.transaction():
            issued = await billing.issue(aconn, draft["id"], by="test")
        store(url, [(day + timedelta(hours=2, minutes=45), Decimal("101.80"))])
        ((_, outcome),) = await billing.generate("2026-10", TENANT)
        assert outcome == "issued, unchanged"
        assert (await billing.bill(issued["id"])) == issued
        # The correction lands on November's bill as an adjustment line: 0.30
        # kWh more in flat (15:00-15:45 now measured), what a bill made now
        # would charge (2.39 kWh) less what was billed (2.09 kWh).
        november = await bill_of(billing, "2026-11", "ledger")
        (adj,) = [ln for ln in november["lines"] if ln["kind"] == "adjustment"]
        assert adj["corrects_bill_id"] == issued["id"]
        assert (adj["period"], adj["quantity"], adj["amount"]) == (
            "flat",
            Decimal("0.300000"),
            money(Decimal("2.39") * flat) - money(Decimal("2.09") * flat),
        )
        assert november["total_amount"] == adj["amount"]
        assert adj["unit_price"] == flat
        # Once November is issued, December carries nothing more for it.
        async with pool.connection() as aconn, aconn.transaction():
            await billing.issue(aconn, november["id"], by="test")
        assert await billing._adjustments(TENANT, "2026-12") == []


async def _changes(pool: Any) -> list[str]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT reason FROM meter_ledger_changes WHERE port_id = %s ORDER BY id", (PORT,)
        )
        return [r[0] for r in await cur.fetchall()]


# ------------------------------------------------------------------ validation


async def test_clock_suspect_readings_are_held_out_and_shown(url: str) -> None:
    clear(url)
    day = datetime(2026, 10, 21, 13, 0, tzinfo=CST)
    rows = steady(day, day + timedelta(hours=2), Decimal("0.01"), Decimal("50"))
    store(url, rows)
    async with opened_pool(url) as pool:
        billing = BillingStore(pool, CATALOG, CST)
        clean = await bill_of(billing, "2026-10", "ledger")
        # A reading stamped oddly (flagged stale by the clock check) in the
        # middle with a wild value, and one stamped far in the future.
        store(url, [(day + timedelta(minutes=30, seconds=20), Decimal("9999"))], quality=2)
        future = datetime.now(UTC) + timedelta(days=40)
        store(url, [(future, Decimal("12345"))], quality=1)
        held = await bill_of(billing, "2026-10", "ledger")
    (line,) = [ln for ln in held["lines"] if ln["kind"] == "energy"]
    (plain,) = [ln for ln in clean["lines"] if ln["kind"] == "energy"]
    assert (line["quantity"], line["amount"]) == (plain["quantity"], plain["amount"])
    assert "clock_suspect" in line["flags"]
    assert "clock_suspect" not in plain["flags"]
    settings_ = Settings(database_url=url)
    async with api_client(settings_, base_url="http://api/api/v1") as client:
        token = add_user(url, "operator")
        r = await client.get(
            "/usage",
            params={
                "port": PORT,
                "start": day.isoformat(),
                "end": (day + timedelta(hours=2)).isoformat(),
            },
            headers=bearer(token),
        )
        assert r.status_code == 200, r.text
        (port,) = r.json()["ports"]
        assert Decimal(port["kwh"]) == Decimal("1.19")  # 119 minutes x 0.01, no 9999
        assert [(h["value"], h["quality"]) for h in port["held_out"]] == [(9999.0, 2)]
        assert any("clock_suspect" in f["flags"] for f in port["flags"])


async def test_a_month_not_over_is_billed_only_as_a_provisional_draft(url: str) -> None:
    clear(url)
    now = datetime.now(CST)
    month = f"{now.year + (now.month == 12)}-{now.month % 12 + 1:02d}"  # next month
    async with opened_pool(url) as pool:
        billing = BillingStore(pool, CATALOG, CST)
        with pytest.raises(MonthNotEnded):
            await billing.generate(month, TENANT)
        ((bill, outcome),) = await billing.generate(month, TENANT, provisional=True)
        assert outcome == "created"
        assert bill["provisional"] is True
    async with api_client(Settings(database_url=url), base_url="http://api/api/v1") as client:
        token = add_user(url, "admin")
        r = await client.post("/bills/generate", json={"month": month}, headers=bearer(token))
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "month"]
        r = await client.post(f"/bills/{bill['id']}/issue", headers=bearer(token))
        assert r.status_code == 409
        assert r.json()["detail"]["provisional"] is True
    result = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["bills", "generate", "--period", month],
        env={"POLEGW_DATABASE_URL": url},
    )
    assert result.exit_code != 0
    assert "has not ended" in result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------ worker, rebuild


async def test_worker_exports_its_lag_and_rebuild_is_idempotent(url: str) -> None:
    clear(url)
    day = datetime(2026, 10, 22, 9, 0, tzinfo=CST)
    store(url, steady(day, day + timedelta(hours=3), Decimal("0.02"), Decimal("7")))
    metrics = Metrics()
    async with opened_pool(url) as pool:
        assert await MeteringWorker(pool, CATALOG, metrics).tick() == 1
    text = metrics.registry.get_sample_value("polegw_metering_lag_seconds_count")
    assert text == 1.0
    assert metrics.registry.get_sample_value("polegw_metering_pending_seconds") == 0.0
    want = reference(url)
    env = {"POLEGW_DATABASE_URL": url}
    first = await asyncio.to_thread(rebuild, env, "--from", "2026-10-01")
    assert first.exit_code == 0, first.output
    assert "0 piece(s) written" in first.output  # the worker had metered it all
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM meter_ledger WHERE port_id = %s", (PORT,))
    second = await asyncio.to_thread(rebuild, env, "--from", "2026-10-01", "--port", PORT)
    assert second.exit_code == 0, second.output
    assert f"{len(want)} piece(s) written" in second.output
    assert [p.start for p in ledger_rows(url)] == [p.start for p in want]
    bad = await asyncio.to_thread(rebuild, env, "--from", "2026-10-01", "--port", "nope")
    assert bad.exit_code != 0
    assert "--port: no port 'nope'" in bad.output


def rebuild(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, ["metering", "rebuild", *args], env=env)


# ------------------------------------------------------------------ a crash


def test_sigkill_of_the_metering_worker_leaves_the_ledger_consistent(url: str) -> None:
    """The worker killed (SIGKILL) at random moments of its work, readings (late
    ones too) arriving meanwhile: after a restart it catches up, and every port's
    ledger is the metering of its final readings, no piece twice or missing."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    clear(url)
    ports = [(f"P0001-port{n}", n) for n in (2, 3)]
    with psycopg.connect(url, autocommit=True) as conn:
        for port_id, n in ports:
            conn.execute(
                "INSERT INTO ports (id, pole_id, meter_device_id, port_no, rated_w)"
                " VALUES (%s, 'P0001', %s, %s, 4000) ON CONFLICT DO NOTHING",
                (port_id, DEVICE, n),
            )
    ports = [(PORT, 1), *ports]
    rng = random.Random(17)
    start = datetime(2026, 10, 12, 0, 0, tzinfo=CST)

    def feed(day: int, skip: int = 0) -> None:
        """Half a day of one-minute readings for each port (every `skip`-th held back)."""
        with psycopg.connect(url) as conn, conn.cursor() as cur:
            for _, n in ports:
                t0 = start + timedelta(hours=12 * day)
                cur.executemany(
                    "INSERT INTO telemetry (ts, device_id, metric, value) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    [
                        (
                            t0 + timedelta(minutes=m),
                            DEVICE,
                            f"port{n}_energy_kwh",
                            (day * 1440 + m) * 0.01 * n,
                        )
                        for m in range(1440)
                        if not (skip and m % skip == 0)
                    ],
                )

    env = os.environ | {"POLEGW_DATABASE_URL": url, "POLEGW_METERING_EVERY_S": "0.1"}

    def started() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "metering", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def steps_done() -> int:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM meter_ledger").fetchone()
        return int(row[0]) if row else 0

    kills = 0
    for day in range(3):
        feed(day, skip=7)  # late: every 7th minute comes later
        worker = started()
        before = steps_done()
        deadline = time.monotonic() + 30
        while steps_done() == before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.3))
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        kills += 1
        feed(day)  # the held-back readings arrive
    worker = started()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with psycopg.connect(url) as conn:
                row = conn.execute("SELECT count(*) FROM meter_queue").fetchone()
            if row is not None and row[0] == 0:
                break
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=20)
    assert kills == 3
    for port_id, n in ports:
        got = ledger_rows(url, port_id)
        want = reference(url, port_id, f"port{n}_energy_kwh")
        assert len(got) == len(want) > 3 * 48
        for g, w in zip(got, want, strict=True):
            assert g.same(w), (port_id, g, w)


async def test_rebuild_is_safe_while_readings_arrive_and_the_worker_runs(url: str) -> None:
    """A rebuild from the start, readings (late ones among them) committed
    meanwhile, the worker ticking beside it: afterwards the ledger is the
    metering of the final readings."""
    clear(url)
    day = datetime(2026, 10, 23, 0, 0, tzinfo=CST)
    rows = steady(day, day + timedelta(days=3), Decimal("0.01"), Decimal("300"))
    held_back = rows[5::9]
    store(url, [r for r in rows if r not in held_back][: len(rows) // 2])
    env = {"POLEGW_DATABASE_URL": url}
    rebuilding = asyncio.create_task(asyncio.to_thread(rebuild, env, "--from", "2026-10-01"))
    async with opened_pool(url) as pool:
        worker = MeteringWorker(pool, CATALOG, Metrics())
        rest = [r for r in rows if r not in held_back][len(rows) // 2 :]
        for k in range(0, len(rest), 500):
            await asyncio.to_thread(store, url, rest[k : k + 500])
            await worker.tick()
        await asyncio.to_thread(store, url, held_back)  # late
        result = await rebuilding
        assert result.exit_code == 0, result.output
        await worker.tick()
    got, want = ledger_rows(url), reference(url)
    assert [p.start for p in got] == [p.start for p in want]
    for g, w in zip(got, want, strict=True):
        assert g.same(w), (g, w)
