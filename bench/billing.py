#!/usr/bin/env python3
"""Billing benchmark: a tenant with 100 leased ports and a month of 1-minute meter
readings (4.32 M readings): how long the month's usage by tariff period and the
month's bill take from the meter-data ledger (the new path), the same metered
from the readings at billing time (the old path, as reference), what the
metering worker costs, and where the time goes.

    .venv/bin/python bench/billing.py                  # 100 ports, 2026-11, once
    .venv/bin/python bench/billing.py --ports 20 --repeats 3
    .venv/bin/python bench/billing.py --ports 100 --tenants 20   # a bill run of 20 tenants
    .venv/bin/python bench/billing.py --profile /tmp/billing.prof

One run does, on this machine, against the real PostgreSQL:

1. Set-up. A database of its own (``polegw_bench_billing_<hex>``, from template0,
   dropped at the end unless ``--keep``), migrated; a site of ``ports / 4`` poles,
   each with a 4-port meter (port-meter-4) and its four ports (2 kW); one tenant
   with a lease in service on every port since the day before the month; a
   time-of-use tariff (four periods, two seasons). Readings: every port's cumulative
   kWh counter once a minute for the whole month (local month of the site zone,
   Asia/Shanghai), written by the server itself (INSERT ... SELECT from
   generate_series), a different load per port (120-720 W, varying with the hour),
   rounded to the register's 0.01 kWh; then ANALYZE.

2. The ledger: the readings' triggers queued every reading (the set-up's time
   includes them); the metering worker's backfill of the month (all ports), then
   its steady state: one new reading per port and one worker tick, timed (wall
   and this process's CPU), with the per-port cost and the extrapolation to a
   city printed. With TimescaleDB the continuous aggregate is refreshed (as its
   refresh policy would have) before the old path is measured, and whether it
   is materialised is printed.

3. Measured, each ``--repeats`` times (the best and the median are printed), in
   this process through the real API application (FastAPI over ASGI, no network):
   ``GET /api/v1/usage?tenant=…&start=…&end=…&bucket=1d`` (the month's kWh per port
   by day and tariff period) and ``POST /api/v1/bills/generate`` (the month's draft
   bill, replaced on each repeat), from the ledger; then the old path (metering the
   readings at billing time: ``BillingStore.generate(source="readings")`` and the
   old usage computation) on the same data, and the bills compared to the fen.

4. Where the time goes: the rollup query the billing reads (first and last reading
   of each 15-minute bucket of each port, from ``telemetry_15m``) alone for all
   ports; the metering core (``gateway.core.metering.meter``) alone on those
   readings; and the same rollup query against a materialized copy of the rollup
   (a table with an index on device, metric, bucket), which is what a TimescaleDB
   continuous aggregate gives the query: rows already aggregated, read by index.
   Without TimescaleDB ``telemetry_15m`` is a plain view that aggregates the raw
   readings at every query.

Needs: PostgreSQL (a superuser URL, ``--admin-url``; default the local server
scripts/test uses) and this project's venv. Nothing else (no broker).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import httpx
import psycopg
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.adapters.billing_store import BillingStore  # noqa: E402
from gateway.adapters.credentials import TokenIssuer  # noqa: E402
from gateway.adapters.migrate import upgrade  # noqa: E402
from gateway.adapters.site_store import import_site  # noqa: E402
from gateway.adapters.tariff_store import TariffStore  # noqa: E402
from gateway.adapters.usage_store import UsageStore  # noqa: E402
from gateway.api.app import create_app  # noqa: E402
from gateway.api.deps import ApiContext  # noqa: E402
from gateway.api.routes import usage as usage_routes  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.core import metering as mt  # noqa: E402
from gateway.core import tariffs as tf  # noqa: E402
from gateway.core.auth import Principal, Role  # noqa: E402
from gateway.core.profiles import load_catalog  # noqa: E402
from gateway.core.registry import Registry  # noqa: E402
from gateway.core.site import (  # noqa: E402
    DeviceSpec,
    PoleSpec,
    PortSpec,
    SiteSpec,
    TenantSpec,
)
from gateway.metering_worker import MeteringWorker  # noqa: E402
from gateway.metrics import Metrics  # noqa: E402
from gateway.service import open_pool  # noqa: E402

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TENANT = "tn-bench"
TARIFF = "bench-tou"
SECRET = "polegw-bench-secret-not-for-production-0123456789"
TZ = ZoneInfo("Asia/Shanghai")
TARIFF_DEFINITION: dict[str, Any] = {
    "energy": {
        "prices": {"sharp": "1.1490", "peak": "0.9576", "flat": "0.6384", "valley": "0.3192"},
        "seasons": [
            {
                "months": [7, 8],
                "ranges": [
                    {"period": "valley", "start": 0, "end": 7},
                    {"period": "peak", "start": 10, "end": 15},
                    {"period": "sharp", "start": 15, "end": 17},
                    {"period": "peak", "start": 17, "end": 22},
                    {"period": "valley", "start": 23, "end": 24},
                ],
            },
            {
                "months": [1, 2, 3, 4, 5, 6, 9, 10, 11, 12],
                "ranges": [
                    {"period": "valley", "start": 0, "end": 7},
                    {"period": "peak", "start": 10, "end": 12},
                    {"period": "peak", "start": 14, "end": 22},
                    {"period": "valley", "start": 23, "end": 24},
                ],
            },
        ],
    },
    "rent": {"slot_types": {"standard": "300"}},
    "maintenance_fee": "50",
}
ROLLUP_SQL = (
    "SELECT first_ts, first, last_ts, last FROM {table}"
    " WHERE device_id = %s AND metric = %s AND bucket >= %s AND bucket < %s ORDER BY bucket"
)
# What billing reads now (migration 0015): the same rows, only the window's raw rows.
RANGED_SQL = (
    "SELECT first_ts, first, last_ts, last FROM telemetry_15m_between(%s, %s, %s, %s)"
    " ORDER BY bucket"
)


def with_db(admin_url: str, name: str) -> str:
    return urlunsplit(urlsplit(admin_url)._replace(path="/" + name))


def say(text: str) -> None:
    print(text, flush=True)


def site(ports: int) -> SiteSpec:
    poles = []
    for n in range(1, (ports + 3) // 4 + 1):
        pid = f"B{n:03d}"
        meter = f"{pid}-pm"
        count = min(4, ports - 4 * (n - 1))
        poles.append(
            PoleSpec(
                id=pid,
                devices=[DeviceSpec(id=meter, profile="port-meter-4")],
                ports=[
                    PortSpec(id=f"{pid}-p{k}", meter=meter, port=k, rated_w=2000)
                    for k in range(1, count + 1)
                ],
            )
        )
    return SiteSpec(tenants=[TenantSpec(id=TENANT, name="Bench Telecom")], poles=poles)


def port_list(spec: SiteSpec) -> list[tuple[str, str, str]]:
    """(port id, meter device, metric) of every port."""
    return [(p.id, p.meter, f"port{p.port}_energy_kwh") for pole in spec.poles for p in pole.ports]


def set_up(url: str, spec: SiteSpec, month: str, tenants: int = 1) -> int:
    """Leases, tariff and readings; returns the number of readings written. With
    `tenants` above 1, the ports are leased round robin to that many tenants."""
    start, end = tf.month_bounds(month, TZ)
    minutes = int((end - start).total_seconds() // 60)
    ports = port_list(spec)
    with psycopg.connect(url, autocommit=True) as conn:
        for k in range(2, tenants + 1):
            conn.execute(
                "INSERT INTO tenants (id, name) VALUES (%s, %s)", (f"{TENANT}-{k}", f"Bench {k}")
            )
        for i, (port_id, _, _) in enumerate(ports):
            tenant = TENANT if i % tenants == 0 else f"{TENANT}-{i % tenants + 1}"
            pole = port_id.split("-")[0]
            row = conn.execute(
                "INSERT INTO leases (tenant_id, pole_id, state, port_id, rates)"
                " VALUES (%s, %s, 'in_service', %s, %s) RETURNING id",
                (tenant, pole, port_id, Jsonb({"tariff": TARIFF})),
            ).fetchone()
            assert row is not None
            conn.execute(
                "INSERT INTO lease_history (lease_id, state, since, by)"
                " VALUES (%s, 'in_service', %s, 'bench')",
                (row[0], start - timedelta(days=1)),
            )
        conn.execute(
            "INSERT INTO tariffs (name, version, valid_from, valid_to, definition)"
            " VALUES (%s, 1, %s, NULL, %s)",
            (TARIFF, datetime(2026, 1, 1, tzinfo=TZ), Jsonb(TARIFF_DEFINITION)),
        )
        t0 = time.monotonic()
        for i, (_, device, metric) in enumerate(ports):
            base = 1000.0 + 37.0 * i
            watts = 120.0 + (600.0 * ((i * 7919) % 100)) / 100.0
            # kWh per minute = W / 60000; the load swings +-40 % over the day.
            conn.execute(
                "INSERT INTO telemetry (ts, device_id, metric, value)"
                " SELECT %(start)s + n * interval '1 minute', %(device)s, %(metric)s,"
                " round((%(base)s + %(w)s / 60000.0"
                "  * (n + 0.4 * 1440 / (2 * pi()) * (1 - cos(2 * pi() * n / 1440))))::numeric, 2)"
                " FROM generate_series(0, %(minutes)s - 1) AS n",
                {
                    "start": start,
                    "device": device,
                    "metric": metric,
                    "base": base,
                    "w": watts,
                    "minutes": minutes,
                },
            )
            if (i + 1) % 10 == 0 or i + 1 == len(ports):
                say(f"  readings: {i + 1}/{len(ports)} ports ({time.monotonic() - t0:.0f} s)")
        conn.execute("ANALYZE telemetry")
        row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
        assert row is not None
        return int(row[0])


async def timed(label: str, repeats: int, step: Callable[[], Awaitable[Any]]) -> Any:
    times = []
    result: Any = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = await step()
        times.append(time.perf_counter() - t0)
    say(
        f"  {label:<58} best {min(times):7.3f} s  median {statistics.median(times):7.3f} s"
        f"  ({repeats}x)"
    )
    return result


def hot_path(url: str, at: datetime, n: int = 100_000) -> None:
    """The telemetry writer's COPY of `n` energy counter readings with the
    ledger's queue triggers (migration 0019) and without them."""
    device = "bench-hot"
    rows = [
        (at + timedelta(seconds=k), device, f"port{k % 4 + 1}_energy_kwh", k * 0.01, 0)
        for k in range(n)
    ]
    times: dict[bool, list[float]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for enabled in (True, False, True, False):
            if not enabled:
                conn.execute("ALTER TABLE telemetry DISABLE TRIGGER telemetry_meter_insert")
            t0 = time.perf_counter()
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(
                    "COPY telemetry (ts, device_id, metric, value, quality)"
                    " FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                copy.set_types(["timestamptz", "text", "text", "float8", "int2"])
                for row in rows:
                    copy.write_row(row)
            times.setdefault(enabled, []).append(time.perf_counter() - t0)
            conn.execute("ALTER TABLE telemetry ENABLE TRIGGER telemetry_meter_insert")
            conn.execute("SET polegw.meter_queue = 'off'")  # the clean-up is not queued
            conn.execute("DELETE FROM telemetry WHERE device_id = %s", (device,))
            conn.execute("DELETE FROM meter_queue WHERE device_id = %s", (device,))
            conn.execute("RESET polegw.meter_queue")
    on, off = min(times[True]), min(times[False])
    say(
        f"Hot path: COPY of {n:,} energy readings: {off:.2f} s without the ledger's queue"
        f" trigger, {on:.2f} s with it ({(on / off - 1) * 100:+.0f} %;"
        f" {(on - off) / n * 1e6:.1f} us a reading; other metrics do not fire it)"
    )


async def ledger_costs(url: str, spec: SiteSpec, month: str, city_ports: int) -> None:
    """The metering worker: the month's backfill, then one tick with one new
    reading per port (the steady state of ports reporting every minute)."""
    _, end = tf.month_bounds(month, TZ)
    ports = port_list(spec)
    hot_path(url, end)
    pool = open_pool(url)
    await pool.open()
    try:
        metrics = Metrics()
        worker = MeteringWorker(pool, load_catalog(), metrics)
        say("The metering worker:")
        t0, c0 = time.perf_counter(), time.process_time()
        stepped = await worker.tick()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        with psycopg.connect(url, autocommit=True) as conn:
            # As autovacuum would after so many inserts: the planner needs the sizes.
            conn.execute("ANALYZE meter_ledger")
            conn.execute("ANALYZE meter_slots")
            row = conn.execute("SELECT count(*) FROM meter_ledger").fetchone()
        say(
            f"  backfill of the month, {stepped} ports: {wall:.1f} s wall, {cpu:.1f} s CPU here;"
            f" {row[0] if row else '?'} pieces; {wall / max(1, stepped):.2f} s per port-month"
        )
        for rnd in range(3):
            ts = end + timedelta(minutes=rnd)
            with psycopg.connect(url, autocommit=True) as conn:
                for _, device, metric in ports:
                    conn.execute(
                        "INSERT INTO telemetry (ts, device_id, metric, value)"
                        " SELECT %s, device_id, metric, value + 0.01 FROM telemetry"
                        " WHERE device_id = %s AND metric = %s ORDER BY ts DESC LIMIT 1",
                        (ts, device, metric),
                    )
            t0, c0 = time.perf_counter(), time.process_time()
            stepped = await worker.tick()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            per_wall, per_cpu = wall / max(1, stepped), cpu / max(1, stepped)
            say(
                f"  tick {rnd + 1}: one new reading on each of {stepped} ports: {wall:.3f} s wall,"
                f" {cpu:.3f} s CPU here; per port {per_wall * 1000:.1f} ms wall,"
                f" {per_cpu * 1000:.1f} ms CPU"
            )
        say(
            f"  extrapolated to {city_ports:,} ports reporting every minute: one worker"
            f" {per_wall * city_ports:.0f} s wall per minute of readings"
            f" ({per_cpu * city_ports / 60 * 100:.0f} % of one core in this process,"
            " the rest is the database's)"
        )
        lag = metrics.registry.get_sample_value("polegw_metering_lag_seconds_sum")
        n = metrics.registry.get_sample_value("polegw_metering_lag_seconds_count")
        say(f"  lag (queued -> metered) mean over the ticks: {(lag or 0) / max(1.0, n or 0):.1f} s")
    finally:
        await pool.close()


async def measure(
    url: str,
    spec: SiteSpec,
    month: str,
    repeats: int,
    profile: Path | None,
    with_usage: bool,
    tenants: int = 1,
    city_ports: int = 10_000,
) -> None:
    start, end = tf.month_bounds(month, TZ)
    settings = Settings(database_url=url, secret_key=SECRET)
    pool = open_pool(url)
    await pool.open()
    catalog = load_catalog()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "INSERT INTO users (name, role, password_hash) VALUES ('bench', 'admin', 'x')"
                " RETURNING id"
            ).fetchone()
            assert row is not None
        tokens = TokenIssuer(SECRET, timedelta(hours=1))
        admin = Principal(int(row[0]), "bench", Role.ADMIN, None)
        ctx = ApiContext(
            settings=settings,
            pool=pool,
            catalog=catalog,
            metrics=Metrics(),
            tokens=tokens,
            registry=lambda: Registry((), ()),
        )
        headers = {"Authorization": f"Bearer {tokens.issue(admin)}"}
        transport = httpx.ASGITransport(app=create_app(ctx))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench/api/v1", headers=headers, timeout=600
        ) as api:
            params = {
                "tenant": TENANT,
                "start": start.isoformat(),
                "end": end.isoformat(),
                "bucket": "1d",
            }

            async def usage() -> dict[str, Any]:
                r = await api.get("/usage", params=params)
                assert r.status_code == 200, r.text
                body: dict[str, Any] = r.json()
                return body

            async def generate() -> list[dict[str, Any]]:
                r = await api.post("/bills/generate", json={"month": month, "tenant": TENANT})
                assert r.status_code == 200, r.text
                body: list[dict[str, Any]] = r.json()
                return body

            async def bill_run() -> list[dict[str, Any]]:
                r = await api.post("/bills/generate", json={"month": month})
                assert r.status_code == 200, r.text
                body: list[dict[str, Any]] = r.json()
                return body

            say("API, end to end, from the ledger (the new path):")
            if with_usage:
                body = await timed("GET /usage (tenant, month, by day and period)", repeats, usage)
                _say_usage(body)
            (result,) = await timed("POST /bills/generate (tenant, month)", repeats, generate)
            bill = result["bill"]
            new_lines = await _energy_lines(pool, bill["id"])
            say(
                f"    bill {bill['id']}: {bill['energy_kwh']} kWh, energy {bill['energy_amount']},"
                f" total {bill['total_amount']} {bill['currency']}"
            )
            if tenants > 1:
                run = await timed(
                    f"POST /bills/generate (month, all {tenants} tenants)", repeats, bill_run
                )
                say(f"    {len(run)} bills, {len(port_list(spec))} ports")
            if profile is not None:
                steps = [("usage", usage)] if with_usage else []
                for what, step in [*steps, ("generate", generate)]:
                    profiler = cProfile.Profile()
                    profiler.enable()
                    await step()
                    profiler.disable()
                    path = profile.with_name(f"{profile.name}.{what}")
                    profiler.dump_stats(path)
                    say(f"    profile of one {what}: {path} (python -m pstats {path})")

        say("The old path, metering the readings at billing time (reference):")
        say(f"  telemetry_15m: {await _rollup_state(url)}")
        billing = BillingStore(pool, catalog, TZ)

        async def old_generate() -> list[tuple[dict[str, Any], str]]:
            return await billing.generate(month, TENANT, source="readings")

        ((old_bill, _),) = await timed(
            "BillingStore.generate(source='readings') (tenant, month)", repeats, old_generate
        )
        old_lines = await _energy_lines(pool, old_bill["id"])
        say(
            f"    bill {old_bill['id']}: {old_bill['energy_kwh']} kWh,"
            f" energy {old_bill['energy_amount']}, total {old_bill['total_amount']}"
        )
        same = old_lines == new_lines and old_bill["total_amount"] == Decimal(bill["total_amount"])
        say(f"    the same energy lines and total to the fen as from the ledger: {same}")
        for a, b in zip(old_lines, new_lines, strict=False):
            if a != b:
                say(f"      differs: {a} (readings) vs {b} (ledger)")
        if with_usage:

            async def old_usage() -> int:
                store = UsageStore(pool, catalog)
                spans = await store.spans(start, end, tenant_id=TENANT)
                tariffs = await TariffStore(pool).tariffs_named(TARIFF)
                n = 0
                for pid in sorted({s.port_id for s in spans if s.port_id}):
                    meta = await store.port(pid)
                    assert meta is not None
                    u = await store.port_usage(meta, start, end, estimate_gaps=False)
                    mine = [s for s in spans if s.port_id == pid]
                    usage_routes._port_usage_out(u, mine, tariffs, TENANT, start, end, "1d", TZ)
                    n += 1
                return n

            await timed("the old GET /usage computation (tenant, month, by day)", 1, old_usage)
        await breakdown(url, spec, start, end, repeats)
    finally:
        await pool.close()


def _say_usage(body: dict[str, Any]) -> None:
    kwh = sum(Decimal(p["kwh"]) for p in body["ports"])
    periods: dict[str, Decimal] = {}
    for p in body["ports"]:
        for k, v in p["periods"].items():
            periods[k] = periods.get(k, Decimal(0)) + Decimal(v)
    say(
        f"    {len(body['ports'])} ports, {kwh:.3f} kWh: "
        + ", ".join(f"{k} {v:.3f}" for k, v in sorted(periods.items()))
    )


async def _energy_lines(pool: Any, bill_id: int) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT lease_id, tariff_id, period, estimated, quantity, amount FROM bill_lines"
            " WHERE bill_id = %s AND kind = 'energy' ORDER BY 1, 2, 3, 4",
            (bill_id,),
        )
        return [tuple(r) for r in await cur.fetchall()]


async def _rollup_state(url: str) -> str:
    """Whether telemetry_15m is a continuous aggregate, refreshed here (as its
    refresh policy would have) and so materialised; or a plain view."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone():
            t0 = time.perf_counter()
            conn.execute("CALL refresh_continuous_aggregate('telemetry_15m', NULL, NULL)")
            row = conn.execute(
                "SELECT materialized_only FROM timescaledb_information.continuous_aggregates"
                " WHERE view_name = 'telemetry_15m'"
            ).fetchone()
            return (
                f"continuous aggregate, refreshed in {time.perf_counter() - t0:.1f} s"
                f" (materialized_only: {row[0] if row else '?'})"
            )
    return "plain view (no TimescaleDB): computed from the raw readings at each query"


async def breakdown(url: str, spec: SiteSpec, start: datetime, end: datetime, repeats: int) -> None:
    ports = port_list(spec)
    lo, hi = start - timedelta(days=1), end + timedelta(days=1)  # billing's margin

    def fetch(table: str, sql: str = ROLLUP_SQL, a: datetime = lo, b: datetime = hi) -> int:
        """The rollup rows of every port, fetched and dropped: the database's part."""
        n = 0
        with psycopg.connect(url) as conn:
            for _, device, metric in ports:
                n += len(conn.execute(sql.format(table=table), (device, metric, a, b)).fetchall())
        return n

    def read(table: str) -> list[list[mt.Reading]]:
        out = []
        with psycopg.connect(url) as conn:
            for _, device, metric in ports:
                rows = conn.execute(
                    ROLLUP_SQL.format(table=table), (device, metric, lo, hi)
                ).fetchall()
                series: list[mt.Reading] = []
                for first_ts, first, last_ts, last in rows:
                    series.append(mt.Reading(first_ts, mt.to_decimal(first)))
                    if last_ts != first_ts:
                        series.append(mt.Reading(last_ts, mt.to_decimal(last)))
                out.append(series)
        return out

    say("Where the time goes:")
    rows = await timed(
        f"rollup query, {len(ports)} ports, rows fetched only (plain view)",
        repeats,
        lambda: asyncio.to_thread(fetch, "telemetry_15m"),
    )
    series = await timed(
        f"rollup query + readings as Decimal, {len(ports)} ports (plain view)",
        repeats,
        lambda: asyncio.to_thread(read, "telemetry_15m"),
    )
    count = sum(len(s) for s in series)
    ranged = await timed(
        f"the same through telemetry_15m_between, {len(ports)} ports (migration 0015)",
        repeats,
        lambda: asyncio.to_thread(fetch, "", RANGED_SQL),
    )
    assert ranged == rows, "telemetry_15m_between gives other rows than the view"
    day = (start, start + timedelta(days=1))
    await timed(
        "one day of the month, plain view (reads all of each port's rows)",
        repeats,
        lambda: asyncio.to_thread(fetch, "telemetry_15m", ROLLUP_SQL, *day),
    )
    await timed(
        "one day of the month, telemetry_15m_between (reads the day's rows)",
        repeats,
        lambda: asyncio.to_thread(fetch, "", RANGED_SQL, *day),
    )

    async def metering() -> None:
        for s in series:
            mt.meter(s, rated_w=2000, modulus=mt.counter_modulus("uint32", 0.01))

    await timed(f"metering core on those {count} readings", repeats, metering)

    # GET /usage cuts every interval at the month's day and hour bounds (as
    # routes/usage.py's _usage_out does): with a plain list split_interval looks at every
    # bound for every interval; with mt.Cuts (sorted once) it bisects.
    sample = series[: min(4, len(series))]
    metered = [
        mt.meter(s, rated_w=2000, modulus=mt.counter_modulus("uint32", 0.01)).intervals
        for s in sample
    ]
    days = [start + timedelta(days=d) for d in range((end - start).days)]
    bounds = days + tf.hour_bounds(start, end, TZ)
    cuts = mt.Cuts(bounds)

    async def split_with(at: list[datetime] | mt.Cuts) -> None:
        for intervals in metered:
            for iv in intervals:
                mt.split_interval(iv, at)

    n = sum(len(i) for i in metered)
    plain = await timed(
        f"split {n} intervals at {len(bounds)} bounds, list ({len(sample)} ports)",
        1,
        lambda: _clock(split_with(bounds)),
    )
    fast = await timed(
        f"split {n} intervals at {len(bounds)} bounds, mt.Cuts ({len(sample)} ports)",
        1,
        lambda: _clock(split_with(cuts)),
    )
    say(
        f"    per port: {plain / len(sample):.3f} s with the list, {fast / len(sample):.4f} s"
        f" with mt.Cuts; x {len(ports)} ports: {plain / len(sample) * len(ports):.1f} s"
        f" vs {fast / len(sample) * len(ports):.2f} s"
    )
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_rollup_15m AS SELECT * FROM telemetry_15m")
        conn.execute("CREATE INDEX ON bench_rollup_15m (device_id, metric, bucket)")
        conn.execute("ANALYZE bench_rollup_15m")
    say(f"  (materializing the rollup once: {time.perf_counter() - t0:.1f} s)")
    await timed(
        f"rollup query, rows fetched only ({rows} rows), materialized rollup",
        repeats,
        lambda: asyncio.to_thread(fetch, "bench_rollup_15m"),
    )
    again = await timed(
        "rollup query + readings as Decimal, materialized rollup",
        repeats,
        lambda: asyncio.to_thread(read, "bench_rollup_15m"),
    )
    assert again == series, "the materialized rollup gives other readings"

    # The lever: kWh by port and period computed by the database in one query,
    # from the rollup's last reading per bucket (delta to the previous bucket's last,
    # put in the bucket's period); the buckets a counter rule would have to judge
    # (a drop, or above the rating) only counted, for the metering core to handle.
    case = _period_case(start)
    devices = [d for _, d, _ in ports]
    metrics = [m for _, _, m in ports]

    def set_based(table: str) -> tuple[int, Decimal, int]:
        sql = f"""
            WITH wanted AS (SELECT unnest(%(d)s::text[]) AS device_id,
                                   unnest(%(m)s::text[]) AS metric),
            r AS (
                SELECT t.device_id, t.metric, t.bucket,
                       t.last - lag(t.last) OVER (PARTITION BY t.device_id, t.metric
                                                  ORDER BY t.bucket) AS delta
                FROM {table} t JOIN wanted USING (device_id, metric)
                WHERE t.bucket >= %(lo)s AND t.bucket < %(end)s
            )
            SELECT device_id, metric,
                   {case} AS period,
                   sum(delta) FILTER (WHERE delta >= 0 AND delta <= %(cap)s) AS kwh,
                   count(*) FILTER (WHERE delta < 0 OR delta > %(cap)s) AS odd
            FROM r WHERE bucket >= %(start)s AND delta IS NOT NULL
            GROUP BY 1, 2, 3
        """
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                sql,
                {
                    "d": devices,
                    "m": metrics,
                    "lo": start - timedelta(minutes=15),
                    "start": start,
                    "end": end,
                    "cap": 2.0 * 0.25,  # 2 kW x 15 min
                },
            ).fetchall()
        total = sum((Decimal(str(r[3] or 0)) for r in rows), Decimal(0))
        return len(rows), total, sum(int(r[4]) for r in rows)

    for table, what in (("telemetry_15m", "plain view"), ("bench_rollup_15m", "materialized")):
        groups, total, odd = await timed(
            f"kWh by port and period in one SQL query ({what})",
            repeats,
            lambda table=table: asyncio.to_thread(set_based, table),  # type: ignore[misc]
        )
        say(f"    {groups} (port, period) sums, {total:.2f} kWh, {odd} buckets left to judge")


def _period_case(start: datetime) -> str:
    """SQL for the tariff period of a bucket (by its local hour) in the month of `start`."""
    energy = TARIFF_DEFINITION["energy"]
    month = start.astimezone(TZ).month
    season = next(x for x in energy["seasons"] if month in x["months"])
    hour = "extract(hour FROM bucket AT TIME ZONE 'Asia/Shanghai')"
    whens = " ".join(
        f"WHEN {hour} >= {r['start']} AND {hour} < {r['end']} THEN '{r['period']}'"
        for r in season["ranges"]
    )
    return f"CASE {whens} ELSE '{energy.get('default_period', 'flat')}' END"


async def _clock(step: Awaitable[None]) -> float:
    t0 = time.perf_counter()
    await step
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--admin-url", default=os.environ.get("POLEGW_BENCH_ADMIN_URL", DEFAULT_ADMIN_URL)
    )
    parser.add_argument("--ports", type=int, default=100)
    parser.add_argument("--month", default="2026-11", help="YYYY-MM (site zone Asia/Shanghai)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--tenants", type=int, default=1, help="lease the ports round robin to this many tenants"
    )
    parser.add_argument(
        "--city-ports", type=int, default=10_000, help="extrapolate the worker's cost to this"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--no-usage", action="store_true", help="skip GET /usage (minutes at 100 ports)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="cProfile one usage query and one bill generation into FILE.usage, FILE.generate",
    )
    args = parser.parse_args()
    if args.ports < 1:
        parser.error("--ports must be at least 1")
    name = f"polegw_bench_billing_{secrets.token_hex(4)}"
    url = with_db(args.admin_url, name)
    spec = site(args.ports)
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        version = conn.execute("SHOW server_version").fetchone()
    say(f"database {name} (PostgreSQL {version[0] if version else '?'}), {args.ports} ports")
    try:
        t0 = time.monotonic()
        upgrade(url)
        asyncio.run(import_site(url, spec))
        say("set-up:")
        readings = set_up(url, spec, args.month, args.tenants)
        say(f"  {readings:,} readings in {time.monotonic() - t0:.0f} s")
        with psycopg.connect(url) as conn:
            ts = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
            size = conn.execute(
                "SELECT pg_size_pretty(pg_total_relation_size('telemetry'))"
            ).fetchone()
        say(
            f"  telemetry_15m: {'continuous aggregate' if ts else 'plain view (no TimescaleDB)'};"
            f" telemetry {size[0] if size else '?'} with its index"
        )
        asyncio.run(ledger_costs(url, spec, args.month, args.city_ports))
        asyncio.run(
            measure(
                url,
                spec,
                args.month,
                args.repeats,
                args.profile,
                not args.no_usage,
                args.tenants,
                args.city_ports,
            )
        )
        say(f"at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {os.getloadavg()}")
    finally:
        if not args.keep:
            with psycopg.connect(args.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
