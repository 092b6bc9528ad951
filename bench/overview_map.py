#!/usr/bin/env python3
"""Site-map benchmark: how long `GET /api/v1/overview/poles` (the console's map
data) and `GET /api/v1/overview` take for a city-sized site.

    .venv/bin/python bench/overview_map.py                 # 2,000 poles, 12,000 devices
    .venv/bin/python bench/overview_map.py --poles 500 --minutes 60 --repeats 10

Set-up, in a database of its own (``polegw_bench_map_<hex>``, dropped at the end
unless ``--keep``), migrated, written by the server itself (generate_series):
``--poles`` poles on ten roads, each with six devices (lamp, env station,
cabinet, tilt sensor and SOS button over MQTT, a port meter over Modbus); pole
presence online for 95 % of the poles, offline for 3 %, none for 2 %; the port
meters' poll state online but for 5 %; every lamp's ``lamp_on`` once a minute for
``--minutes`` (default a day) plus its power and energy, so the lamps' latest
reading is looked up among realistic numbers of rows; 300 alarms not cleared
of mixed severity and 300 cleared; then ANALYZE.

Measured through the real API application (FastAPI over ASGI, no network),
``--repeats`` times; the best and the median are printed.

Needs: PostgreSQL (a superuser URL, ``--admin-url``; default the local server
scripts/test uses) and this project's venv.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.adapters.credentials import TokenIssuer  # noqa: E402
from gateway.adapters.migrate import upgrade  # noqa: E402
from gateway.api.app import create_app  # noqa: E402
from gateway.api.deps import ApiContext  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.core.auth import Principal, Role  # noqa: E402
from gateway.core.profiles import load_catalog  # noqa: E402
from gateway.core.registry import Registry  # noqa: E402
from gateway.metrics import Metrics  # noqa: E402
from gateway.service import open_pool  # noqa: E402

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SECRET = "polegw-bench-secret-not-for-production-0123456789"

SET_UP = [
    """INSERT INTO poles (id, name, road, lat, lon)
       SELECT 'P' || lpad(n::text, 5, '0'), format('Road %%s no. %%s', n %% 10, n / 10),
              format('Road %%s', n %% 10), 39.9 + (n %% 10) / 100.0, 116.4 + (n / 10) / 5000.0
       FROM generate_series(1, %(poles)s) AS n""",
    """INSERT INTO devices (id, pole_id, profile, transport)
       SELECT p.id || '-' || k.suffix, p.id, k.profile, k.transport
       FROM poles p CROSS JOIN (VALUES ('lamp', 'lamp-controller', 'mqtt'),
            ('env', 'env-station', 'mqtt'), ('cab', 'cabinet-monitor', 'mqtt'),
            ('tilt', 'pole-tilt', 'mqtt'), ('sos', 'sos-button', 'mqtt'),
            ('meter', 'port-meter-4', 'modbus')) AS k(suffix, profile, transport)""",
    """INSERT INTO pole_presence (pole_id, state, since)
       SELECT id, CASE WHEN hashtext(id) %% 100 < 3 THEN 'offline' ELSE 'online' END, now()
       FROM poles WHERE abs(hashtext(id || 'p')) %% 100 >= 2""",
    """INSERT INTO device_state (device_id, online, since)
       SELECT id, abs(hashtext(id)) %% 100 >= 5, now() FROM devices WHERE transport = 'modbus'""",
    """INSERT INTO telemetry (ts, device_id, metric, value)
       SELECT %(start)s + m * interval '1 minute', d.id, x.metric,
              CASE x.metric WHEN 'lamp_on' THEN (m / 720) %% 2
                            WHEN 'power_w' THEN 90 + m %% 10 ELSE 1000 + m / 60.0 END
       FROM devices d
       CROSS JOIN generate_series(0, %(minutes)s - 1) AS m
       CROSS JOIN (VALUES ('lamp_on'), ('power_w'), ('energy_kwh')) AS x(metric)
       WHERE d.profile = 'lamp-controller'""",
    """INSERT INTO alarms (rule_key, fault, severity, pole_id, device_id, state,
                           first_seen, last_seen, cleared_at)
       SELECT 'bench-' || n, 'f', (ARRAY['critical', 'major', 'minor', 'warning'])[1 + n %% 4],
              'P' || lpad((1 + (n * 7) %% %(poles)s)::text, 5, '0'),
              'P' || lpad((1 + (n * 7) %% %(poles)s)::text, 5, '0') || '-env',
              CASE WHEN n < 300 THEN 'active' ELSE 'cleared' END, now(), now(),
              CASE WHEN n < 300 THEN NULL ELSE now() END
       FROM generate_series(0, 599) AS n""",
]


def with_db(admin_url: str, name: str) -> str:
    return urlunsplit(urlsplit(admin_url)._replace(path="/" + name))


def say(text: str) -> None:
    print(text, flush=True)


def set_up(url: str, poles: int, minutes: int) -> None:
    start = datetime.now(UTC) - timedelta(minutes=minutes)
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in SET_UP:
            conn.execute(statement, {"poles": poles, "minutes": minutes, "start": start})
        conn.execute("ANALYZE")
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM poles), (SELECT count(*) FROM devices),"
            " (SELECT count(*) FROM telemetry), (SELECT count(*) FROM alarms)"
        ).fetchone()
    assert counts is not None
    say(f"  {counts[0]:,} poles, {counts[1]:,} devices, {counts[2]:,} readings, {counts[3]} alarms")


async def measure(url: str, repeats: int) -> None:
    settings = Settings(database_url=url, secret_key=SECRET)
    pool = open_pool(url)
    await pool.open()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "INSERT INTO users (name, role, password_hash) VALUES ('bench', 'admin', 'x')"
                " RETURNING id"
            ).fetchone()
        assert row is not None
        tokens = TokenIssuer(SECRET, timedelta(hours=1))
        ctx = ApiContext(
            settings=settings,
            pool=pool,
            catalog=load_catalog(),
            metrics=Metrics(),
            tokens=tokens,
            registry=lambda: Registry((), ()),
        )
        admin = Principal(int(row[0]), "bench", Role.ADMIN, None)
        headers = {"Authorization": f"Bearer {tokens.issue(admin)}"}
        transport = httpx.ASGITransport(app=create_app(ctx))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench/api/v1", headers=headers, timeout=600
        ) as api:
            for path in ("/overview/poles", "/overview"):
                times = []
                size = 0
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    r = await api.get(path)
                    times.append(time.perf_counter() - t0)
                    r.raise_for_status()
                    size = len(r.content)
                say(
                    f"  GET /api/v1{path:<16} best {min(times):6.3f} s"
                    f"  median {statistics.median(times):6.3f} s  ({repeats}x, {size:,} bytes)"
                )
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--admin-url", default=os.environ.get("POLEGW_BENCH_ADMIN_URL", DEFAULT_ADMIN_URL)
    )
    parser.add_argument("--poles", type=int, default=2000)
    parser.add_argument("--minutes", type=int, default=1440, help="lamp history per lamp")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    if args.poles < 1 or args.minutes < 1 or args.repeats < 1:
        parser.error("--poles, --minutes and --repeats must be at least 1")
    name = f"polegw_bench_map_{secrets.token_hex(4)}"
    url = with_db(args.admin_url, name)
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    say(f"database {name}")
    try:
        t0 = time.monotonic()
        upgrade(url)
        say("set-up:")
        set_up(url, args.poles, args.minutes)
        say(f"  in {time.monotonic() - t0:.0f} s")
        say("measured:")
        asyncio.run(measure(url, args.repeats))
        say(f"at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {os.getloadavg()}")
    finally:
        if not args.keep:
            with psycopg.connect(args.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
