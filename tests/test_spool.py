"""The on-disk spool alone, and the ingest pipeline spooling around a failing or slow
database (a fake writer): acknowledgement after the fsync, drain in order, the bound."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.adapters.spool import (
    AsyncSpool,
    Dropped,
    FullPolicy,
    Spool,
    SpoolError,
    decode,
    encode,
)
from gateway.core.readings import (
    Batch,
    DeadLetter,
    DeadLetterReason,
    DeviceEvent,
    Presence,
    Reading,
)
from gateway.ingest import IngestPipeline
from gateway.metrics import Metrics
from tests.test_pipeline import REGISTRY, FakeWriter, message

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def batch(n: int, start: int = 0) -> Batch:
    return Batch(
        readings=[
            Reading(T0 + timedelta(seconds=start + i), "P1-lamp", "power_w", 1.5 * i)
            for i in range(n)
        ]
    )


def test_a_batch_of_every_kind_survives_encoding() -> None:
    original = Batch(
        readings=[Reading(T0, "d1", "energy_kwh", 1234.567, 1), Reading(T0, "d1", "lamp_on", 1.0)],
        events=[DeviceEvent(T0, "P1", "cab-1", "door_open", {"nested": [1, {"a": None}]})],
        presence=[Presence("P1", "online", T0), Presence("P2", "offline", None)],
        dead_letters=[
            DeadLetter(
                "poles/P1/telemetry",
                DeadLetterReason.MALFORMED,
                "not JSON",
                b"\xff\x00binary",
                "P1",
                None,
                None,
            )
        ],
    )
    assert decode(encode(original)) == original


def test_a_spool_written_in_another_format_is_refused() -> None:
    with pytest.raises(SpoolError, match="format 99"):
        decode(b'{"v": 99, "r": []}')


def test_batches_come_out_in_order_and_survive_reopening(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**6, policy=FullPolicy.BLOCK)
    for i in range(3):
        assert spool.append(encode(batch(2, start=10 * i)), 2) == Dropped()
    spool.close()  # as if the process died: everything appended is on disk

    spool = Spool(tmp_path, max_bytes=10**6, policy=FullPolicy.BLOCK)
    assert (spool.depth.batches, spool.depth.readings) == (3, 6)
    seen = []
    while (item := spool.oldest()) is not None:
        seq, raw = item
        seen.append(decode(raw).readings[0].ts)
        spool.remove(seq)
    assert seen == [T0, T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)]
    assert spool.depth.batches == spool.depth.readings == spool.depth.bytes == 0


def test_a_full_spool_blocks_or_drops_the_oldest_and_counts_it(tmp_path: Path) -> None:
    body = encode(batch(5))
    bound = 3 * len(body)
    blocking = Spool(tmp_path / "block", max_bytes=bound, policy=FullPolicy.BLOCK)
    for _ in range(3):
        assert blocking.append(body, 5) == Dropped()
    assert blocking.append(body, 5) is None  # nothing written
    assert blocking.depth.batches == 3

    dropping = Spool(tmp_path / "drop", max_bytes=bound, policy=FullPolicy.DROP_OLDEST)
    for i in range(3):
        dropping.append(encode(batch(5, start=100 * i)), 5)
    dropped = dropping.append(encode(batch(5, start=300)), 5)
    assert dropped == Dropped(batches=1, readings=5, bytes=len(body))
    assert (dropping.depth.batches, dropping.depth.readings) == (3, 15)
    oldest = dropping.oldest()
    assert oldest is not None
    assert decode(oldest[1]).readings[0].ts == T0 + timedelta(seconds=100)  # the first went


def test_a_batch_larger_than_the_bound_still_enters_an_empty_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10, policy=FullPolicy.BLOCK)
    assert spool.append(encode(batch(50)), 50) == Dropped()
    assert spool.append(encode(batch(1)), 1) is None


def test_a_drained_spool_gives_its_disk_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**9, policy=FullPolicy.BLOCK)
    for i in range(50):
        spool.append(encode(batch(200, start=1000 * i)), 200)
    full = sum(f.stat().st_size for f in tmp_path.iterdir())
    while (item := spool.oldest()) is not None:
        spool.remove(item[0])
    empty = sum(f.stat().st_size for f in tmp_path.iterdir())
    assert empty < full / 10, (full, empty)


# --- the pipeline with a spool -------------------------------------------------


def spooling_pipeline(
    writer: FakeWriter,
    folder: Path,
    *,
    max_bytes: int = 10**7,
    policy: FullPolicy = FullPolicy.BLOCK,
    after_s: float = 5.0,
) -> tuple[IngestPipeline, AsyncSpool, Metrics]:
    spool = AsyncSpool.open(folder, max_bytes=max_bytes, policy=policy)
    metrics = Metrics()
    p = IngestPipeline(
        writer=writer,
        registry=lambda: REGISTRY,
        metrics=metrics,
        prefix="poles",
        max_readings=10,
        max_delay_s=0.01,
        spool=spool,
        spool_after_s=after_s,
    )
    return p, spool, metrics


def stored_ts(writer: FakeWriter) -> list[float]:
    return [r.ts.timestamp() for b in writer.batches for r in b.readings if r.metric == "power_w"]


def value(metrics: Metrics, name: str) -> float:
    got = metrics.registry.get_sample_value(name)
    assert got is not None, name
    return got


async def eventually(check: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_an_outage_is_spooled_acknowledged_and_drained_in_order(tmp_path: Path) -> None:
    writer, acks = FakeWriter(), list[int]()
    p, spool, metrics = spooling_pipeline(writer, tmp_path)
    committed: list[Batch] = []
    p.on_committed.append(committed.append)
    writer.fail = 10**6  # the database is down
    runner = asyncio.create_task(p.run())
    try:
        for i in range(20):
            await p.put(message(i, acks))
        await eventually(lambda: len(acks) == 20)  # acknowledged once on disk
        assert writer.batches == []
        assert committed == []
        assert spool.depth.readings == 40
        assert value(metrics, "polegw_spool_readings") == 40
        writer.fail = 0  # the database is back: the drainer moves everything, oldest first
        for i in range(20, 30):  # while live messages keep coming
            await p.put(message(i, acks))
        await eventually(lambda: len(stored_ts(writer)) == 30)
        assert stored_ts(writer) == [float(i) for i in range(30)]
        await eventually(lambda: len(committed) == len(writer.batches))  # hooks run after
        assert [b.readings for b in committed] == [b.readings for b in writer.batches]
        await eventually(lambda: not spool)
        assert value(metrics, "polegw_spool_drained_readings_total") == value(
            metrics, "polegw_spool_appended_readings_total"
        )
        assert value(metrics, "polegw_spool_readings") == 0
    finally:
        runner.cancel()
        await spool.close()


async def test_a_slow_database_sends_batches_to_the_spool(tmp_path: Path) -> None:
    writer, acks = FakeWriter(), list[int]()
    p, spool, _metrics = spooling_pipeline(writer, tmp_path, after_s=0.1)
    writer.gate.clear()  # every write hangs
    runner = asyncio.create_task(p.run())
    try:
        for i in range(4):
            await p.put(message(i, acks))
        await eventually(lambda: len(acks) == 4)
        assert spool.depth.readings == 8
        assert writer.batches == []
        writer.gate.set()
        await eventually(lambda: not spool)
        assert stored_ts(writer) == [0.0, 1.0, 2.0, 3.0]
    finally:
        runner.cancel()
        await spool.close()


async def test_a_full_spool_stops_acknowledging_until_it_drains(tmp_path: Path) -> None:
    writer, acks = FakeWriter(), list[int]()
    one = len(encode(Batch(readings=[Reading(T0, "P1-lamp", "power_w", 1.0)] * 10)))
    p, spool, metrics = spooling_pipeline(writer, tmp_path, max_bytes=3 * one)
    writer.fail = 10**6
    runner = asyncio.create_task(p.run())
    try:
        for i in range(25):
            p.offer(message(i, acks))  # as MQTT does: no waiting
            await asyncio.sleep(0.002)
        await eventually(lambda: value(metrics, "polegw_spool_full") == 1)
        held = len(acks)
        assert held < 25
        assert spool.depth.batches <= 3
        await asyncio.sleep(0.2)
        assert len(acks) == held  # blocked: no acknowledgement while full
        writer.fail = 0
        assert await p.drain(timeout_s=5)
        await eventually(lambda: not spool)
        assert acks == list(range(25))
        assert stored_ts(writer) == [float(i) for i in range(25)]
        assert value(metrics, "polegw_spool_full") == 0
        assert value(metrics, "polegw_spool_dropped_readings_total") == 0
    finally:
        runner.cancel()
        await spool.close()


async def test_drop_oldest_keeps_acknowledging_and_counts_every_dropped_reading(
    tmp_path: Path,
) -> None:
    writer, acks = FakeWriter(), list[int]()
    one = len(encode(Batch(readings=[Reading(T0, "P1-lamp", "power_w", 1.0)] * 10)))
    p, spool, metrics = spooling_pipeline(
        writer, tmp_path, max_bytes=3 * one, policy=FullPolicy.DROP_OLDEST
    )
    writer.fail = 10**6
    runner = asyncio.create_task(p.run())
    try:
        for i in range(40):
            await p.put(message(i, acks))
        await eventually(lambda: len(acks) == 40)
        dropped = value(metrics, "polegw_spool_dropped_readings_total")
        assert dropped > 0
        writer.fail = 0
        await eventually(lambda: not spool)
        kept = stored_ts(writer)
        assert 2 * len(kept) + dropped == 80  # two readings per message: all accounted for
        assert kept == [float(i) for i in range(40 - len(kept), 40)]  # the oldest went
    finally:
        runner.cancel()
        await spool.close()


async def test_a_spool_left_by_a_crash_is_drained_before_new_batches(tmp_path: Path) -> None:
    left = Spool(tmp_path, max_bytes=10**6, policy=FullPolicy.BLOCK)
    left.append(encode(Batch(readings=[Reading(T0, "P1-lamp", "power_w", 7.0)])), 1)
    left.close()
    writer, acks = FakeWriter(), list[int]()
    p, spool, _ = spooling_pipeline(writer, tmp_path)
    runner = asyncio.create_task(p.run())
    try:
        await p.put(message(2_000_000_000, acks))
        await eventually(lambda: len(writer.batches) == 2)
        assert writer.batches[0].readings[0].value == 7.0  # the old batch first
        await eventually(lambda: not spool)
    finally:
        runner.cancel()
        await spool.close()


async def test_a_damaged_batch_is_set_aside_and_the_rest_drains(tmp_path: Path) -> None:
    left = Spool(tmp_path, max_bytes=10**6, policy=FullPolicy.BLOCK)
    left.append(b'{"v": 1, "r": [["not a time", "P1-lamp", "power_w", 1.0, 0]]}', 1)
    left.append(encode(Batch(readings=[Reading(T0, "P1-lamp", "power_w", 7.0)])), 1)
    left.close()
    writer = FakeWriter()
    p, spool, metrics = spooling_pipeline(writer, tmp_path)
    runner = asyncio.create_task(p.run())
    try:
        await eventually(lambda: not spool)
        assert [b.readings[0].value for b in writer.batches] == [7.0]
        assert value(metrics, "polegw_spool_errors_total") == 1
    finally:
        runner.cancel()
        await spool.close()
    kept = sqlite3.connect(tmp_path / "spool.sqlite3").execute("SELECT seq, error FROM unreadable")
    assert [(seq, error.split(":")[0]) for seq, error in kept] == [(1, "ValueError")]
