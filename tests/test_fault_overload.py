"""Fault suite, overload (issue 6): a burst far beyond what the gateway commits per
second is absorbed by the broker's queue, with the gateway's memory bounded, and
every reading is stored exactly once.

A private Mosquitto with no queue limit stands for a broker sized for bursts (the
machine's Mosquitto keeps at most 1000 messages per session and would drop the rest
itself). The gateway's in-flight window (`POLEGW_MQTT_RECEIVE_MAXIMUM`) is all it
holds, since nothing is acknowledged before commit.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest

from tests.faults import (
    GatewayProcess,
    PrivateMosquitto,
    gateway_env,
    readings_of,
    scaled,
)
from tests.support import READINGS_PER_MESSAGE, prepare_database, publish, stream

pytestmark = pytest.mark.slow

BURST = scaled(20_000)  # messages, published as fast as the broker takes them
MAX_RSS = 400 * 1024 * 1024


def test_a_burst_is_absorbed_with_bounded_memory(
    fresh_database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    asyncio.run(prepare_database(fresh_database_url))
    messages = stream(topic_prefix, BURST)
    expected = BURST * READINGS_PER_MESSAGE
    with PrivateMosquitto(tmp_path / "broker", max_queued_messages=0) as broker:
        env = gateway_env(
            fresh_database_url,
            broker.url,
            topic_prefix,
            SPOOL_DIR=str(tmp_path / "spool"),
            MQTT_RECEIVE_MAXIMUM="1000",
            # 3 poles stand for a whole site here: no per-pole rate limit.
            MQTT_POLE_RATE_PER_S="0",
        )
        with GatewayProcess(env, tmp_path / "gateway.log") as gw:
            gw.wait_ready()
            rss_idle = gw.rss() or 0
            started = time.monotonic()
            # In chunks, each acknowledged by the broker before the next: as fast as
            # the broker takes them, with the publisher's own queue bounded.
            for i in range(0, BURST, 5000):
                assert publish(broker.url, messages[i : i + 5000]) == len(messages[i : i + 5000])
            published_s = time.monotonic() - started
            deadline = time.monotonic() + 180
            while True:
                with psycopg.connect(fresh_database_url) as conn:
                    row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
                assert row is not None
                if row[0] >= expected:
                    break
                assert time.monotonic() < deadline, f"{row[0]} of {expected}\n{gw.tail()}"
                time.sleep(0.2)
            stored_s = time.monotonic() - started
            with psycopg.connect(fresh_database_url) as conn:
                rows = conn.execute("SELECT device_id, metric, ts, value FROM telemetry").fetchall()
            assert len(rows) == expected
            assert set(rows) == readings_of(messages)
            assert gw.max_rss < MAX_RSS, f"gateway peaked at {gw.max_rss / 2**20:.0f} MiB"
            print(
                f"\noverload: {BURST} messages ({expected} readings) published in "
                f"{published_s:.1f} s, all stored after {stored_s:.1f} s "
                f"({expected / stored_s:.0f} readings/s); gateway RSS idle "
                f"{rss_idle / 2**20:.0f} MiB, max {gw.max_rss / 2**20:.0f} MiB;"
                " 0 lost, 0 duplicated"
            )
