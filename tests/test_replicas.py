"""Replicas of `polegw run` sharing one broker and one database (issue 19,
docs/scaling.md): MQTT 5 shared subscriptions spread the messages, every reading
is stored once even when a replica is killed mid-stream, and /readyz says which
leader roles each replica holds, each role held by exactly one.

The slow tests run real `python -m gateway run` processes (tests/faults.py), each
with its own client id, API port and spool, all in one share group unique to the
test so that no other test's gateway takes its messages."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.leases import LeaseKeeper
from gateway.adapters.mqtt import ingest_topics, unshared_topics
from gateway.api.app import create_app
from gateway.config import Settings
from gateway.core.ownership import LEADER_ROLES, leader
from tests.faults import (
    AckedPublisher,
    GatewayProcess,
    gateway_env,
    metric_value,
    readings_of,
    scaled,
)
from tests.support import (
    POLES,
    READINGS_PER_MESSAGE,
    TEST_SECRET,
    api_context,
    count,
    eventually,
    gateway,
    gateway_settings,
    prepare_database,
    publish,
    stream,
)

TTL_S = "3"  # short leases: takeovers within seconds
RATE = 50  # messages per second
# 24 s at RATE; the replica killed for 8 s gets a third of that time's messages
# queued in its session, far below Mosquitto's 1000 per offline session.
MESSAGES = scaled(1200)


# ------------------------------------------------------------------ no broker


def test_a_share_group_shares_every_subscription_but_pole_status() -> None:
    assert ingest_topics("poles", "city") == [
        "$share/city/poles/+/telemetry",
        "$share/city/poles/+/devices/+/telemetry",
        "$share/city/poles/+/events",
        "poles/+/status",
        "$share/city/poles/+/commands/+/reply",
    ]
    # A session that ran without the group keeps its plain filters: they go.
    assert unshared_topics("poles", "city") == [
        "poles/+/telemetry",
        "poles/+/devices/+/telemetry",
        "poles/+/events",
        "poles/+/commands/+/reply",
    ]
    assert ingest_topics("poles") == [
        "poles/+/telemetry",
        "poles/+/devices/+/telemetry",
        "poles/+/events",
        "poles/+/status",
        "poles/+/commands/+/reply",
    ]
    assert unshared_topics("poles", None) == []


def test_an_empty_share_group_is_a_single_gateway() -> None:
    """docker-compose.yml passes `${POLEGW_MQTT_SHARE_GROUP:-}` to the gateway."""
    assert not Settings(mqtt_share_group="").replicated
    assert Settings(mqtt_share_group="city").replicated
    with pytest.raises(ValueError, match="share group name"):
        Settings(mqtt_share_group="a/b")


def test_a_share_group_needs_mqtt5_and_says_so_in_one_line() -> None:
    with pytest.raises(ValueError, match="POLEGW_MQTT_SHARE_GROUP needs POLEGW_MQTT_PROTOCOL=5"):
        Settings(mqtt_share_group="city", mqtt_protocol="3.1.1")
    env = {"POLEGW_MQTT_SHARE_GROUP": "city", "POLEGW_MQTT_PROTOCOL": "3.1.1"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "run"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "polegw: POLEGW_MQTT_SHARE_GROUP needs POLEGW_MQTT_PROTOCOL=5:"
        " shared subscriptions ($share/…) are MQTT 5"
    ]


async def test_readyz_shows_what_the_replica_holds_only_to_internals(
    pool: AsyncConnectionPool,
) -> None:
    settings = Settings(database_url=str(pool.conninfo), secret_key=TEST_SECRET)
    keeper = LeaseKeeper(str(pool.conninfo), "gw-a", enabled=False)  # a single gateway
    for role in LEADER_ROLES:
        keeper.lease(leader(role))
    app = create_app(api_context(settings, pool, leases=keeper))
    inside = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=inside, base_url="http://api") as api:
        body = (await api.get("/readyz")).json()
    assert body["replica"] == {
        "id": "gw-a",
        "share_group": None,
        "live_replicas": 1,
        "owns": {"leader": sorted(LEADER_ROLES)},
    }
    outside = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=outside, base_url="http://api") as api:
        assert (await api.get("/readyz")).json() == {"ready": True}


async def test_a_single_gateway_turned_replica_receives_each_message_once(
    fresh_database_url: str, mqtt_url: str, topic_prefix: str
) -> None:
    """Its persistent session still holds the plain filters of its single-gateway
    days; joining the group must not leave it receiving everything twice."""
    await prepare_database(fresh_database_url)
    settings = gateway_settings(fresh_database_url, mqtt_url, topic_prefix)
    async with gateway(settings):  # the single gateway: plain subscriptions
        pass
    replica = settings.model_copy(update={"mqtt_share_group": f"t{secrets.token_hex(4)}"})
    messages = stream(topic_prefix, 30)
    try:
        async with gateway(replica) as gw:
            await asyncio.to_thread(publish, mqtt_url, messages)
            expected = len(messages) * READINGS_PER_MESSAGE
            await eventually(
                lambda: count(fresh_database_url, "SELECT count(*) FROM telemetry") == expected,
                what="every reading stored",
            )
            await asyncio.sleep(1.0)  # a second copy would arrive meanwhile
            received = gw.metrics.registry.get_sample_value(
                "polegw_mqtt_messages_received_total", {"kind": "telemetry"}
            )
            assert received == len(messages)
    finally:
        await asyncio.to_thread(forget_session, mqtt_url, settings.mqtt_client_id)


# ------------------------------------------------------------ real processes


def wait_subscribed(gw: GatewayProcess, timeout: float = 30.0) -> None:
    """Until the gateway's current run has subscribed (readiness comes a moment
    before the SUBACK; a message published in between would miss this session)."""
    deadline = time.monotonic() + timeout
    while gw.tail(10**7).count("subscribed to") < gw.starts:
        assert gw.running, gw.tail()
        assert time.monotonic() < deadline, f"not subscribed within {timeout}s:\n{gw.tail()}"
        time.sleep(0.1)


@contextlib.contextmanager
def replicas(
    database_url: str, mqtt_url: str, prefix: str, tmp_path: Path, n: int = 3, **extra: str
) -> Iterator[list[GatewayProcess]]:
    group = f"t{secrets.token_hex(4)}"
    tag = secrets.token_hex(3)
    gws = []
    for i in range(n):
        env = gateway_env(database_url, mqtt_url, prefix, client_id=f"replica-{tag}-{i}")
        settings = {
            "MQTT_SHARE_GROUP": group,
            "LEASE_TTL_S": TTL_S,
            "SPOOL_DIR": str(tmp_path / f"spool-{i}"),
            **extra,
        }
        env.update({f"POLEGW_{k.upper()}": v for k, v in settings.items()})
        gws.append(GatewayProcess(env, tmp_path / f"replica-{i}.log"))
    try:
        for gw in gws:
            gw.start()
        for gw in gws:
            gw.wait_ready(60)
            wait_subscribed(gw)
        yield gws
    finally:
        for gw in gws:
            gw.stop()
        for gw in gws:  # leave no session behind on the shared broker
            forget_session(mqtt_url, gw.env["POLEGW_MQTT_CLIENT_ID"])


def forget_session(mqtt_url: str, client_id: str) -> None:
    host, _, port = mqtt_url.split("://", 1)[1].rpartition(":")
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    with contextlib.suppress(OSError):
        c.connect(host, int(port), clean_start=True)  # session expiry 0: ends at disconnect
        c.loop_start()
        time.sleep(0.2)
        c.disconnect()
        c.loop_stop()


def publish_retained(mqtt_url: str, topic: str, payload: bytes) -> None:
    host, _, port = mqtt_url.split("://", 1)[1].rpartition(":")
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"retain-{secrets.token_hex(4)}")
    c.connect(host, int(port))
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def readyz(gw: GatewayProcess) -> dict[str, object]:
    body: dict[str, object] = httpx.get(f"{gw.api}/readyz", timeout=5).json()
    return body


def leaders_of(gws: list[GatewayProcess]) -> dict[str, list[str]]:
    """Leader role -> the running replicas whose /readyz says they hold it."""
    out: dict[str, list[str]] = {role: [] for role in LEADER_ROLES}
    for gw in gws:
        if not gw.running:
            continue
        replica = readyz(gw)["replica"]
        assert isinstance(replica, dict)
        for role in replica["owns"].get("leader", []):
            out[role].append(str(replica["id"]))
    return out


def settle(gws: list[GatewayProcess], within: float) -> dict[str, list[str]]:
    """Until every leader role is held by exactly one running replica and each
    holds its fair share (ceil(roles / replicas)); the last answer on timeout."""
    deadline = time.monotonic() + within
    while True:
        held = leaders_of(gws)
        running = sum(gw.running for gw in gws)
        share = -(-len(LEADER_ROLES) // running)
        per: dict[str, int] = {}
        for holders in held.values():
            for h in holders:
                per[h] = per.get(h, 0) + 1
        if all(len(h) == 1 for h in held.values()) and max(per.values(), default=0) <= share:
            return held
        if time.monotonic() > deadline:
            return held
        time.sleep(0.2)


@pytest.mark.slow
def test_each_leader_role_is_held_once_across_replicas_and_handed_back_on_stop(
    fresh_database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    asyncio.run(prepare_database(fresh_database_url))
    # A pole's retained status, published before any replica runs: every replica
    # subscribes to status without sharing, so each receives it on subscribing.
    status_topic = f"{topic_prefix}/{POLES[0]}/status"
    publish_retained(mqtt_url, status_topic, b'{"state": "offline"}')
    try:
        with replicas(fresh_database_url, mqtt_url, topic_prefix, tmp_path) as gws:
            held = settle(gws, within=20)
            assert all(len(h) == 1 for h in held.values()), held
            for gw in gws:
                replica = readyz(gw)["replica"]
                assert isinstance(replica, dict)
                assert replica["live_replicas"] == 3
                assert replica["id"] == gw.env["POLEGW_MQTT_CLIENT_ID"]
                assert replica["share_group"] == gw.env["POLEGW_MQTT_SHARE_GROUP"]
                mine = [r for r, h in held.items() if h == [replica["id"]]]
                for role in LEADER_ROLES:  # /metrics agrees with /readyz
                    value = metric_value(
                        httpx.get(f"{gw.api}/metrics", timeout=5).text,
                        "polegw_lease_held",
                        f'lease="leader/{role}"',
                    )
                    assert value == (1.0 if role in mine else 0.0), (gw.api, role)
            # Every replica received the retained status (3 messages of kind status).
            for gw in gws:
                assert gw.metric("polegw_mqtt_messages_received_total", 'kind="status"') >= 1
            assert count(
                fresh_database_url,
                "SELECT count(*) FROM pole_presence WHERE pole_id = %s AND state = 'offline'",
                POLES[0],
            )
            # A graceful stop hands the roles back at once (not after the TTL).
            holders = {h[0] for h in held.values()}
            leaving = next(gw for gw in gws if gw.env["POLEGW_MQTT_CLIENT_ID"] in holders)
            gone = leaving.env["POLEGW_MQTT_CLIENT_ID"]
            stopped_at = time.monotonic()
            assert leaving.stop() == 0
            after = settle(gws, within=float(TTL_S) * 3)
            took = time.monotonic() - stopped_at
            assert all(len(h) == 1 and h != [gone] for h in after.values()), after
            assert took < float(TTL_S) * 2, f"hand-back took {took:.1f}s"
            for gw in gws:
                assert "Traceback" not in gw.tail(10**7)
    finally:
        publish_retained(mqtt_url, status_topic, b"")  # leave no retained message behind


@pytest.mark.slow
def test_three_replicas_store_every_reading_once_through_a_sigkill_and_restart(
    fresh_database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    asyncio.run(prepare_database(fresh_database_url))
    messages = stream(topic_prefix, MESSAGES)
    expected = MESSAGES * READINGS_PER_MESSAGE
    # Among them, events and malformed messages: they are stored once too (events
    # by device, type and ts; dead letters by a hash of topic, payload and reason).
    events, bad, sent = [], [], []
    for i, message in enumerate(messages):
        sent.append(message)
        if i % 25 == 0:
            pole, ts = POLES[i % len(POLES)], orjson.loads(message[1])["ts"]
            body = {"ts": ts, "device": f"{pole}-cab", "type": "door_close", "data": {"n": i}}
            events.append((f"{topic_prefix}/{pole}/events", orjson.dumps(body)))
            bad.append((f"{topic_prefix}/{pole}/telemetry", b"not json %d" % i))
            sent += [events[-1], bad[-1]]
    duration = len(sent) / RATE
    # Batches held open for half a second: the kill catches messages received
    # and not yet committed (and so not acknowledged).
    with replicas(
        fresh_database_url, mqtt_url, topic_prefix, tmp_path, BATCH_MAX_DELAY_S="0.5"
    ) as gws:
        victim = gws[0]
        with AckedPublisher(mqtt_url) as pub:
            sender = threading.Thread(target=pub.publish_all, args=(sent,), kwargs={"rate": RATE})
            sender.start()
            time.sleep(duration * 0.25)
            victim.kill(signal.SIGKILL)
            killed_with = count(fresh_database_url, "SELECT count(*) FROM telemetry")
            assert killed_with < expected, "the stream ended before the kill"
            time.sleep(duration * 0.33)
            victim.start()  # same client id: its session held its share meanwhile
            victim.wait_ready(60)
            sender.join()
            assert pub.wait_all_acked(30)
            assert len(pub.acked) == len(sent)
        deadline = time.monotonic() + 60
        while count(fresh_database_url, "SELECT count(*) FROM telemetry") < expected:
            assert time.monotonic() < deadline, "\n".join(gw.tail() for gw in gws)
            time.sleep(0.2)
        time.sleep(1.0)  # anything redelivered late must not add rows either
        with psycopg.connect(fresh_database_url) as conn:
            stored = conn.execute("SELECT device_id, metric, ts, value FROM telemetry").fetchall()
            stored_events = conn.execute("SELECT count(*) FROM device_events").fetchone()
            dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        # The two that ran throughout each received a share, not the whole stream.
        for gw in gws[1:]:
            got = gw.metric("polegw_mqtt_messages_received_total", 'kind="telemetry"')
            assert MESSAGES * 0.15 < got < MESSAGES * 0.75, (gw.api, got)
        for gw in gws:
            assert "Traceback" not in gw.tail(10**7)
    assert len(stored) == expected
    assert set(stored) == readings_of(messages)
    assert stored_events == (len(events),)
    assert dead == (len(bad),)
