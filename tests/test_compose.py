"""docker-compose.yml's promises, checked without a Docker engine (issue 16 item 21):
pinned images, polegw:local never pulled, the API and Prometheus published on
loopback unless configured otherwise, and simulators that can serve a real site."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

COMPOSE = Path(__file__).parent.parent / "docker-compose.yml"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    found: dict[str, Any] = data["services"]
    return found


def test_every_image_from_a_registry_is_pinned_to_a_version(services: dict[str, Any]) -> None:
    """No `latest`; the database's image to the release (its data outlives the image)."""
    for name, service in services.items():
        image = service.get("image", "")
        if image == "polegw:local":
            continue
        assert ":" in image, f"{name}: {image} has no tag"
        tag = image.rpartition(":")[2]
        assert re.match(r"v?\d+", tag), f"{name}: {image} is not pinned to a version"
        assert "latest" not in tag, f"{name}: {image}"
    timescale = services["timescaledb"]["image"]
    assert re.fullmatch(r"timescale/timescaledb:\d+\.\d+\.\d+-pg\d+", timescale), timescale


def test_polegw_local_is_built_and_never_pulled(services: dict[str, Any]) -> None:
    local = {n: s for n, s in services.items() if s.get("image") == "polegw:local"}
    assert set(local) == {
        "migrate",
        "provision",
        "gateway",
        "gateway-2",
        "gateway-3",
        "simulators",
    }
    for name, service in local.items():
        if "build" in service:
            assert service.get("pull_policy") == "build", name
        else:
            assert service.get("pull_policy") == "never", name


def published(service: dict[str, Any]) -> list[str]:
    return [str(p) for p in service.get("ports", [])]


def test_api_and_prometheus_are_published_on_loopback_by_default(
    services: dict[str, Any],
) -> None:
    assert published(services["gateway"]) == ["${POLEGW_PUBLISH_ADDR:-127.0.0.1}:8000:8000"]
    assert published(services["prometheus"]) == ["${POLEGW_PUBLISH_ADDR:-127.0.0.1}:9090:9090"]
    # The broker's TLS listeners are for the poles in the street: authenticated,
    # encrypted, and published on every interface on purpose.
    assert published(services["mosquitto"]) == ["8883:8883", "8884:8884"]
    for name, service in services.items():
        if name == "mosquitto":
            continue
        for port in published(service):
            # host:container alone would publish on every interface.
            assert port.count(":") >= 2, f"{name}: {port} is published on all interfaces"
            assert port.startswith(("127.0.0.1:", "${POLEGW_PUBLISH_ADDR:-127.0.0.1}:")), name


def test_the_simulators_serve_a_real_sites_modbus_devices_on_local_ports(
    services: dict[str, Any],
) -> None:
    # The command runs in a shell (it reads the simulators' MQTT secret first).
    command = shlex.split(services["simulators"]["command"][0].split("exec ", 1)[1])
    assert command[command.index("--modbus-local-base") + 1] == "15020"
    assert int(command[command.index("--modbus-local-base") + 1]) >= 1024  # not root
    assert command[command.index("--modbus-local-host") + 1] == "0.0.0.0"
