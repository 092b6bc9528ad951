#!/usr/bin/env python3
"""CPU of the parts of a Modbus poll that do not wait on a device, one at a time.

    .venv/bin/python bench/modbus_parts.py decode           # registers -> values -> readings
    .venv/bin/python bench/modbus_parts.py writer           # TelemetryWriter vs a bare COPY
    .venv/bin/python bench/modbus_parts.py waits            # the asyncio patterns of a poll
    .venv/bin/python bench/modbus_parts.py decode --root /tmp/old-checkout   # another tree

`decode`: for each bench profile (bench/profiles: bench-meter, 28 points in 2 blocks;
bench-float20, 20 float32 in 1 block), answers are made from in-bounds values with
`encode_write`, then CPU per poll (time.process_time over 20,000 polls) of the block
decoders (`decode_block`) and of `decode_polled`.

`writer`: `TelemetryWriter.write` of readings-only batches (--rows per batch) against a
bare synchronous binary COPY of the same rows, each followed by a commit, on its own
database (created and dropped here, `--admin-url`). Client CPU only (this process);
PostgreSQL's own CPU is not counted.

`waits`: CPU per use (one event-loop pass included) of the asyncio patterns a poll
used before and uses now: the scheduler's wait (asyncio.timeout around Event.wait,
against a future resolved by loop.call_at) and the time limit around a request (an
asynccontextmanager with asyncio.timeout, against none).

`--root` imports `gateway` from another checkout, to compare two versions back to
back on the same machine. bench/modbus.py measures the whole poll side by side with a
bare pymodbus loop; this script splits the gateway's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def per_call_us(fn: Any, n: int) -> float:
    for _ in range(n // 10):
        fn()
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n * 1e6


def decode(n: int) -> None:
    from gateway.core.profiles import load_catalog

    catalog = load_catalog(HERE / "profiles")
    for name in ("bench-meter", "bench-float20"):
        decode_profile(catalog[name], n)


def decode_profile(profile: Any, n: int) -> None:
    from gateway.adapters.modbus_registers import decode_block, encode_write
    from gateway.core.decode import decode_polled
    from gateway.core.modbus_plan import extract, plan_reads
    from gateway.core.registry import DeviceRef

    modbus = profile.modbus
    blocks = plan_reads(modbus)
    answers: list[list[int]] = []
    for block in blocks:
        registers = [0] * block.count
        for point_name in block.points:
            point = modbus.points[point_name]
            low, high = profile.number_bounds[point_name]
            value = min(low + (high - low) / 2, low + 1000) + 0.37
            encoded = encode_write(point, abs(value) if point.type[0] == "u" else value)
            assert isinstance(encoded, list)
            registers[extract(block, point)] = encoded
        answers.append(registers)
    ref = DeviceRef("dev-1", "P1", profile, "modbus")
    ts = datetime.now(UTC)

    def poll() -> dict[str, object]:
        values: dict[str, object] = {}
        for block, registers in zip(blocks, answers, strict=True):
            values.update(decode_block(block, modbus, registers))
        return values

    values = poll()

    def check() -> Any:
        return decode_polled(ref, values, ts, source="modbus://h:502/1")

    decoded = check()
    assert len(decoded.readings) == len(values), decoded.dead_letters
    name = profile.profile
    print(f"{name:14s} decode_block  {per_call_us(poll, n):6.1f} µs per poll")
    print(f"{name:14s} decode_polled {per_call_us(check, n):6.1f} µs per poll")


def writer(admin_url: str, rows: int, batches: int) -> None:
    import psycopg
    from psycopg import sql

    from gateway.adapters.telemetry_writer import COPY_COLUMNS, COPY_TYPES, TelemetryWriter
    from gateway.core.readings import Batch, Reading

    dbname = f"polegw_bench_parts_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url = admin_url.rsplit("/", 1)[0] + "/" + dbname  # same server, this database
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE telemetry (ts timestamptz NOT NULL, device_id text NOT NULL,"
                " metric text NOT NULL, value float8 NOT NULL, quality int2 NOT NULL DEFAULT 0,"
                " UNIQUE (device_id, metric, ts))"
            )
            conn.execute("CREATE TABLE bare (LIKE telemetry INCLUDING ALL)")
        t0 = datetime(2030, 1, 1, tzinfo=UTC)

        def make(offset: int) -> list[list[Reading]]:
            return [
                [
                    Reading(
                        t0 + timedelta(seconds=offset + b, microseconds=k // 28),
                        f"mb{k % 20:02d}-u{(k // 20) % 25:02d}",
                        f"m{k % 28:02d}",
                        1.5,
                        0,
                    )
                    for k in range(rows)
                ]
                for b in range(batches + 1)
            ]

        async def gateway(data: list[list[Reading]]) -> float:
            w = TelemetryWriter(url)
            await w.write(Batch(readings=data[0]))  # connects
            t = time.process_time()
            for batch in data[1:]:
                await w.write(Batch(readings=batch))
            spent = time.process_time() - t
            await w.close()
            return spent

        def bare(data: list[list[Reading]]) -> float:
            stmt = f"COPY bare ({COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)"
            with psycopg.connect(url) as conn:
                t = time.process_time()
                for batch in data[1:]:
                    with conn.cursor() as cur, cur.copy(stmt) as copy:
                        copy.set_types(COPY_TYPES)
                        for row in batch:
                            copy.write_row(row)
                    conn.commit()
                return time.process_time() - t

        n = rows * batches
        for rep in range(3):
            g = asyncio.run(gateway(make(rep * 100_000)))
            b = bare(make(rep * 100_000 + 50_000))
            print(
                f"{rows} rows per batch: TelemetryWriter {g / n * 1e6:.2f} µs per row,"
                f" bare sync COPY {b / n * 1e6:.2f} µs per row: {g / b:.2f}x"
            )
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )


def waits(n: int) -> None:
    import contextlib
    from collections.abc import AsyncIterator, Awaitable, Callable

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        async def timeout_around_event_wait() -> None:  # the scheduler's wait, before
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0):
                    await stop.wait()

        async def future_and_timer() -> None:  # the scheduler's wait, now
            future: asyncio.Future[None] = loop.create_future()
            timer = loop.call_at(loop.time(), future.set_result, None)
            try:
                await future
            finally:
                timer.cancel()

        @contextlib.asynccontextmanager
        async def exchange() -> AsyncIterator[None]:
            try:
                async with asyncio.timeout(10):
                    yield
            except TimeoutError as exc:  # mapped to PollFailed, as the bus did
                raise RuntimeError("timeout") from exc

        async def request_with_exchange() -> None:  # around each request, before
            async with exchange():
                await asyncio.sleep(0)

        async def request_alone() -> None:  # now (pymodbus's own limit only)
            await asyncio.sleep(0)

        cases: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("scheduler wait: asyncio.timeout + Event.wait", timeout_around_event_wait),
            ("scheduler wait: future + loop.call_at", future_and_timer),
            ("request: asynccontextmanager + asyncio.timeout", request_with_exchange),
            ("request: no wrapper", request_alone),
        ]
        for name, case in cases:
            for _ in range(n // 10):
                await case()
            t = time.process_time()
            for _ in range(n):
                await case()
            print(f"{name:48s} {(time.process_time() - t) / n * 1e6:6.2f} µs")

    asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=("decode", "writer", "waits"))
    ap.add_argument("--root", type=Path, default=HERE.parent, help="checkout to import")
    ap.add_argument("--polls", type=int, default=20_000, help="decode: polls timed")
    ap.add_argument("--rows", type=int, default=1100, help="writer: rows per batch")
    ap.add_argument("--batches", type=int, default=50, help="writer: batches timed")
    ap.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    args = ap.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    gateway = importlib.import_module("gateway")
    print(f"gateway from {Path(gateway.__file__ or '').parent}")
    if args.part == "decode":
        decode(args.polls)
    elif args.part == "waits":
        waits(args.polls)
    else:
        writer(args.admin_url, args.rows, args.batches)


if __name__ == "__main__":
    main()
