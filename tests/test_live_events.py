"""GET /api/v1/events: what the database commits reaches the console's event
stream within seconds, through a real gateway (uvicorn, PostgreSQL, Mosquitto);
tenants get no staff events; streams end when the listener loses the database
and when the server stops, and the server stops quickly with a stream open."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import uvicorn

from gateway.adapters.events import (
    MAX_PAYLOAD,
    LiveEvent,
    LiveEvents,
    StreamEnded,
    telemetry_notices,
)
from gateway.api.app import create_app
from tests.support import (
    TEST_PASSWORD,
    RunningGateway,
    add_user,
    api_context,
    auth_headers,
    gateway,
    gateway_settings,
    opened_pool,
    prepare_database,
    publish,
    telemetry_message,
    wait_for_port,
)

WITHIN_S = 5.0


@dataclass
class Stream:
    """An EventSource in miniature: reads one SSE response into events."""

    response: httpx.Response
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    lines: list[str] = field(default_factory=list)
    seen: list[tuple[str, Any]] = field(default_factory=list)  # every event, in order
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        name, data = "message", list[str]()
        try:
            async for line in self.response.aiter_lines():
                self.lines.append(line)
                if line == "":
                    if data:
                        event = (name, orjson.loads("\n".join(data)))
                        self.seen.append(event)
                        await self.events.put(event)
                    name, data = "message", []
                elif line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data.append(line.removeprefix("data: "))
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()

    async def started(self) -> None:
        """Wait for the first line: it says how long to wait before reconnecting (the
        server subscribed the stream before sending it)."""
        for _ in range(250):
            if self.lines:
                break
            await asyncio.sleep(0.02)
        assert self.lines[:1] == ["retry: 3000"]

    async def expect(
        self, name: str, match: Callable[[dict[str, Any]], bool], within: float = WITHIN_S
    ) -> dict[str, Any]:
        """The first event `name` whose data matches, skipping others."""
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {name} event matching within {within} s")
            try:
                got, data = await asyncio.wait_for(self.events.get(), left)
            except TimeoutError:
                continue
            if got == name and match(data):
                return dict(data)


@contextlib.asynccontextmanager
async def stream(gw: RunningGateway, headers: dict[str, str]) -> AsyncIterator[Stream]:
    async with (
        httpx.AsyncClient(base_url=gw.api, headers=headers, timeout=30) as client,
        client.stream("GET", "/api/v1/events") as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        s = Stream(response)
        reader = asyncio.create_task(s.read())
        try:
            await s.started()
            yield s
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def sql(url: str, statement: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, args)
        return cur.fetchall() if cur.description else []


@pytest.fixture
async def gw(fresh_database_url: str, mqtt_url: str, topic_prefix: str) -> AsyncIterator[Any]:
    await prepare_database(fresh_database_url)
    settings = gateway_settings(fresh_database_url, mqtt_url, topic_prefix, command_timeout_s=1)
    async with gateway(settings) as running:
        yield running


async def test_committed_changes_reach_the_stream(gw: RunningGateway, mqtt_url: str) -> None:
    url = gw.settings.require_database_url()
    prefix = gw.settings.mqtt_topic_prefix
    async with stream(gw, gw.headers) as s:
        # An alarm raised, then acknowledged, then cleared.
        (alarm_id,) = sql(
            url,
            "INSERT INTO alarms (rule_key, fault, severity, pole_id, device_id, first_seen,"
            " last_seen) VALUES ('lamp.failure', 'lamp_failure', 'critical', 'P0001',"
            " 'P0001-lamp', now(), now()) RETURNING id",
        )[0]
        got = await s.expect("alarm", lambda d: d["id"] == alarm_id)
        assert got == {
            "id": alarm_id,
            "pole_id": "P0001",
            "device_id": "P0001-lamp",
            "severity": "critical",
            "state": "active",
            "rule": "lamp.failure",
        }
        sql(url, "UPDATE alarms SET count = count + 1, last_seen = now() WHERE id = %s", alarm_id)
        sql(url, "UPDATE alarms SET state = 'acknowledged' WHERE id = %s", alarm_id)
        got = await s.expect("alarm", lambda d: d["id"] == alarm_id)
        assert got["state"] == "acknowledged"  # the count update alone said nothing

        # A command through the API: pending, sent, then timed out (no pole answers).
        async with httpx.AsyncClient(base_url=gw.api, headers=gw.headers) as api:
            r = await api.post(
                "/api/v1/devices/P0002-lamp/commands",
                json={"command": "set_dim", "args": {"pct": 30}},
            )
            assert r.status_code == 202, r.text
        command = r.json()["id"]
        states = []
        for _ in range(3):
            got = await s.expect("command", lambda d: d["id"] == command)
            assert got["device_id"] == "P0002-lamp"
            states.append(got["state"])
        assert states == ["pending", "sent", "timed_out"]

        # Telemetry over MQTT, committed by the gateway.
        now = datetime.now(UTC)
        publish(mqtt_url, [(f"{prefix}/P0003/telemetry", telemetry_message("P0003", now, 1))])
        got = await s.expect("telemetry", lambda d: "P0003-lamp" in d["device_ids"])
        assert {"P0003-lamp", "P0003-env"} <= set(got["device_ids"])
        assert "P0003" in got["pole_ids"]

        # A pole's presence is its MQTT devices' state.
        publish(
            mqtt_url,
            [(f"{prefix}/P0002/status", orjson.dumps({"state": "offline", "ts": now.isoformat()}))],
        )
        got = await s.expect("device", lambda d: d["device_id"] == "P0002-env")
        assert (got["pole_id"], got["state"]) == ("P0002", "offline")
        assert datetime.fromisoformat(got["since"])
        # A polled device's state.
        sql(
            url,
            "INSERT INTO devices (id, pole_id, profile, transport) VALUES"
            " ('P0001-pm', 'P0001', 'port-meter-4', 'modbus')",
        )
        sql(
            url,
            "INSERT INTO device_state (device_id, online, since) VALUES ('P0001-pm', true, now())",
        )
        got = await s.expect("device", lambda d: d["device_id"] == "P0001-pm")
        assert (got["pole_id"], got["state"]) == ("P0001", "online")

        # Emergencies and work orders: opened and changed.
        (eid,) = sql(
            url,
            "INSERT INTO emergencies (type, title, pole_id, opened_by) VALUES"
            " ('flooding', 'water', 'P0001', 'op') RETURNING id",
        )[0]
        assert await s.expect("emergency", lambda d: d["id"] == eid) == {
            "id": eid,
            "pole_id": "P0001",
            "state": "open",
        }
        (wid,) = sql(
            url,
            "INSERT INTO work_orders (title, pole_id, priority) VALUES ('fix', 'P0002', 'general')"
            " RETURNING id",
        )[0]
        assert await s.expect("work_order", lambda d: d["id"] == wid) == {
            "id": wid,
            "pole_id": "P0002",
            "state": "open",
        }
        sql(url, "UPDATE work_orders SET description = 'a note' WHERE id = %s", wid)
        assert (await s.expect("work_order", lambda d: d["id"] == wid))["state"] == "open"

        # A rolled-back change announces nothing.
        mark = len(s.seen)
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE alarms SET state = 'active' WHERE id = %s", (alarm_id,))
            conn.rollback()
        sql(
            url, "UPDATE emergencies SET state = 'resolved', resolved_at = now() WHERE id = %s", eid
        )
        assert (await s.expect("emergency", lambda d: d["id"] == eid))["state"] == "resolved"
        assert [name for name, _ in s.seen[mark:]] == ["emergency"]


async def test_a_tenant_gets_no_staff_events_and_strangers_nothing(gw: RunningGateway) -> None:
    url = gw.settings.require_database_url()
    tenant = auth_headers(url, "tenant", tenant="tn-telecom")
    async with stream(gw, gw.headers) as staff, stream(gw, tenant) as theirs:
        sql(
            url,
            "INSERT INTO alarms (rule_key, fault, severity, pole_id, device_id, first_seen,"
            " last_seen) VALUES ('r', 'f', 'warning', 'P0001', 'P0001-env', now(), now())",
        )
        await staff.expect("alarm", lambda d: True)
        await asyncio.sleep(0.5)
        assert theirs.events.empty()
        assert not theirs.ended.is_set()
    async with httpx.AsyncClient(base_url=gw.api) as client:
        r = await client.get("/api/v1/events")
        assert r.status_code == 401


async def test_a_browser_streams_with_its_session_cookie_alone(gw: RunningGateway) -> None:
    url = gw.settings.require_database_url()
    user = add_user(url, "maintainer")
    async with httpx.AsyncClient(base_url=gw.api, timeout=30) as browser:
        r = await browser.post(
            "/api/v1/auth/session", json={"username": user.name, "password": TEST_PASSWORD}
        )
        assert r.status_code == 200, r.text
        async with browser.stream("GET", "/api/v1/events") as response:
            assert response.status_code == 200
            s = Stream(response)
            reader = asyncio.create_task(s.read())
            try:
                await s.started()
                sql(
                    url,
                    "INSERT INTO emergencies (type, title, pole_id, opened_by) VALUES"
                    " ('fire_smoke', 'smoke', 'P0003', 'op')",
                )
                got = await s.expect("emergency", lambda d: d["pole_id"] == "P0003")
                assert got["state"] == "open"
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader


async def test_streams_end_when_the_listener_loses_the_database_and_events_resume(
    gw: RunningGateway,
) -> None:
    url = gw.settings.require_database_url()
    async with stream(gw, gw.headers) as s:
        killed = sql(
            url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'polegw-events' AND datname = current_database()",
        )
        assert killed == [(True,)]
        async with asyncio.timeout(WITHIN_S + 30):  # the first back-off is under a second
            await s.ended.wait()
    async with stream(gw, gw.headers) as s:
        sql(
            url,
            "INSERT INTO emergencies (type, title, pole_id, opened_by) VALUES"
            " ('sos_call', 'help', 'P0002', 'op')",
        )
        await s.expect("emergency", lambda d: d["pole_id"] == "P0002")


async def test_the_server_stops_quickly_with_a_stream_open(
    fresh_database_url: str, mqtt_url: str, topic_prefix: str
) -> None:
    await prepare_database(fresh_database_url)
    settings = gateway_settings(fresh_database_url, mqtt_url, topic_prefix)
    async with gateway(settings) as running, stream(running, running.headers) as s:
        started = time.monotonic()
        running.stop.set()
        async with asyncio.timeout(8):  # uvicorn's own grace period is 10 s
            await running.task
        assert time.monotonic() - started < 8
        async with asyncio.timeout(2):
            await s.ended.wait()


def test_telemetry_notices_fit_postgresql_and_name_each_device_once() -> None:
    ids = [f"P{n:05d}-device-{n % 7}" for n in range(3000)]
    payloads = telemetry_notices([*ids, *ids[:100]])
    assert len(payloads) > 1
    seen: list[str] = []
    for p in payloads:
        assert len(p.encode()) < MAX_PAYLOAD
        body = orjson.loads(p)
        assert body["event"] == "telemetry"
        seen += body["data"]["device_ids"]
    assert seen == ids
    assert telemetry_notices([]) == []


async def test_a_stream_that_falls_behind_is_ended_and_others_go_on() -> None:
    hub = LiveEvents("postgresql://unused/", pole_of=lambda d: d.split("-")[0], queue_size=3)
    slow = hub.subscribe(lambda e: True)
    fast = hub.subscribe(lambda e: True)
    tenant = hub.subscribe(lambda e: False)
    for n in range(4):
        hub.publish(LiveEvent("alarm", {"id": n}))
        if n < 3:
            assert (await fast.next(0.1)) == LiveEvent("alarm", {"id": n})
    with pytest.raises(StreamEnded):
        await slow.next(0.1)
    assert (await fast.next(0.1)) == LiveEvent("alarm", {"id": 3})
    assert await tenant.next(0.05) is None  # a keepalive's worth of nothing
    # Telemetry notices are coalesced: one event for a burst.
    hub.received(telemetry_notices(["P1-lamp", "P2-env"])[0])
    hub.received(telemetry_notices(["P1-lamp", "P3-cab"])[0])
    got = await fast.next(2)
    assert got == LiveEvent(
        "telemetry",
        {"device_ids": ["P1-lamp", "P2-env", "P3-cab"], "pole_ids": ["P1", "P2", "P3"]},
    )
    hub.received(telemetry_notices(["P4-lamp"])[0])
    started = time.monotonic()
    got = await fast.next(3)
    assert got is not None
    assert got.data["device_ids"] == ["P4-lamp"]
    assert time.monotonic() - started > 0.5  # not sooner than a second after the last one
    hub.received("not json")  # ignored, logged
    hub.close()
    with pytest.raises(StreamEnded):
        await fast.next(0.1)
    with pytest.raises(StreamEnded):
        await hub.subscribe(lambda e: True).next(0.1)


async def test_a_client_that_goes_away_gives_its_stream_back(database_url: str) -> None:
    """The stream's subscription is released once the client is gone (at the next
    event or keepalive the server writes), so the hub never keeps dead streams."""
    await prepare_database(database_url)
    settings = gateway_settings(database_url, "mqtt://127.0.0.1:1", "unused")
    hub = LiveEvents(database_url, pole_of=lambda d: None)
    async with opened_pool(database_url) as pool:
        app = create_app(api_context(settings, pool, events=hub))
        config = uvicorn.Config(app, port=settings.api_port, log_config=None, lifespan="off")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        try:
            await wait_for_port(settings.api_port)
            headers = auth_headers(database_url, "operator")
            base = f"http://127.0.0.1:{settings.api_port}"
            for _ in range(3):
                async with (
                    httpx.AsyncClient(base_url=base, headers=headers) as client,
                    client.stream("GET", "/api/v1/events") as response,
                ):
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        assert line == "retry: 3000"
                        break
            async with asyncio.timeout(WITHIN_S):
                while hub.streams:
                    hub.publish(LiveEvent("alarm", {"id": 0}))  # a write notices the client left
                    await asyncio.sleep(0.05)
        finally:
            hub.close()
            server.should_exit = True
            await serving
