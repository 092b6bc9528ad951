"""Kill the gateway process with SIGKILL at random moments of a QoS 1 stream, ten
times, restarting it each time: every published reading is stored exactly once
(DESIGN.md section 8, invariants 1 and 3; issue 6, fault-suite item 2).

POLEGW_FAULT_SCALE lengthens the stream (tests/faults.py); POLEGW_FAULT_SEED fixes
the kill moments (default: random, printed on failure)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.faults import AckedPublisher, GatewayProcess, gateway_env, readings_of, scaled
from tests.support import READINGS_PER_MESSAGE, count, prepare_database, stream

pytestmark = pytest.mark.slow

KILLS = 10
RATE = 40  # messages per second
# The stream outlasts ten kill-and-restart cycles, with room for restarts that
# take a few seconds on a busy machine (75 s at RATE); a gateway down for a
# restart leaves far fewer than Mosquitto's 1000 queued messages per offline session.
MESSAGES = scaled(3000)


def test_sigkill_mid_stream_loses_and_duplicates_nothing(
    fresh_database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    asyncio.run(prepare_database(fresh_database_url))
    env = gateway_env(
        fresh_database_url,
        mqtt_url,
        topic_prefix,
        SPOOL_DIR=str(tmp_path / "spool"),
        # Hold each batch open for a second, so every kill catches messages that
        # were received but not yet committed: an early ack would lose them.
        BATCH_MAX_DELAY_S="1.0",
    )
    messages = stream(topic_prefix, MESSAGES)
    expected = MESSAGES * READINGS_PER_MESSAGE
    rng = random.Random(int(os.environ.get("POLEGW_FAULT_SEED", "0")) or None)
    kills: list[float] = []
    with GatewayProcess(env, tmp_path / "gateway.log") as gw:
        gw.wait_ready()
        with AckedPublisher(mqtt_url) as pub:
            sender = threading.Thread(
                target=pub.publish_all, args=(messages,), kwargs={"rate": RATE}
            )
            sender.start()
            for _ in range(KILLS):  # at random moments of the stream
                pause = rng.uniform(0.2, 1.5)
                time.sleep(pause)
                kills.append(pause)
                gw.kill(signal.SIGKILL)
                assert count(fresh_database_url, "SELECT count(*) FROM telemetry") < expected, (
                    "the stream ended before the last kill"
                )
                gw.start()
                gw.wait_ready()
            sender.join()
            assert pub.wait_all_acked(30)
        deadline = time.monotonic() + 60
        while count(fresh_database_url, "SELECT count(*) FROM telemetry") < expected:
            assert time.monotonic() < deadline, gw.tail()
            time.sleep(0.2)
        time.sleep(1.0)  # anything redelivered late must not add rows either
        with psycopg.connect(fresh_database_url) as conn:
            stored = conn.execute("SELECT device_id, metric, ts, value FROM telemetry").fetchall()
    # Exactly the published readings, values included: nothing lost, nothing extra.
    assert len(stored) == expected, f"kills after {kills}"
    assert set(stored) == readings_of(messages), f"kills after {kills}"
    assert gw.starts == KILLS + 1
    assert "Traceback" not in gw.tail(10**7)
