"""Issue 16 item 11: a protective action to an offline lamp is retried until it
succeeds, and a lamp offline at a lighting step gets the step's level when
it comes back in the middle of the night (desired state, reconciled on return),
for a polled (Modbus) lamp, whose command is refused at once while it is offline,
and a publishing (MQTT) lamp, whose command times out while its pole is away.

Real database, real CommandDispatcher and StateStore; the seams faked are the
Modbus bus (`bus_for`) and the broker (`publish`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.command_store import CommandStore
from gateway.adapters.lighting_store import LightingStore
from gateway.adapters.modbus_bus import PollFailed
from gateway.commands import CommandDispatcher
from gateway.core.device_commands import ModbusWrite
from gateway.core.site import DeviceSpec, Location, ModbusEndpoint, PoleSpec, SiteSpec
from gateway.lighting import LightingDispatcher, SiteDefaults
from gateway.modbus_polling import StateStore
from gateway.registry_source import RegistrySource
from tests.support import eventually
from tests.test_emergency_actions import (
    Running,
    all_in,
    fast,
    open_emergency,
    until_settled,
)
from tests.test_lighting_api import LAT, LON, ROAD, _setup_group, local

MODBUS_LAMP, MQTT_LAMP = "P1-lamp", "P2-lamp"


def site() -> SiteSpec:
    endpoint = ModbusEndpoint(host="127.0.0.1", port=1502, unit=1)
    return SiteSpec(
        poles=[
            PoleSpec(
                id="P1",
                road=ROAD,
                location=Location(lat=LAT, lon=LON),
                devices=[
                    DeviceSpec(
                        id=MODBUS_LAMP,
                        profile="lamp-controller",
                        transport="modbus",
                        modbus=endpoint,
                    )
                ],
            ),
            PoleSpec(
                id="P2",
                road=ROAD,
                location=Location(lat=LAT, lon=LON),
                devices=[DeviceSpec(id=MQTT_LAMP, profile="lamp-controller")],
            ),
        ]
    )


class Lamps:
    """The Modbus lamp's bus and the MQTT lamp's pole: away until `back()`."""

    def __init__(self) -> None:
        self.present = False
        self.writes: list[tuple[str, float | bool]] = []  # Modbus lamp: point, value
        self.published: list[tuple[str, dict[str, Any]]] = []  # MQTT lamp: command, args
        self.dispatcher: CommandDispatcher | None = None

    async def write(self, device_id: str, write: ModbusWrite) -> float | bool | None:
        if not self.present:
            raise PollFailed(
                "offline", "the device is offline (not answering polls)", reconnect=False
            )
        self.writes.append((write.point, write.value))
        return write.value

    def bus_for(self, device_id: str) -> Lamps | None:
        return self if device_id == MODBUS_LAMP else None

    async def publish(self, topic: str, payload: bytes, _expiry: int) -> None:
        body = orjson.loads(payload)
        if not self.present:
            return  # the pole is away: no reply, the command times out
        self.published.append((body["command"], body["args"]))
        reply = orjson.dumps({"id": body["id"], "ok": True, "error": None})
        assert self.dispatcher is not None
        asyncio.get_running_loop().call_soon(self.dispatcher.on_reply, topic + "/reply", reply)


async def states_of(pool: AsyncConnectionPool, ids: list[str]) -> list[tuple[str, str, str]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT device_id, command, state FROM device_commands WHERE id = ANY(%s::uuid[])"
            " ORDER BY seq",
            (ids,),
        )
        return [(str(d), str(c), str(s)) for d, c, s in await cur.fetchall()]


async def test_a_lamp_offline_at_a_step_gets_its_level_when_it_returns_mid_night(
    pool: AsyncConnectionPool, registry: RegistrySource
) -> None:
    await _setup_group(pool)  # Renmin Rd: dusk 100, 23:00 60, 01:00 40, dawn 0
    lamps = Lamps()
    commands = CommandDispatcher(
        store=CommandStore(pool),
        bus_for=lamps.bus_for,  # type: ignore[arg-type]
        publish=lamps.publish,
        prefix="t/poles",
        timeout_s=0.3,
    )
    lamps.dispatcher = commands
    clock = [local(22, 23)]
    lighting = LightingDispatcher(
        pool=pool,
        registry=registry,
        commands=commands,
        defaults=SiteDefaults(LAT, LON, "Asia/Shanghai"),
        clock=lambda: clock[0],
        reload_s=3600,  # only a step instant or a poke wakes it
    )
    store = LightingStore(pool)
    states = StateStore(pool)
    states.on_online.append(lighting.poke)
    writer = asyncio.create_task(states.run())
    stop = asyncio.Event()
    loop: asyncio.Task[None] | None = None
    try:
        # 23:00 with both lamps away: the Modbus lamp's commands are refused at
        # once, the MQTT lamp's time out.
        states(MODBUS_LAMP, False, datetime.now(UTC), "no answer")
        states(MQTT_LAMP, False, datetime.now(UTC), "its pole reported offline")
        await lighting.tick()
        step = (await store.last_dispatches("renmin", 1))[0]
        assert step["level"] == 60
        ids = [str(c) for c in step["commands"]]

        async def ended() -> bool:
            return all(s in ("failed", "timed_out") for _, _, s in await states_of(pool, ids))

        for _ in range(50):
            if await ended():
                break
            await asyncio.sleep(0.1)
        assert await ended(), await states_of(pool, ids)
        await lighting.tick()  # still away: nothing is sent again
        assert (lamps.writes, lamps.published) == ([], [])
        assert len((await store.last_dispatches("renmin", 1))[0]["commands"]) == len(ids)

        # 00:30: both come back (the bus answers, the pole reports online).
        clock[0] = local(23, 0, 30)
        loop = asyncio.create_task(lighting.run(stop))
        await asyncio.sleep(0.2)  # its first tick: nothing to do yet
        lamps.present = True
        states(MODBUS_LAMP, True, datetime.now(UTC), None)
        states(MQTT_LAMP, True, datetime.now(UTC), None)
        await eventually(
            lambda: ("dim_pct", 60) in lamps.writes and ("set_dim", {"pct": 60}) in lamps.published,
            within=10,
            what="the returning lamps to get the step's level",
        )
        assert lamps.writes == [("lamp_on", True), ("dim_pct", 60)]
        assert lamps.published == [("switch_on", {}), ("set_dim", {"pct": 60})]
        step = (await store.last_dispatches("renmin", 1))[0]
        assert step["level"] == 60  # the same step, with the new commands recorded
        all_ids = [str(c) for c in step["commands"]]
        for _ in range(50):
            rows = await states_of(pool, all_ids)
            if all(s not in ("pending", "sent") for _, _, s in rows):
                break
            await asyncio.sleep(0.1)
        modbus = [(c, s) for d, c, s in rows if d == MODBUS_LAMP]
        assert modbus == [
            ("switch_on", "failed"),
            ("set_dim", "failed"),
            ("switch_on", "succeeded"),
            ("set_dim", "succeeded"),
        ]

        # Settled: another wake-up sends nothing more.
        lighting.poke()
        await asyncio.sleep(0.5)
        assert len(lamps.writes) == 2
        assert len(lamps.published) == 2
    finally:
        stop.set()
        if loop is not None:
            await asyncio.wait_for(loop, 5)
        writer.cancel()
        await commands.close()


async def test_a_protective_action_to_an_offline_lamp_is_retried_until_it_succeeds(
    database_url: str, pool: AsyncConnectionPool, registry: RegistrySource
) -> None:
    """A command to an offline Modbus device is refused at once; an emergency's
    protective action meets that as a failed attempt and is retried with back-off
    (docs/decisions.md "Protective actions: stored with the emergency, issued by a
    retry loop") until the lamp answers again."""
    lamps = Lamps()
    refusals = [3]  # the first three writes meet an offline lamp

    async def write(device_id: str, write: ModbusWrite) -> float | bool | None:
        if refusals[0] > 0:
            refusals[0] -= 1
            raise PollFailed(
                "offline", "the device is offline (not answering polls)", reconnect=False
            )
        lamps.writes.append((write.point, write.value))
        return write.value

    lamps.write = write  # type: ignore[method-assign]
    d = CommandDispatcher(
        store=CommandStore(pool),
        bus_for=lamps.bus_for,  # type: ignore[arg-type]
        publish=lamps.publish,
        prefix="t/poles",
        timeout_s=0.3,
    )

    def tried() -> list[tuple[int, str, str]]:
        """seq, command, state of every command to the Modbus lamp."""
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT seq, command, state, error FROM device_commands WHERE device_id = %s",
                (MODBUS_LAMP,),
            ).fetchall()
        return [(int(q), str(c), f"{s}: {e}" if e else str(s)) for q, c, s, e in rows]

    before = max((q for q, _, _ in tried()), default=0)  # the other test's commands
    eid = await open_emergency(pool, registry, d, "P1")
    async with Running(fast(pool, registry, d), d):
        rows = await until_settled(pool, eid, all_in("succeeded", "failed"))
    assert {(a["device_id"], a["command"], a["state"]) for a in rows} == {
        (MODBUS_LAMP, "switch_on", "succeeded"),
        (MODBUS_LAMP, "set_dim", "succeeded"),
    }
    assert sum(a["attempts"] for a in rows) == 5  # 3 refused + 2 that went through
    assert sorted(lamps.writes, key=str) == sorted([("lamp_on", True), ("dim_pct", 100)], key=str)
    now = sorted(state for q, _, state in tried() if q > before)
    assert now == ["failed: the device is offline (not answering polls)"] * 3 + ["succeeded"] * 2
