"""With replicas, each receives a share of a device's messages: a replica that saw
nothing from a device for its silence limit asks the database whether another
replica stored something before calling it offline (gateway/presence.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.core.readings import Batch, Reading
from gateway.modbus_polling import StateStore
from gateway.presence import MqttPresence, heard_in
from gateway.registry_source import RegistrySource
from tests.support import POLES, eventually

DEVICE = f"{POLES[0]}-env"  # env-station: 5 x 60 s of silence
LIMIT = timedelta(seconds=300)
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


class Recorded(StateStore):
    """The changes a presence tracker reports, kept in memory."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, bool, datetime]] = []

    def __call__(self, device_id: str, online: bool, since: datetime, detail: str | None) -> None:
        self.changes.append((device_id, online, since))

    async def recorded(self) -> dict[str, bool]:
        return {}


async def store(pool: AsyncConnectionPool, ts: datetime) -> None:
    """A reading stored by another replica."""
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO telemetry (ts, device_id, metric, value, quality)"
            " VALUES (%s, %s, 'temp_c', 12.5, 0)",
            (ts, DEVICE),
        )


async def test_silence_is_judged_from_what_any_replica_stored(
    pool: AsyncConnectionPool, registry: RegistrySource
) -> None:
    now = [T0]
    states = Recorded()
    ask = heard_in(pool, registry)
    failing = [False]

    async def heard(devices: list[str], since: datetime) -> dict[str, datetime]:
        if failing[0]:
            raise psycopg.OperationalError("the database is away")
        return await ask(devices, since)

    presence = MqttPresence(registry, states, clock=lambda: now[0], every_s=0.01, heard=heard)
    stop = asyncio.Event()
    task = asyncio.create_task(presence.run(stop))
    try:
        presence.on_batch(Batch(readings=[Reading(T0, DEVICE, "temp_c", 12.5, 0)]))
        await eventually(lambda: states.changes == [(DEVICE, True, T0)], within=5, what="online")

        # This replica hears nothing more, but another stored a reading at +200 s.
        await store(pool, T0 + timedelta(seconds=200))
        now[0] = T0 + LIMIT + timedelta(seconds=10)
        await asyncio.sleep(0.3)
        assert states.changes == [(DEVICE, True, T0)], "offline although another replica heard it"

        # The database cannot say: no judgement until it can.
        failing[0] = True
        now[0] = T0 + timedelta(seconds=200) + LIMIT + timedelta(seconds=10)
        await asyncio.sleep(0.3)
        assert len(states.changes) == 1

        # Nobody has heard it since +200 s: offline from +200 s + the limit.
        failing[0] = False
        await eventually(lambda: len(states.changes) == 2, within=5, what="offline")
        assert states.changes[1] == (DEVICE, False, T0 + timedelta(seconds=200) + LIMIT)
    finally:
        stop.set()
        await task
