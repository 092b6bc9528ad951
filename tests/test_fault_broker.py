"""Fault suite item 3: the broker restarts during a QoS 1 stream.

A private Mosquitto with persistence on is stopped (SIGTERM, so it saves its
state) in the middle of a steady stream and started again on the same port.
The gateway (a real `python -m gateway run` process) reconnects with back-off,
its persistent session brings the messages queued meanwhile, and afterwards
every message the broker accepted is stored exactly once. A broker that comes
back without its state has forgotten the gateway's subscriptions: the gateway
subscribes again and new messages are stored. A command the gateway must
publish while the broker is away is reported failed, not lost.

Size: POLEGW_FAULT_SCALE (tests/faults.py) multiplies the stream length.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.faults import (
    AckedPublisher,
    GatewayProcess,
    PrivateMosquitto,
    gateway_env,
    readings_of,
    scaled,
)
from tests.support import auth_headers, count, prepare_database_sync, publish, stream

pytestmark = pytest.mark.slow

MESSAGES = scaled(600)
RATE = 120.0  # messages a second: 5 s of stream at scale 1
OUTAGE_S = 2.0
# The gateway's reconnect back-off (gateway.backoff.Backoff defaults: first 0.5 s,
# doubling, each delay drawn from [d/2, d]): attempt k comes at least
# first * (2**k - 1) / 2 after the first, so the delay in effect when the broker
# returns after OUTAGE_S is at most 2 * OUTAGE_S + first; then a connect and a
# subscribe, given 3 s on a loaded CI machine.
RECONNECT_BOUND_S = 2 * OUTAGE_S + 0.5 + 3


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    with PrivateMosquitto(tmp_path / "broker") as b:
        yield b


def stored_readings(database_url: str) -> list[tuple[object, ...]]:
    """Every stored (device, metric, ts, value)."""
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT device_id, metric, ts, value FROM telemetry").fetchall()


def wait_for(check: Callable[[], bool], what: str, timeout: float, gw: GatewayProcess) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{gw.tail()}")
        time.sleep(0.1)


def test_broker_restart_with_persistence_loses_nothing_it_accepted(
    fresh_database_url: str, topic_prefix: str, tmp_path: Path, broker: PrivateMosquitto
) -> None:
    prepare_database_sync(fresh_database_url)
    env = gateway_env(
        fresh_database_url,
        broker.url,
        topic_prefix,
        # Batches held open half a second: the stop always catches messages the
        # gateway has received but not yet acknowledged (the broker must resend them).
        batch_max_delay_s="0.5",
    )
    messages = stream(topic_prefix, MESSAGES)
    started = time.monotonic()
    with GatewayProcess(env, tmp_path / "gateway.log") as gw:
        gw.wait_ready()
        with AckedPublisher(broker.url) as pub:
            sender = threading.Thread(
                target=pub.publish_all, args=(messages,), kwargs={"rate": RATE}
            )
            sender.start()
            while pub.published < MESSAGES // 3:
                time.sleep(0.01)
            stored_before = count(fresh_database_url, "SELECT count(*) FROM telemetry")
            broker.stop()  # SIGTERM: Mosquitto saves sessions, queues and in-flight messages
            down_at = time.monotonic()
            wait_for(lambda: gw.metric("polegw_mqtt_connected") == 0, "the disconnect", 5, gw)
            time.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))
            broker.start()
            back_at = time.monotonic()
            wait_for(
                lambda: gw.metric("polegw_mqtt_connected") == 1,
                "the gateway to reconnect",
                RECONNECT_BOUND_S,
                gw,
            )
            reconnected_after = time.monotonic() - back_at
            sender.join()
            assert pub.wait_all_acked(60), f"{pub.published - len(pub.acked)} never acknowledged"
            accepted = [messages[i] for i in sorted(pub.acked)]
        expected = readings_of(accepted)
        assert stored_before < len(readings_of(messages)), "the stream ended before the stop"
        assert back_at - down_at >= OUTAGE_S
        assert gw.metric("polegw_mqtt_reconnects_total") >= 1
        wait_for(
            lambda: count(fresh_database_url, "SELECT count(*) FROM telemetry") >= len(expected),
            f"{len(expected)} readings",
            60,
            gw,
        )
        time.sleep(1.0)  # anything redelivered late must not add rows either
        stored = stored_readings(fresh_database_url)
        max_rss = gw.max_rss
    duration = time.monotonic() - started
    # Every accepted message stored, exactly once, and nothing that was not published.
    assert len(stored) == len(set(stored))
    assert set(stored) == expected
    assert len(accepted) == MESSAGES
    assert "Traceback" not in gw.tail(10**7)
    print(
        f"\nbroker restart: {MESSAGES} messages ({len(expected)} readings) in {duration:.1f}s,"
        f" outage {OUTAGE_S}s, reconnected {reconnected_after:.1f}s after the broker was back,"
        f" lost 0, duplicated 0, gateway max RSS {max_rss / 2**20:.0f} MiB"
    )


def test_broker_without_its_state_gets_the_subscriptions_again_and_commands_fail_meanwhile(
    fresh_database_url: str, topic_prefix: str, tmp_path: Path, broker: PrivateMosquitto
) -> None:
    prepare_database_sync(fresh_database_url)
    env = gateway_env(fresh_database_url, broker.url, topic_prefix, command_timeout_s="5")
    first = stream(topic_prefix, 30)
    with GatewayProcess(env, tmp_path / "gateway.log") as gw:
        gw.wait_ready()
        headers = auth_headers(fresh_database_url)
        publish(broker.url, first)
        wait_for(
            lambda: (
                count(fresh_database_url, "SELECT count(*) FROM telemetry")
                == len(readings_of(first))
            ),
            "the first messages",
            30,
            gw,
        )

        broker.stop()
        wait_for(lambda: gw.metric("polegw_mqtt_connected") == 0, "the disconnect", 10, gw)
        # A command while the broker is away: failed at once, with the reason.
        r = httpx.post(
            f"{gw.api}/api/v1/devices/P0001-lamp/commands",
            json={"command": "set_dim", "args": {"pct": 40}},
            headers=headers,
            timeout=10,
        )
        assert r.status_code == 202, r.text
        url = f"{gw.api}/api/v1/devices/P0001-lamp/commands/{r.json()['id']}"

        def finished() -> bool:
            return httpx.get(url, headers=headers, timeout=5).json()["state"] not in (
                "pending",
                "sent",
            )

        wait_for(finished, "the command's outcome", 10, gw)
        command = httpx.get(url, headers=headers, timeout=5).json()
        assert command["state"] == "failed", command
        assert "could not publish" in command["error"], command

        broker.start(persistence=False)  # the broker lost its disk: no session, no subscriptions
        wait_for(lambda: gw.metric("polegw_mqtt_connected") == 1, "the reconnect", 30, gw)
        # The first message stored after the reconnect proves the subscription is back;
        # every message published after that must be stored.
        probe = stream(topic_prefix, 1, start=first_ts_after(first))
        probe_readings = readings_of(probe)

        def probe_stored() -> bool:
            publish(broker.url, probe)
            return count(fresh_database_url, "SELECT count(*) FROM telemetry") > len(
                readings_of(first)
            )

        wait_for(probe_stored, "the gateway to subscribe again", 20, gw)
        later = stream(topic_prefix, scaled(60), start=first_ts_after(probe, gap_s=3600))
        publish(broker.url, later)
        expected = readings_of(first) | probe_readings | readings_of(later)
        wait_for(
            lambda: count(fresh_database_url, "SELECT count(*) FROM telemetry") >= len(expected),
            "the messages after the restart",
            30,
            gw,
        )
        stored = stored_readings(fresh_database_url)
    assert len(stored) == len(set(stored))
    assert set(stored) == expected
    assert "Traceback" not in gw.tail(10**7)


def first_ts_after(messages: list[tuple[str, bytes]], *, gap_s: int = 60) -> datetime:
    """A start time for another stream that shares no (device, metric, ts) with these."""
    return max(r[2] for r in readings_of(messages)) + timedelta(seconds=gap_s)
