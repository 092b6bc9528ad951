"""`polegw simulate --site FILE` with a real site's Modbus addresses (issue 16 item 6):
refused in one line that names the way out, or served on local ports with
--modbus-local-base, the mapping printed."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.core.profiles import load_catalog
from gateway.core.site import parse_site
from gateway.errors import ConfigError
from simulators.local_ports import map_to_local
from simulators.modbus_devices import MODBUS_MODELS
from tests.support import free_port

REAL_SITE = """\
poles:
  - id: {tag}-P1
    devices:
      - {{id: {tag}-P1-lamp, profile: lamp-controller}}
      - {{id: {tag}-P1-meter, profile: port-meter-4, transport: modbus,
         modbus: {{host: 10.0.1.21, port: 502, unit: 1}}}}
      - {{id: {tag}-P1-env, profile: env-station, transport: modbus,
         modbus: {{host: 10.0.1.21, port: 502, unit: 2}}}}
  - id: {tag}-P2
    devices:
      - {{id: {tag}-P2-meter, profile: port-meter-4, transport: modbus,
         modbus: {{host: 10.0.1.22, port: 502, unit: 1}}}}
"""


def test_each_endpoint_gets_one_local_port_and_unmodelled_devices_are_left_out() -> None:
    catalog = load_catalog()
    site = parse_site(REAL_SITE.format(tag="t"), "site.yaml", catalog)
    models = {k: v for k, v in MODBUS_MODELS.items() if k != "env-station"}
    local = map_to_local(site, catalog, models, base_port=15500)
    assert local.moved == {
        ("10.0.1.21", 502): ("127.0.0.1", 15500),
        ("10.0.1.22", 502): ("127.0.0.1", 15501),
    }
    assert local.left_out == {"t-P1-env": "no simulated model for profile 'env-station'"}
    endpoints = {
        d.id: (d.modbus.host, d.modbus.port, d.modbus.unit)
        for p in local.site.poles
        for d in p.devices
        if d.modbus is not None
    }
    assert endpoints == {
        "t-P1-meter": ("127.0.0.1", 15500, 1),
        "t-P2-meter": ("127.0.0.1", 15501, 1),
    }
    assert local.mapping_lines()[0] == "  10.0.1.21:502 -> 127.0.0.1:15500 (t-P1-meter)"


def test_ports_past_65535_are_refused() -> None:
    catalog = load_catalog()
    site = parse_site(REAL_SITE.format(tag="t"), "site.yaml", catalog)
    with pytest.raises(ConfigError, match=r"--modbus-local-base 65535: .* 2 Modbus endpoints"):
        map_to_local(site, catalog, MODBUS_MODELS, base_port=65535)


def simulate(site: Path, mqtt_url: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLEGW_")}
    env |= {"POLEGW_MQTT_URL": mqtt_url, "POLEGW_MQTT_TOPIC_PREFIX": f"t{secrets.token_hex(4)}"}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "simulate", "--site", str(site), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_real_site_is_refused_in_one_line_naming_the_option(
    tmp_path: Path, mqtt_url: str
) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(REAL_SITE.format(tag=secrets.token_hex(3)))
    proc = simulate(site, mqtt_url)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert "10.0.1.21:502" in line
    assert "--modbus-local-base" in line


def test_a_real_site_is_served_on_local_ports(tmp_path: Path, mqtt_url: str) -> None:
    site = tmp_path / "site.yaml"
    tag = secrets.token_hex(3)
    site.write_text(REAL_SITE.format(tag=tag))
    base = free_port()
    while not all(_free(base + n) for n in range(2)):
        base = free_port()
    proc = simulate(site, mqtt_url, "--modbus-local-base", str(base), "--interval", "1")
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().rstrip() for _ in range(3)]
        assert lines == [
            "Modbus endpoints served on local ports:",
            f"  10.0.1.21:502 -> 127.0.0.1:{base} ({tag}-P1-meter, {tag}-P1-env)",
            f"  10.0.1.22:502 -> 127.0.0.1:{base + 1} ({tag}-P2-meter)",
        ]
        deadline = time.monotonic() + 20
        while not all(_listening(base + n) for n in range(2)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the local buses never listened"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
