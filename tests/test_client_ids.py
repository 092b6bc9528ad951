"""MQTT client ids never silently collide (issue 16 item 4). Two gateways on one
machine with one client id on one broker would take the session from each other
every few seconds (a broker such as Mosquitto 2.0 closes the old connection
without saying why): the second one refuses to start, naming the setting."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.adapters.mqtt import Inbound, MqttSubscription, client_id_lock
from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.metrics import Metrics
from tests.support import TEST_SECRET, free_port


def settings(mqtt_url: str, prefix: str, client_id: str) -> Settings:
    return Settings(
        mqtt_url=mqtt_url,
        mqtt_topic_prefix=prefix,
        mqtt_client_id=client_id,
        mqtt_session_expiry_s=30,
    )


def test_the_lock_is_per_broker_and_client_id() -> None:
    one = settings("mqtt://127.0.0.1:1883", "poles", f"polegw-test-{secrets.token_hex(4)}")
    with (
        client_id_lock(one),
        pytest.raises(ConfigError, match=f"pid {os.getpid()}.*POLEGW_MQTT_CLIENT_ID"),
        client_id_lock(one),
    ):
        pass
    with client_id_lock(one):
        other_id = one.model_copy(update={"mqtt_client_id": one.mqtt_client_id + "-2"})
        other_broker = one.model_copy(update={"mqtt_url": "mqtt://127.0.0.2:1883"})
        with client_id_lock(other_id), client_id_lock(other_broker):
            pass


async def test_a_second_subscription_with_the_same_id_refuses_to_start(
    mqtt_url: str, topic_prefix: str
) -> None:
    same = settings(mqtt_url, topic_prefix, f"polegw-test-{secrets.token_hex(4)}")
    subscribed = asyncio.Event()
    stop = asyncio.Event()

    def deliver(message: Inbound) -> None:
        message.ack()

    async def drain() -> None:
        return None

    first = MqttSubscription(same, Metrics(), subscribed=subscribed)
    task = asyncio.create_task(first.run(deliver, stop, drain))
    try:
        async with asyncio.timeout(10):
            await subscribed.wait()
        second = MqttSubscription(same, Metrics())
        with pytest.raises(ConfigError, match="in use by another polegw"):
            async with asyncio.timeout(5):
                await second.run(deliver, asyncio.Event(), drain)
    finally:
        stop.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await task


def test_a_second_gateway_with_the_default_id_says_why_in_one_line(
    migrated_database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    client_id = f"polegw-test-{secrets.token_hex(4)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLEGW_")}
    env |= {
        "POLEGW_DATABASE_URL": migrated_database_url,
        "POLEGW_MQTT_URL": mqtt_url,
        "POLEGW_MQTT_CLIENT_ID": client_id,
        "POLEGW_MQTT_TOPIC_PREFIX": f"t{secrets.token_hex(4)}",
        "POLEGW_API_PORT": str(free_port()),
        "POLEGW_SECRET_KEY": TEST_SECRET,
        "POLEGW_SPOOL_DIR": str(tmp_path / "spool"),
        "POLEGW_LOG_LEVEL": "ERROR",
    }
    with client_id_lock(settings(mqtt_url, "poles", client_id)):  # as a running gateway
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "run"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert f"MQTT client id {client_id!r}" in line
    assert "POLEGW_MQTT_CLIENT_ID" in line
