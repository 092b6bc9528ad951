"""Event alarms survive a crash: the alarm engine's position in device_events is
recorded with the transitions it caused, and a runner that starts replays what
was committed after it, exactly once. Redelivered and replayed events cause
nothing; events that cause nothing still move the position on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.alarm_store import AlarmStore
from gateway.adapters.command_store import CommandStore
from gateway.adapters.telemetry_writer import TelemetryWriter
from gateway.alarming import AlarmRunner, build_alarm_runner
from gateway.commands import CommandDispatcher
from gateway.config import Settings
from gateway.core.alarms import AlarmEngine, Target, Transition, compile_rules
from gateway.core.profiles import load_catalog
from gateway.core.readings import Batch, DeviceEvent
from gateway.core.site import SiteSpec
from gateway.registry_source import RegistrySource
from tests.support import (
    count,
    eventually,
    poles_with,
)

CATALOG = load_catalog()
POLES = ("P0001", "P0002", "P0003", "P0004", "P0005")
T0 = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


def site() -> SiteSpec:
    return poles_with(POLES, sos="sos-button", lamp="lamp-controller")


@pytest.fixture
async def writer(database_url: str) -> AsyncIterator[TelemetryWriter]:
    w = TelemetryWriter(database_url)
    yield w
    await w.close()


def sos(pole: str, kind: str, at: datetime) -> DeviceEvent:
    return DeviceEvent(at, pole, f"{pole}-sos", kind, {})


class Dispatcher(CommandDispatcher):
    """The real dispatcher over a fake broker whose poles answer every command."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        super().__init__(
            store=CommandStore(pool),
            bus_for=lambda _: None,
            publish=self._publish_and_answer,
            prefix="t/poles",
            timeout_s=2.0,
        )

    async def _publish_and_answer(self, topic: str, payload: bytes, _expiry: int) -> None:
        body = orjson.dumps({"id": orjson.loads(payload)["id"], "ok": True})
        asyncio.get_running_loop().call_soon(self.on_reply, topic + "/reply", body)


class Gateway:
    """An alarm runner as the gateway builds it, running as a task."""

    def __init__(
        self,
        database_url: str,
        pool: AsyncConnectionPool,
        registry: RegistrySource,
        **runner: Any,
    ) -> None:
        self.dispatcher = Dispatcher(pool)
        self.runner = build_alarm_runner(
            settings=Settings(database_url=database_url),
            pool=pool,
            catalog=CATALOG,
            registry=registry,
            dispatcher=self.dispatcher,
        )
        for name, value in runner.items():
            setattr(self.runner, name, value)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AlarmRunner:
        self.task = asyncio.create_task(self.runner.run())
        async with asyncio.timeout(10):
            await self.runner.started.wait()
        await self.runner.settled()
        return self.runner

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.dispatcher.close()


def alarms(database_url: str, device: str) -> list[tuple[str, int]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT state, count FROM alarms WHERE device_id = %s ORDER BY id", (device,)
        ).fetchall()
    return [(str(r[0]), int(r[1])) for r in rows]


def emergencies(database_url: str, pole: str) -> int:
    return count(database_url, "SELECT count(*) FROM emergencies WHERE pole_id = %s", pole)


def raised_entries(database_url: str, pole: str) -> int:
    return count(
        database_url,
        "SELECT count(*) FROM emergency_timeline t JOIN emergencies e ON e.id = t.emergency_id"
        " WHERE e.pole_id = %s AND t.kind = 'raised'",
        pole,
    )


def actions(database_url: str, pole: str, state: str | None = None) -> int:
    return count(
        database_url,
        "SELECT count(*) FROM emergency_actions a JOIN emergencies e ON e.id = a.emergency_id"
        " WHERE e.pole_id = %s AND (%s::text IS NULL OR a.state = %s)",
        pole,
        state,
        state,
    )


def position(database_url: str) -> int:
    return count(database_url, "SELECT events_seq FROM alarm_progress")


def last_seq(database_url: str) -> int:
    return count(database_url, "SELECT coalesce(max(seq), 0) FROM device_events")


async def eventually_true(check: Any, within: float = 10.0) -> None:
    await eventually(check, within=within)


async def test_sos_committed_before_a_crash_raises_at_start_exactly_once(
    database_url: str,
    pool: AsyncConnectionPool,
    registry: RegistrySource,
    writer: TelemetryWriter,
) -> None:
    # The batch commits and the process dies before any alarm runner saw it.
    press = Batch(events=[sos("P0001", "sos_pressed", T0)])
    await writer.write(press)
    assert alarms(database_url, "P0001-sos") == []

    async with Gateway(database_url, pool, registry):
        # At start the runner replays what was committed after its position.
        assert alarms(database_url, "P0001-sos") == [("active", 1)]
        assert emergencies(database_url, "P0001") == 1
        await eventually_true(lambda: actions(database_url, "P0001", "succeeded") == 2)
    assert position(database_url) == last_seq(database_url)

    # Started again: nothing more, however often.
    for _ in range(2):
        async with Gateway(database_url, pool, registry):
            pass
    assert alarms(database_url, "P0001-sos") == [("active", 1)]
    assert emergencies(database_url, "P0001") == 1
    assert raised_entries(database_url, "P0001") == 1
    assert actions(database_url, "P0001") == 2
    assert (
        count(database_url, "SELECT count(*) FROM device_commands WHERE device_id = 'P0001-lamp'")
        == 2
    )


async def test_runner_killed_before_writing_loses_nothing(
    database_url: str,
    pool: AsyncConnectionPool,
    registry: RegistrySource,
    writer: TelemetryWriter,
) -> None:
    class StuckStore(AlarmStore):
        """Evaluated, never written: the process dies in that window."""

        def __init__(self, pool: AsyncConnectionPool) -> None:
            super().__init__(pool)
            self.attempted: list[Sequence[Transition]] = []

        async def apply(
            self, transitions: Sequence[Transition], *, events_seq: int | None = None
        ) -> None:
            self.attempted.append(transitions)
            await asyncio.Event().wait()

    gw = Gateway(database_url, pool, registry)
    stuck = StuckStore(pool)
    gw.runner._store = stuck  # the crash window, simulated
    async with gw as runner:
        press = Batch(events=[sos("P0002", "sos_pressed", T0)])
        await writer.write(press)
        runner.on_batch(press)
        await eventually_true(lambda: bool(stuck.attempted))
        # killed here, with the transition in memory
    assert alarms(database_url, "P0002-sos") == []

    async with Gateway(database_url, pool, registry):
        assert alarms(database_url, "P0002-sos") == [("active", 1)]
        assert emergencies(database_url, "P0002") == 1
        await eventually_true(lambda: actions(database_url, "P0002", "succeeded") == 2)


async def test_redelivered_and_replayed_events_do_not_re_raise(
    database_url: str,
    pool: AsyncConnectionPool,
    registry: RegistrySource,
    writer: TelemetryWriter,
) -> None:
    press = Batch(events=[sos("P0003", "sos_pressed", T0)])
    reset = Batch(events=[sos("P0003", "sos_cleared", T0 + timedelta(minutes=1))])
    async with Gateway(database_url, pool, registry) as runner:
        for batch in (press, reset):
            await writer.write(batch)
            runner.on_batch(batch)
        await runner.settled()
        assert alarms(database_url, "P0003-sos") == [("cleared", 1)]
        # The press again (an MQTT redelivery, a spooled batch written twice): the
        # database keeps it once and the alarm that cleared stays cleared.
        await writer.write(press)
        runner.on_batch(press)
        await runner.settled()
        assert alarms(database_url, "P0003-sos") == [("cleared", 1)]
    async with Gateway(database_url, pool, registry):
        pass
    assert alarms(database_url, "P0003-sos") == [("cleared", 1)]
    assert emergencies(database_url, "P0003") == 1
    assert raised_entries(database_url, "P0003") == 1
    # A new press is a new event: a new alarm, joining the emergency still open.
    again = Batch(events=[sos("P0003", "sos_pressed", T0 + timedelta(minutes=2))])
    await writer.write(again)
    async with Gateway(database_url, pool, registry):
        assert alarms(database_url, "P0003-sos") == [("cleared", 1), ("active", 1)]
    assert emergencies(database_url, "P0003") == 1
    assert raised_entries(database_url, "P0003") == 2


async def test_replay_follows_commit_order_across_chunks(
    database_url: str,
    pool: AsyncConnectionPool,
    registry: RegistrySource,
    writer: TelemetryWriter,
) -> None:
    # Press, reset, press, reset, press, committed while no runner was up; read
    # back two at a time: the last press leaves one alarm active.
    kinds = ["sos_pressed", "sos_cleared"] * 2 + ["sos_pressed"]
    for i, kind in enumerate(kinds):
        await writer.write(Batch(events=[sos("P0004", kind, T0 + timedelta(seconds=i))]))
    async with Gateway(database_url, pool, registry, _events_chunk=2):
        assert alarms(database_url, "P0004-sos") == [("cleared", 1)] * 2 + [("active", 1)]
    assert position(database_url) == last_seq(database_url)


async def test_events_that_cause_nothing_move_the_position_on(
    database_url: str,
    pool: AsyncConnectionPool,
    registry: RegistrySource,
    writer: TelemetryWriter,
) -> None:
    gw = Gateway(database_url, pool, registry, _progress_s=0.05)
    async with gw as runner:
        before = position(database_url)
        # The lamp reports being switched: no rule watches that.
        quiet = Batch(
            events=[DeviceEvent(T0, "P0005", "P0005-lamp", "sos_pressed", {})]
            + [
                DeviceEvent(T0 + timedelta(seconds=i), "P0005", "P0005-sos", "x", {})
                for i in (1, 2)
            ]
        )
        await writer.write(quiet)
        runner.on_batch(quiet)
        await runner.settled()
        assert last_seq(database_url) > before
        await eventually_true(lambda: position(database_url) == last_seq(database_url))
    assert alarms(database_url, "P0005-sos") == []
    assert alarms(database_url, "P0005-lamp") == []


async def test_shutdown_records_the_position(
    database_url: str,
    pool: AsyncConnectionPool,
    registry: RegistrySource,
    writer: TelemetryWriter,
) -> None:
    gw = Gateway(database_url, pool, registry, _progress_s=3600)
    async with gw as runner:
        quiet = Batch(events=[DeviceEvent(T0, "P0005", "P0005-sos", "y", {})])
        await writer.write(quiet)
        runner.on_batch(quiet)
        await runner.settled()
        assert position(database_url) < last_seq(database_url)  # not yet: a lazy write
        await runner.flush()
        assert position(database_url) == last_seq(database_url)


def test_an_open_quiet_alarm_still_clears_after_a_restart() -> None:
    """A clear_after_s alarm whose clear was lost: primed with its last_seen, the
    timer clears it once that is long enough ago."""
    rules = compile_rules(CATALOG)[0]
    rule = next(r for r in rules if r.clear_after_s is not None)
    e = AlarmEngine(rules)
    seen = T0 - timedelta(seconds=rule.clear_after_s or 0) - timedelta(seconds=1)
    e.prime([(rule.key, "d1")], {(rule.key, "d1"): seen})
    target = Target("d1", "P1", rule.profile)
    out = e.tick(T0, [target])
    assert [(type(t).__name__, t.rule.key) for t in out] == [("Clear", rule.key)]
    # Primed without a time (as before), it would never clear by quiet.
    e2 = AlarmEngine(rules)
    e2.prime([(rule.key, "d1")])
    assert e2.tick(T0 + timedelta(days=365), [target]) == []


async def test_events_are_numbered_in_commit_order(
    database_url: str, writer: TelemetryWriter
) -> None:
    first = Batch(events=[DeviceEvent(T0, "P0005", "P0005-sos", f"n{i}", {}) for i in range(3)])
    await writer.write(first)
    await writer.write(first)  # a duplicate takes no new number
    await writer.write(Batch(events=[DeviceEvent(T0, "P0005", "P0005-sos", "n9", {})]))
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT type FROM device_events WHERE type LIKE 'n%%' ORDER BY seq"
        ).fetchall()
    assert [r[0] for r in rows] == ["n0", "n1", "n2", "n9"]
