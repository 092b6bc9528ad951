"""Kill the gateway process with SIGKILL in the middle of a QoS 1 stream, restart it:
every published reading is stored exactly once (DESIGN.md section 8, invariants 1 and 3)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import orjson
import psycopg

from tests.support import (
    READINGS_PER_MESSAGE,
    TEST_SECRET,
    count,
    free_port,
    prepare_database,
    publish,
    stream,
)

MESSAGES = 600  # below Mosquitto's default max_queued_messages (1000) for an offline client
RATE = 50  # messages per second: the stream outlasts three kill-and-restart cycles


def published_readings(messages: list[tuple[str, bytes]]) -> set[tuple[object, ...]]:
    out: set[tuple[object, ...]] = set()
    for _, payload in messages:
        body = orjson.loads(payload)
        ts = datetime.fromisoformat(body["ts"])
        for device, values in body["devices"].items():
            for metric, value in values.items():
                out.add((device, metric, ts, float(value)))
    return out


def start_gateway(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "run"], env=env, stdout=out, stderr=subprocess.STDOUT
    )


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "gateway exited during start-up"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("gateway did not become ready")


def test_sigkill_mid_stream_loses_and_duplicates_nothing(
    fresh_database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    asyncio.run(prepare_database(fresh_database_url))
    port = free_port()
    env = {
        **os.environ,
        "POLEGW_DATABASE_URL": fresh_database_url,
        "POLEGW_MQTT_URL": mqtt_url,
        "POLEGW_MQTT_TOPIC_PREFIX": topic_prefix,
        "POLEGW_MQTT_CLIENT_ID": f"crash-{topic_prefix.split('/')[0]}",
        "POLEGW_MQTT_SESSION_EXPIRY_S": "300",
        "POLEGW_API_PORT": str(port),
        "POLEGW_SECRET_KEY": TEST_SECRET,
        "POLEGW_LOG_LEVEL": "INFO",
        # Hold each batch open for a second, so every kill catches messages that
        # were received but not yet committed: an early ack would lose them.
        "POLEGW_BATCH_MAX_DELAY_S": "1.0",
    }
    log = tmp_path / "gateway.log"
    messages = stream(topic_prefix, MESSAGES)
    gw = start_gateway(env, log)
    try:
        wait_ready(port, gw)

        def publish_slowly() -> None:
            for i in range(0, MESSAGES, 15):
                publish(mqtt_url, messages[i : i + 15])
                time.sleep(15 / RATE)

        publisher = threading.Thread(target=publish_slowly)
        publisher.start()
        for pause in (1.0, 0.7, 0.9):  # kill three times at different moments
            time.sleep(pause)
            stored_before = count(fresh_database_url, "SELECT count(*) FROM telemetry")
            gw.send_signal(signal.SIGKILL)
            gw.wait()
            gw = start_gateway(env, log)
            wait_ready(port, gw)
            assert stored_before < MESSAGES * READINGS_PER_MESSAGE, "the stream ended before a kill"
        publisher.join()

        expected = MESSAGES * READINGS_PER_MESSAGE
        deadline = time.monotonic() + 30
        while count(fresh_database_url, "SELECT count(*) FROM telemetry") < expected:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)  # anything redelivered late must not add rows either
        with psycopg.connect(fresh_database_url) as conn:
            stored = conn.execute("SELECT device_id, metric, ts, value FROM telemetry").fetchall()
        # Exactly the published readings, values included: nothing lost, nothing extra.
        assert len(stored) == expected
        assert set(stored) == published_readings(messages)
    finally:
        gw.send_signal(signal.SIGTERM)
        try:
            gw.wait(timeout=15)
        except subprocess.TimeoutExpired:
            gw.kill()
    assert "Traceback" not in log.read_text()
