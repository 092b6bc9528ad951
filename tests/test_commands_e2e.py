"""Commands end to end through `run_gateway`: the API records the command, the
gateway writes a Modbus device (and reads it back) or publishes to an MQTT pole and
follows its reply, and the record's state tells the outcome."""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import AsyncIterator

import httpx
import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import MqttEndpoint
from gateway.core.profiles import load_catalog
from gateway.core.site import DeviceSpec, ModbusEndpoint, PoleSpec, SiteSpec
from simulators.modbus_server import Fault, ModbusSimulator
from tests.support import gateway, gateway_settings, prepare_database

COMMAND_TIMEOUT_S = 3.0
CATALOG = load_catalog()


def site(modbus_port: int) -> SiteSpec:
    endpoint = ModbusEndpoint(host="127.0.0.1", port=modbus_port, unit=1, interval_s=0.5)
    return SiteSpec(
        poles=[
            PoleSpec(
                id="P0001",
                devices=[
                    DeviceSpec(
                        id="P0001-lamp",
                        profile="lamp-controller",
                        transport="modbus",
                        modbus=endpoint,
                    ),
                    DeviceSpec(id="P0001-mqtt-lamp", profile="lamp-controller"),
                ],
            )
        ]
    )


@pytest.fixture
async def simulated_lamp() -> AsyncIterator[ModbusSimulator]:
    spec = DeviceSpec(
        id="P0001-lamp",
        profile="lamp-controller",
        transport="modbus",
        modbus=ModbusEndpoint(host="127.0.0.1", port=1, unit=1),
    )
    async with ModbusSimulator([(spec, CATALOG["lamp-controller"])]) as sim:
        yield sim


class Pole:
    """An edge controller that answers the commands sent to it."""

    def __init__(self, mqtt_url: str, topic: str, *, ok: bool) -> None:
        e = MqttEndpoint(mqtt_url)
        self.received: list[dict[str, object]] = []
        self.expiry: list[int | None] = []
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"pole-{secrets.token_hex(4)}",
            protocol=paho.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.ok = ok
        self.client.connect(e.host, e.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        body = orjson.loads(msg.payload)
        self.received.append(body)
        self.expiry.append(getattr(msg.properties, "MessageExpiryInterval", None))
        reply = {"id": body["id"], "ok": self.ok, "error": None if self.ok else "lamp is locked"}
        client.publish(msg.topic + "/reply", orjson.dumps(reply), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def wait_done(
    api: httpx.AsyncClient, device: str, record: dict[str, object]
) -> dict[str, object]:
    url = f"/api/v1/devices/{device}/commands/{record['id']}"
    for _ in range(100):
        body: dict[str, object] = (await api.get(url)).json()
        if body["state"] in ("succeeded", "failed", "timed_out"):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"command still {body['state']}")


async def test_commands_over_modbus_and_mqtt(
    fresh_database_url: str, mqtt_url: str, topic_prefix: str, simulated_lamp: ModbusSimulator
) -> None:
    await prepare_database(fresh_database_url, site(simulated_lamp.port))
    settings = gateway_settings(
        fresh_database_url, mqtt_url, topic_prefix, command_timeout_s=COMMAND_TIMEOUT_S
    )
    async with (
        gateway(settings) as gw,
        httpx.AsyncClient(base_url=gw.api, headers=gw.headers) as api,
    ):
        # The polled lamp's readings arrive and it is shown online.
        async def online() -> bool:
            state: str = (await api.get("/api/v1/devices/P0001-lamp")).json()["state"]
            return state == "online"

        for _ in range(50):
            if await online():
                break
            await asyncio.sleep(0.1)
        detail = (await api.get("/api/v1/devices/P0001-lamp")).json()
        assert detail["state"] == "online", detail
        assert detail["state_since"] is not None

        # Modbus: dim to 40 %, read back.
        sent = await api.post(
            "/api/v1/devices/P0001-lamp/commands", json={"command": "set_dim", "args": {"pct": 40}}
        )
        assert sent.status_code == 202, sent.text
        assert sent.json()["state"] == "pending"
        done = await wait_done(api, "P0001-lamp", sent.json())
        assert done["state"] == "succeeded", done
        assert done["result"] == {"readback": {"dim_pct": 40}}
        assert simulated_lamp.values("P0001-lamp")["dim_pct"] == 40
        # The next poll stores the new value.
        latest = (await api.get("/api/v1/devices/P0001-lamp/latest")).json()["values"]
        for _ in range(30):
            if latest["dim_pct"]["value"] == 40:
                break
            await asyncio.sleep(0.1)
            latest = (await api.get("/api/v1/devices/P0001-lamp/latest")).json()["values"]
        assert latest["dim_pct"]["value"] == 40

        # Modbus, device not answering: the command ends timed_out with the reason.
        simulated_lamp.set_fault("P0001-lamp", Fault.NO_ANSWER)
        sent = await api.post("/api/v1/devices/P0001-lamp/commands", json={"command": "switch_off"})
        done = await wait_done(api, "P0001-lamp", sent.json())
        assert done["state"] == "timed_out", done
        assert "no answer" in str(done["error"])
        simulated_lamp.set_fault("P0001-lamp", None)

        # MQTT: a pole that answers ok, then one that refuses, then none at all.
        topic = f"{topic_prefix}/P0001/commands/P0001-mqtt-lamp"
        for ok, expected in ((True, "succeeded"), (False, "failed")):
            pole = Pole(mqtt_url, topic, ok=ok)
            await asyncio.sleep(0.3)
            try:
                sent = await api.post(
                    "/api/v1/devices/P0001-mqtt-lamp/commands", json={"command": "switch_on"}
                )
                done = await wait_done(api, "P0001-mqtt-lamp", sent.json())
            finally:
                pole.close()
            assert done["state"] == expected, done
            assert pole.received[0]["command"] == "switch_on"
            # A command the pole gets late (after reconnecting) expires with its timeout.
            assert pole.expiry[0] is not None
            assert 1 <= pole.expiry[0] <= math.ceil(COMMAND_TIMEOUT_S)
        sent = await api.post(
            "/api/v1/devices/P0001-mqtt-lamp/commands", json={"command": "switch_on"}
        )
        done = await wait_done(api, "P0001-mqtt-lamp", sent.json())
        assert done["state"] == "timed_out"

        # Bad requests name the field; the history lists everything, newest first.
        bad = await api.post("/api/v1/devices/P0001-lamp/commands", json={"command": "fly"})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["body", "command"]
        bad = await api.post(
            "/api/v1/devices/P0001-lamp/commands", json={"command": "set_dim", "args": {"pct": 140}}
        )
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["body", "args"]
        assert (
            await api.post("/api/v1/devices/NOPE/commands", json={"command": "x"})
        ).status_code == 404
        history = (await api.get("/api/v1/devices/P0001-mqtt-lamp/commands")).json()["items"]
        assert [c["state"] for c in history] == ["timed_out", "failed", "succeeded"]
