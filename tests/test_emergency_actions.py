"""Protective actions are stored with the emergency and issued by a retry loop:
retried with back-off until they succeed, failed for good (with a timeline
entry) after the last attempt, resumed after a restart, cancelled when the
emergency is no longer open, never sent twice by two issuers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.adapters import emergency_store
from gateway.adapters.command_store import CommandStore
from gateway.commands import CommandDispatcher
from gateway.core.auth import Principal, Role
from gateway.core.emergencies import DEFAULT_ACTIONS
from gateway.core.profiles import load_catalog
from gateway.core.site import SiteSpec
from gateway.emergencies import SYSTEM_AUTHOR, ProtectiveActions, protect, record_plan
from gateway.registry_source import RegistrySource
from tests.support import eventually, poles_with

CATALOG = load_catalog()
POLES = [f"P{n:04d}" for n in range(1, 10)]


def site() -> SiteSpec:
    return poles_with(POLES, lamp="lamp-controller", ports="port-meter-4")


class Broker:
    """A fake MQTT broker and poles. `script[(device, command)]` lists what the
    next attempts meet: "down" (the publish fails), "silent" (no reply: the
    command times out), "refused" (the pole answers no); after the list, the
    pole answers yes. `default` applies to commands not in the script."""

    def __init__(
        self, default: str = "ok", script: dict[tuple[str, str], list[str]] | None = None
    ) -> None:
        self.default = default
        self.script = script or {}
        self.attempts: Counter[tuple[str, str]] = Counter()
        # Publishes per (device, command, args): one per attempt.
        self.published: Counter[tuple[str, str, str]] = Counter()
        self.dispatcher: CommandDispatcher | None = None

    async def publish(self, topic: str, payload: bytes, _expiry: int) -> None:
        body = orjson.loads(payload)
        device = topic.rsplit("/", 1)[-1]
        key = (device, body["command"])
        n = self.attempts[key]
        self.attempts[key] += 1
        self.published[(device, body["command"], orjson.dumps(body["args"]).decode())] += 1
        plan = self.script.get(key, [])
        what = plan[n] if n < len(plan) else ("ok" if key in self.script else self.default)
        if what == "down":
            raise ConnectionError("broker unreachable")
        if what == "silent":
            return
        reply = orjson.dumps({"id": body["id"], "ok": what == "ok", "error": "busy"})
        assert self.dispatcher is not None
        asyncio.get_running_loop().call_soon(self.dispatcher.on_reply, topic + "/reply", reply)


def dispatcher(
    pool: AsyncConnectionPool, broker: Broker, timeout_s: float = 0.2
) -> CommandDispatcher:
    d = CommandDispatcher(
        store=CommandStore(pool),
        bus_for=lambda _: None,
        publish=broker.publish,
        prefix="t/poles",
        timeout_s=timeout_s,
    )
    broker.dispatcher = d
    return d


async def open_emergency(
    pool: AsyncConnectionPool,
    registry: RegistrySource,
    d: CommandDispatcher | None,
    pole: str,
    kind: str = "sos_call",
) -> int:
    """An emergency and its actions in one transaction, as the alarm policy does."""
    async with pool.connection() as conn, conn.transaction():
        row = await emergency_store.create(
            conn, type=kind, pole_id=pole, title="t", description="d", by=SYSTEM_AUTHOR
        )
        eid = int(row["id"])
        await record_plan(
            conn,
            registry=registry,
            dispatcher=d,
            emergency_id=eid,
            pole_id=pole,
            actions=DEFAULT_ACTIONS[kind],
        )
    return eid


async def actions_of(pool: AsyncConnectionPool, eid: int) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        return await emergency_store.actions(conn, eid)


async def timeline(pool: AsyncConnectionPool, eid: int) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        detail = await emergency_store.detail(conn, eid)
    assert detail is not None
    return list(detail["timeline"])


def commands(database_url: str, device: str, command: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT state FROM device_commands WHERE device_id = %s AND command = %s ORDER BY seq",
            (device, command),
        ).fetchall()
    return [str(r[0]) for r in rows]


def fast(
    pool: AsyncConnectionPool,
    registry: RegistrySource,
    d: CommandDispatcher,
    *,
    max_attempts: int = 5,
    stale_after_s: float = 600.0,
) -> ProtectiveActions:
    """An issuer with retries in tens of milliseconds."""
    return ProtectiveActions(
        pool=pool,
        registry=registry,
        dispatcher=d,
        max_attempts=max_attempts,
        retry_first_s=0.05,
        retry_cap_s=0.2,
        poll_s=0.05,
        stale_after_s=stale_after_s,
    )


class Running:
    """An issuer loop as a task."""

    def __init__(self, issuer: ProtectiveActions, d: CommandDispatcher) -> None:
        self.issuer, self.d = issuer, d
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ProtectiveActions:
        self.task = asyncio.create_task(self.issuer.run())
        return self.issuer

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.d.close()


async def until_settled(
    pool: AsyncConnectionPool, eid: int, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    async def check() -> bool:
        nonlocal rows
        rows = await actions_of(pool, eid)
        return done(rows)

    async with asyncio.timeout(15):
        while not await check():  # noqa: ASYNC110 - the condition is a database query
            await asyncio.sleep(0.05)
    return rows


def all_in(*states: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda rows: bool(rows) and all(r["state"] in states for r in rows)


async def test_failing_attempts_are_retried_until_the_action_succeeds(
    database_url: str, pool: AsyncConnectionPool, registry: RegistrySource
) -> None:
    lamp = "P0001-lamp"
    broker = Broker(
        script={(lamp, "switch_on"): ["down", "refused"], (lamp, "set_dim"): ["silent"]}
    )
    d = dispatcher(pool, broker)
    eid = await open_emergency(pool, registry, d, "P0001")
    stored = await actions_of(pool, eid)
    assert [(a["command"], a["state"]) for a in stored] == [
        ("switch_on", "pending"),
        ("set_dim", "pending"),
    ]
    async with Running(fast(pool, registry, d), d):
        rows = await until_settled(pool, eid, all_in("succeeded", "failed"))
    assert [(a["command"], a["state"], a["attempts"]) for a in rows] == [
        ("switch_on", "succeeded", 3),
        ("set_dim", "succeeded", 2),
    ]
    assert commands(database_url, lamp, "switch_on") == ["failed", "failed", "succeeded"]
    assert commands(database_url, lamp, "set_dim") == ["timed_out", "succeeded"]
    entries = [e for e in await timeline(pool, eid) if e["kind"] == "action"]
    # Issued (each with its first command), then the late successes.
    assert [e["data"].get("outcome") for e in entries] == [None, None, "succeeded", "succeeded"]
    assert sorted(e["text"] for e in entries[2:]) == [
        "lights_full: set_dim {'pct': 100} to P0001-lamp succeeded at attempt 2",
        "lights_full: switch_on {} to P0001-lamp succeeded at attempt 3",
    ]
    assert all(e["author"] == SYSTEM_AUTHOR for e in entries)


async def test_an_action_that_never_succeeds_fails_on_the_timeline(
    database_url: str, pool: AsyncConnectionPool, registry: RegistrySource
) -> None:
    lamp = "P0002-lamp"
    broker = Broker(script={(lamp, "set_dim"): ["silent"] * 10})
    d = dispatcher(pool, broker)
    eid = await open_emergency(pool, registry, d, "P0002")
    issuer = fast(pool, registry, d, max_attempts=3)
    async with Running(issuer, d):
        rows = await until_settled(pool, eid, all_in("succeeded", "failed"))
    by_command = {a["command"]: a for a in rows}
    assert by_command["switch_on"]["state"] == "succeeded"
    failed = by_command["set_dim"]
    assert (failed["state"], failed["attempts"]) == ("failed", 3)
    assert failed["last_error"].startswith("timed_out: no reply from the pole")
    assert commands(database_url, lamp, "set_dim") == ["timed_out"] * 3
    entries = [e for e in await timeline(pool, eid) if e["data"].get("outcome") == "failed"]
    assert len(entries) == 1
    assert entries[0]["kind"] == "action"
    assert "set_dim" in entries[0]["text"]
    assert "FAILED after 3 attempts" in entries[0]["text"]
    assert entries[0]["data"]["device_id"] == lamp


async def test_pending_actions_resume_after_a_restart(
    database_url: str, pool: AsyncConnectionPool, registry: RegistrySource
) -> None:
    # Process 1: one emergency's commands are out (no reply yet), another's
    # actions are stored but not issued yet, when the process dies.
    d1 = dispatcher(pool, Broker(default="silent"), timeout_s=30)
    out = await open_emergency(pool, registry, d1, "P0003")
    waiting = await open_emergency(pool, registry, d1, "P0004", kind="flooding")
    issued = await ProtectiveActions(pool=pool, registry=registry, dispatcher=d1).issue_due(
        emergency_id=out
    )
    assert len(issued) == 2
    await d1.close()  # the crash: the commands never finish
    assert [a["state"] for a in await actions_of(pool, out)] == ["running"] * 2
    assert {a["state"] for a in await actions_of(pool, waiting)} == {"pending"}

    # Process 2: start-up marks the commands left over as failed, and the loop
    # retries them and issues the pending ones.
    assert await CommandStore(pool).abandon_unfinished() >= 2
    broker = Broker()
    d2 = dispatcher(pool, broker)
    async with Running(fast(pool, registry, d2), d2):
        resumed = await until_settled(pool, out, all_in("succeeded", "failed"))
        flooded = await until_settled(pool, waiting, all_in("succeeded", "failed"))
    assert [(a["state"], a["attempts"]) for a in resumed] == [("succeeded", 2)] * 2
    assert {a["state"] for a in flooded} == {"succeeded"}
    assert sorted(a["args"]["port"] for a in flooded if a["command"] == "switch_port") == [
        1,
        2,
        3,
        4,
    ]
    assert all(a["attempts"] == 1 for a in flooded)
    assert sum(broker.published.values()) == 2 + len(flooded)


async def test_actions_of_an_emergency_no_longer_open_are_cancelled(
    pool: AsyncConnectionPool, registry: RegistrySource
) -> None:
    broker = Broker()
    d = dispatcher(pool, broker)
    eid = await open_emergency(pool, registry, d, "P0005")
    async with pool.connection() as conn, conn.transaction():
        await emergency_store.move(conn, eid, "resolved")
    async with Running(fast(pool, registry, d), d):
        rows = await until_settled(pool, eid, all_in("cancelled"))
    assert len(rows) == 2
    assert sum(broker.published.values()) == 0


async def test_two_issuers_never_send_the_same_attempt(
    pool: AsyncConnectionPool, registry: RegistrySource
) -> None:
    broker = Broker()
    d = dispatcher(pool, broker)
    eid = await open_emergency(pool, registry, d, "P0006", kind="leakage")
    planned = len(await actions_of(pool, eid))
    assert planned == 6  # four ports off, the lamp on and to full
    issuers = [ProtectiveActions(pool=pool, registry=registry, dispatcher=d) for _ in range(3)]
    results = await asyncio.gather(*(i.issue_due(emergency_id=eid) for i in issuers))
    assert sum(len(r) for r in results) == planned
    await eventually(lambda: sum(broker.published.values()) == planned, within=5)
    assert set(broker.published.values()) == {1}
    await d.close()


async def test_an_emergency_opened_by_hand_stores_and_issues_its_actions(
    database_url: str, pool: AsyncConnectionPool, registry: RegistrySource
) -> None:
    broker = Broker()
    d = dispatcher(pool, broker)
    async with pool.connection() as conn, conn.transaction():
        row = await emergency_store.create(
            conn, type="fire_smoke", pole_id="P0007", title="t", description="d", by="ops"
        )
    eid = int(row["id"])
    manager = Principal(7, "manager-1", Role.OPERATOR)
    records = await protect(
        pool=pool,
        registry=registry,
        dispatcher=d,
        emergency_id=eid,
        pole_id="P0007",
        actions=DEFAULT_ACTIONS["fire_smoke"],
        actor=manager,
    )
    assert [r["command"] for r in records] == ["switch_on", "set_dim"]
    rows = await actions_of(pool, eid)
    assert [(a["state"], a["requested_by"]) for a in rows] == [("running", "manager-1")] * 2
    entries = [e for e in await timeline(pool, eid) if e["kind"] == "action"]
    assert [e["data"]["command_id"] for e in entries] == [str(r["id"]) for r in records]
    assert all(e["author"] == "manager-1" for e in entries)
    await d.close()

    # Without a dispatcher (a process that does not run commands): noted, not stored.
    async with pool.connection() as conn, conn.transaction():
        row = await emergency_store.create(
            conn, type="fire_smoke", pole_id="P0008", title="t", description="d", by="ops"
        )
    other = int(row["id"])
    assert (
        await protect(
            pool=pool,
            registry=registry,
            dispatcher=None,
            emergency_id=other,
            pole_id="P0008",
            actions=DEFAULT_ACTIONS["fire_smoke"],
        )
        == []
    )
    assert await actions_of(pool, other) == []
    notes = [e["text"] for e in await timeline(pool, other) if e["kind"] == "action"]
    assert notes == [
        "lights_full: switch_on on P0008-lamp not sent",
        "lights_full: set_dim on P0008-lamp not sent",
    ]


async def test_an_attempt_without_an_outcome_counts_as_failed_after_a_while(
    pool: AsyncConnectionPool, registry: RegistrySource
) -> None:
    # The pole never answers and the command's own timeout is far away (as when
    # its outcome could not be recorded): the attempt is given up on after
    # stale_after_s, and the action fails in the end.
    d = dispatcher(pool, Broker(default="silent"), timeout_s=30)
    eid = await open_emergency(pool, registry, d, "P0009")
    issuer = fast(pool, registry, d, max_attempts=2, stale_after_s=0.3)
    async with Running(issuer, d):
        rows = await until_settled(pool, eid, all_in("succeeded", "failed"))
    assert [(a["state"], a["attempts"]) for a in rows] == [("failed", 2)] * 2
    assert all("no outcome within 0.3s" in a["last_error"] for a in rows)
