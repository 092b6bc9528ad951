"""The writer stores a reading once however often it is written (DESIGN.md invariant 3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from gateway.adapters.telemetry_writer import TelemetryWriter
from gateway.core.readings import (
    Batch,
    DeadLetter,
    DeadLetterReason,
    DeviceEvent,
    Presence,
    Reading,
)
from gateway.errors import StorageUnavailable

T0 = datetime(2026, 11, 22, 10, tzinfo=UTC)


def readings(n: int, start: int = 0) -> list[Reading]:
    return [
        Reading(T0 + timedelta(seconds=i), "P0001-lamp", "power_w", float(i))
        for i in range(start, start + n)
    ]


def rows(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT ts, device_id, metric, value FROM telemetry ORDER BY ts"
        ).fetchall()


async def test_fast_path_overlap_and_in_batch_duplicates(fresh_database_url: str) -> None:
    from gateway.adapters.migrate import upgrade

    upgrade(fresh_database_url)
    writer = TelemetryWriter(fresh_database_url)
    try:
        first = await writer.write(Batch(readings=readings(100)))
        assert (first.inserted, first.duplicates) == (100, 0)
        # Half already stored, half new: the COPY is refused and the staging path runs.
        second = await writer.write(Batch(readings=readings(100, start=50)))
        assert (second.inserted, second.duplicates) == (50, 50)
        # The same reading twice in one batch (a redelivery beside its original).
        twice = readings(1, start=500) * 2
        third = await writer.write(Batch(readings=twice))
        assert third.inserted == 1
        # The whole thing replayed: nothing changes.
        again = await writer.write(Batch(readings=readings(150) + readings(1, start=500)))
        assert (again.inserted, again.duplicates) == (0, 151)
    finally:
        await writer.close()
    stored = rows(fresh_database_url)
    assert len(stored) == 151
    assert len({(r[0], r[1], r[2]) for r in stored}) == 151


async def test_events_presence_and_dead_letters_are_idempotent(fresh_database_url: str) -> None:
    from gateway.adapters.migrate import upgrade

    upgrade(fresh_database_url)
    event = DeviceEvent(T0, "P0001", "P0001-cab", "door_open", {"by": "x"})
    dead = DeadLetter(
        "poles/P0001/telemetry", DeadLetterReason.MALFORMED, "bad\0", b"\xff{", "P0001"
    )
    writer = TelemetryWriter(fresh_database_url)
    try:
        for _ in range(2):
            await writer.write(
                Batch(
                    events=[event], presence=[Presence("P0001", "online", T0)], dead_letters=[dead]
                )
            )
        await writer.write(Batch(presence=[Presence("P0001", "online", T0 + timedelta(hours=1))]))
    finally:
        await writer.close()
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM device_events").fetchone() == (1,)
        assert conn.execute("SELECT count(*), min(detail) FROM dead_letters").fetchone() == (
            1,
            "bad\ufffd",
        )
        # The same state again does not move 'since'.
        assert conn.execute("SELECT state, since FROM pole_presence").fetchone() == ("online", T0)


async def test_unreachable_database_raises_storage_unavailable() -> None:
    writer = TelemetryWriter("postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(StorageUnavailable):
        await writer.write(Batch(readings=readings(1)))


async def test_a_batch_the_database_refuses_is_salvaged_not_fatal(fresh_database_url: str) -> None:
    """PostgreSQL's jsonb refuses \\u0000: the batch's other parts are stored and the
    refused event becomes a dead letter (no crash loop on a redelivered message)."""
    from gateway.adapters.migrate import upgrade

    upgrade(fresh_database_url)
    poisoned = DeviceEvent(T0, "P0001", "P0001-cab", "door_open", {"by": "\0"})
    good = DeviceEvent(T0, "P0001", "P0001-cab", "door_close", {})
    writer = TelemetryWriter(fresh_database_url)
    try:
        result = await writer.write(Batch(readings=readings(3), events=[poisoned, good]))
        assert result.inserted == 3
        # The connection is still usable afterwards.
        assert (await writer.write(Batch(readings=readings(1, start=10)))).inserted == 1
    finally:
        await writer.close()
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (4,)
        assert conn.execute("SELECT type FROM device_events").fetchall() == [("door_close",)]
        reason, detail = conn.execute("SELECT reason, detail FROM dead_letters").fetchone() or (
            "",
            "",
        )
    assert reason == "bad_value"
    assert "door_open" in detail
