"""The ingest pipeline with a fake writer: acknowledgement only after commit, in order,
retries while storage is down, bounded intake."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from gateway.adapters.mqtt import Inbound
from gateway.core.profiles import load_catalog
from gateway.core.readings import Batch, WriteResult
from gateway.core.registry import DeviceRef, Registry
from gateway.errors import StorageUnavailable
from gateway.ingest import IngestPipeline
from gateway.metrics import Metrics

CATALOG = load_catalog()
REGISTRY = Registry(["P1"], [DeviceRef("P1-lamp", "P1", CATALOG["lamp-controller"])])


def message(i: int, acks: list[int]) -> Inbound:
    payload = orjson.dumps(
        {"ts": i * 1000, "devices": {"P1-lamp": {"power_w": 1.0, "dim_pct": 50}}}
    )

    def ack() -> bool:
        acks.append(i)
        return True

    return Inbound("poles/P1/telemetry", payload, ack)


class FakeWriter:
    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.fail = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, batch: Batch) -> WriteResult:
        await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise StorageUnavailable("down")
        self.batches.append(batch)
        return WriteResult(len(batch.readings), 0)


def pipeline(writer: FakeWriter, **kw: float) -> IngestPipeline:
    return IngestPipeline(
        writer=writer,
        registry=lambda: REGISTRY,
        metrics=Metrics(),
        prefix="poles",
        **kw,  # type: ignore[arg-type]
    )


async def test_acks_follow_commits_in_arrival_order() -> None:
    writer, acks = FakeWriter(), list[int]()
    writer.gate.clear()
    p = pipeline(writer, max_readings=10, max_delay_s=0.01)
    runner = asyncio.create_task(p.run())
    # Two full batches (5 messages of 2 readings each): one held by the writer,
    # one collecting.
    for i in range(10):
        await p.put(message(i, acks))
    await asyncio.sleep(0.05)
    assert acks == []  # nothing committed yet: nothing acknowledged
    writer.gate.set()
    assert await p.drain(timeout_s=2)
    runner.cancel()
    assert acks == list(range(10))
    assert [len(b.readings) for b in writer.batches] == [10, 10]


async def test_storage_outage_holds_acks_and_retries_the_same_batch() -> None:
    writer, acks = FakeWriter(), list[int]()
    writer.fail = 3
    p = pipeline(writer, max_readings=100, max_delay_s=0.01)
    runner = asyncio.create_task(p.run())
    for i in range(5):
        await p.put(message(i, acks))
    assert await p.drain(timeout_s=10)
    runner.cancel()
    assert acks == list(range(5))
    assert [len(b.readings) for b in writer.batches] == [10]


async def test_intake_stops_while_a_full_batch_waits() -> None:
    writer, acks = FakeWriter(), list[int]()
    writer.gate.clear()
    p = pipeline(writer, max_readings=4, max_delay_s=0.01)
    runner = asyncio.create_task(p.run())
    # One batch (2 messages = 4 readings) is with the stalled writer, the next one fills up...
    for i in range(4):
        await p.put(message(i, acks))
    # ...and the fifth message must wait: memory stays bounded.
    blocked = asyncio.create_task(p.put(message(4, acks)))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    assert p.pending_messages == 4
    writer.gate.set()
    await asyncio.wait_for(blocked, 2)
    assert await p.drain(timeout_s=2)
    runner.cancel()
    assert acks == list(range(5))


async def test_drain_gives_up_when_storage_stays_down() -> None:
    writer, acks = FakeWriter(), list[int]()
    writer.fail = 10**6
    p = pipeline(writer, max_readings=10, max_delay_s=0.01)
    runner = asyncio.create_task(p.run())
    await p.put(message(0, acks))
    assert not await p.drain(timeout_s=0.3)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert acks == []  # never acknowledged: the broker will redeliver


async def test_implausible_clocks_are_flagged_and_counted_not_dropped() -> None:
    writer, acks = FakeWriter(), list[int]()
    metrics = Metrics()
    p = IngestPipeline(writer=writer, registry=lambda: REGISTRY, metrics=metrics, prefix="poles")
    runner = asyncio.create_task(p.run())
    future = orjson.dumps({"ts": "2099-01-01T00:00:00Z", "devices": {"P1-lamp": {"power_w": 1.0}}})
    ancient = orjson.dumps({"ts": 0, "devices": {"P1-lamp": {"power_w": 1.0, "dim_pct": 5}}})
    for payload in (future, ancient):
        p.offer(Inbound("poles/P1/telemetry", payload, lambda: True))
    await p.put(message(int(time.time()), acks))  # a good clock
    assert await p.drain(timeout_s=2)
    runner.cancel()
    qualities = [r.quality for b in writer.batches for r in b.readings]
    assert qualities == [1, 2, 2, 0, 0]  # ahead, stale, stale, good, good
    flagged = metrics.readings_clock_flagged
    assert flagged.labels("ahead")._value.get() == 1
    assert flagged.labels("stale")._value.get() == 2
