#!/usr/bin/env python3
"""The alarm leader's extra database work with replicas (issue 19): what reading
back the committed readings per (device, watched metric) costs, against storing
them (the ingest writer's COPY) in the same run.

    .venv/bin/python bench/alarm_feed.py                    # 2,000 devices, 60 rounds
    .venv/bin/python bench/alarm_feed.py --devices 10000 --rounds 30

One run, against the real PostgreSQL, in a database of its own (dropped at the end):

1. History: `--history` readings of one watched metric per device, written by
   the server (INSERT ... SELECT), then ANALYZE: the index the probes use is as
   deep as a running site's.
2. Each round: one new reading per device stored through the gateway's
   TelemetryWriter (binary COPY, one transaction: the bare reference), then the
   alarm leader's round over every (device, metric) pair from its positions
   (gateway.adapters.committed_readings.readings_after): wall time of both,
   summed over the rounds, and their ratio. Then a round with nothing new (the
   cost of asking when nothing changed), and the last-heard probe of 1 % of the
   devices (what offline detection asks per tick when that many are overdue).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from datetime import UTC, datetime, timedelta

import psycopg

from gateway.adapters.committed_readings import last_heard, readings_after
from gateway.adapters.migrate import upgrade
from gateway.adapters.telemetry_writer import TelemetryWriter
from gateway.core.readings import Batch, Reading

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def with_db(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + f"/{name}"


async def run(url: str, devices: int, rounds: int, history: int) -> None:
    ids = [f"D{n:06d}" for n in range(devices)]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=history + rounds + 10)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO telemetry (ts, device_id, metric, value)"
            " SELECT %s + make_interval(secs => s), d, 'tilt_deg', 1.0"
            " FROM unnest(%s::text[]) d, generate_series(0, %s - 1) s",
            (start, ids, history),
        )
        conn.execute("ANALYZE telemetry")
    positions = {d: start + timedelta(seconds=history - 1) for d in ids}
    writer = TelemetryWriter(url)
    copy_s = read_s = 0.0
    read_rows = 0
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for r in range(rounds):
            ts = start + timedelta(seconds=history + r)
            batch = Batch(readings=[Reading(ts, d, "tilt_deg", 2.0) for d in ids])
            t = time.perf_counter()
            await writer.write(batch)
            copy_s += time.perf_counter() - t
            pairs = [(d, "tilt_deg", positions[d]) for d in ids]
            t = time.perf_counter()
            rows = await readings_after(conn, pairs, 1000)
            read_s += time.perf_counter() - t
            read_rows += len(rows)
            for row in rows:
                positions[row.device_id] = max(positions[row.device_id], row.ts)
        pairs = [(d, "tilt_deg", positions[d]) for d in ids]
        t = time.perf_counter()
        idle = await readings_after(conn, pairs, 1000)
        idle_s = time.perf_counter() - t
        overdue = ids[: max(1, devices // 100)]
        t = time.perf_counter()
        await last_heard(conn, [(d, "tilt_deg") for d in overdue], start)
        heard_s = time.perf_counter() - t
    await writer.close()
    assert read_rows == devices * rounds, (read_rows, devices * rounds)
    assert idle == []
    n = devices * rounds
    print(f"{devices:,} devices x {history:,} readings of history, {rounds} rounds")
    print(f"  store (COPY, reference):   {copy_s:7.3f} s  {copy_s / n * 1e6:7.1f} us/reading")
    print(f"  read back (leader's feed): {read_s:7.3f} s  {read_s / n * 1e6:7.1f} us/reading")
    print(f"  read back / store:         {read_s / copy_s:7.2f}")
    print(f"  a round with nothing new:  {idle_s * 1e3:7.1f} ms for {devices:,} pairs")
    print(f"  last heard of {len(overdue):,} devices:  {heard_s * 1e3:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--history", type=int, default=600, help="readings per device before")
    parser.add_argument("--admin-url", default=ADMIN)
    args = parser.parse_args()
    if args.devices < 1 or args.rounds < 1 or args.history < 1:
        parser.error("--devices, --rounds and --history must be at least 1")
    name = f"polegw_bench_feed_{secrets.token_hex(4)}"
    url = with_db(args.admin_url, name)
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        upgrade(url)
        asyncio.run(run(url, args.devices, args.rounds, args.history))
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
