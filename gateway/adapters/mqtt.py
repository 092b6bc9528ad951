"""The MQTT adapter: a persistent QoS 1 subscription whose messages are acknowledged
only when the caller says so (after commit; DESIGN.md section 8, invariant 1).

aiomqtt owns the connection; it does not expose manual acknowledgement, so the
adapter switches on paho-mqtt's manual ack on the client aiomqtt wraps (see
docs/decisions.md). That is the only place polegw reaches into aiomqtt.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import MqttEndpoint, Settings
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

Ack = Callable[[], None]


@dataclass(frozen=True, slots=True)
class Inbound:
    """One received message and the way to acknowledge it."""

    topic: str
    payload: bytes
    ack: Ack


def ingest_topics(prefix: str) -> list[str]:
    return [
        f"{prefix}/+/telemetry",
        f"{prefix}/+/devices/+/telemetry",
        f"{prefix}/+/events",
        f"{prefix}/+/status",
    ]


def _noop() -> None:
    pass


class Backoff:
    """Capped exponential back-off with full jitter in [delay/2, delay]."""

    def __init__(self, *, first: float = 0.5, cap: float = 30.0) -> None:
        self._first, self._cap, self._n = first, cap, 0

    def reset(self) -> None:
        self._n = 0

    def next_delay(self) -> float:
        delay = min(self._cap, self._first * 2**self._n)
        self._n = min(self._n + 1, 32)
        return random.uniform(delay / 2, delay)


def make_client(settings: Settings, *, client_id: str, clean: bool) -> aiomqtt.Client:
    """An aiomqtt client for the configured broker and protocol."""
    endpoint = MqttEndpoint(settings.mqtt_url)
    common: dict[str, object] = {
        "hostname": endpoint.host,
        "port": endpoint.port,
        "username": endpoint.username,
        "password": endpoint.password,
        "identifier": client_id,
        "keepalive": settings.mqtt_keepalive_s,
        "timeout": 10,
        "tls_context": ssl.create_default_context() if endpoint.tls else None,
    }
    if settings.mqtt_protocol == "5":
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0 if clean else settings.mqtt_session_expiry_s
        props.ReceiveMaximum = settings.mqtt_receive_maximum
        return aiomqtt.Client(
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=clean,
            properties=props,
            **common,  # type: ignore[arg-type]
        )
    return aiomqtt.Client(
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=clean,
        **common,  # type: ignore[arg-type]
    )


class MqttSubscription:
    """Receives the contract's topics on a persistent session, forever, reconnecting."""

    def __init__(
        self, settings: Settings, metrics: Metrics, *, subscribed: asyncio.Event | None = None
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._subscribed = subscribed or asyncio.Event()
        self._generation = 0
        self._connected = False
        self._client: aiomqtt.Client | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    def _ack_for(self, client: aiomqtt.Client, message: aiomqtt.Message) -> Ack:
        if message.qos == 0:
            return _noop
        generation, mid, qos = self._generation, message.mid, message.qos
        paho_client: paho.Client = client._client  # see module docstring

        def ack() -> None:
            # A message from an earlier connection is not acknowledged on this
            # one: the broker redelivers it, and storing it again is a no-op.
            if self._generation == generation and self._connected:
                paho_client.ack(mid, qos)
                self._metrics.messages_acked.inc()

        return ack

    async def run(
        self,
        deliver: Callable[[Inbound], Awaitable[None]],
        stop: asyncio.Event,
        drain: Callable[[], Awaitable[object]],
    ) -> None:
        """Deliver messages until `stop` is set; then `drain` (commit and ack), disconnect."""
        backoff = Backoff()
        topics = ingest_topics(self._settings.mqtt_topic_prefix)
        first = True
        while not stop.is_set():
            if not first:
                self._metrics.mqtt_reconnects.inc()
            first = False
            client = make_client(
                self._settings, client_id=self._settings.mqtt_client_id, clean=False
            )
            client._client.manual_ack_set(True)  # see module docstring
            try:
                async with client:
                    self._generation += 1
                    self._connected = True
                    self._client = client
                    self._metrics.mqtt_connected.set(1)
                    await client.subscribe([(t, 1) for t in topics])
                    log.info(
                        "MQTT connected to %s, subscribed to %s", self._settings.mqtt_url, topics
                    )
                    backoff.reset()
                    self._subscribed.set()
                    if await self._pump_until(client, deliver, stop):
                        await drain()
                        return
            except aiomqtt.MqttError as exc:
                log.warning("MQTT connection lost or refused: %s", exc)
            finally:
                self._connected = False
                self._subscribed.clear()
                self._client = None
                self._metrics.mqtt_connected.set(0)
            delay = backoff.next_delay()
            log.info("MQTT reconnecting in %.1fs", delay)
            try:
                async with asyncio.timeout(delay):
                    await stop.wait()
            except TimeoutError:
                pass

    async def _pump(
        self, client: aiomqtt.Client, deliver: Callable[[Inbound], Awaitable[None]]
    ) -> None:
        """Hand messages over until disconnected (aiomqtt raises MqttError)."""
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                payload = str(payload).encode()
            ack = self._ack_for(client, message)
            await deliver(Inbound(message.topic.value, bytes(payload), ack))

    async def _pump_until(
        self,
        client: aiomqtt.Client,
        deliver: Callable[[Inbound], Awaitable[None]],
        stop: asyncio.Event,
    ) -> bool:
        """True when stopped; raises MqttError when the connection is lost."""
        pump = asyncio.create_task(self._pump(client, deliver), name="mqtt-pump")
        stopped = asyncio.create_task(stop.wait(), name="mqtt-stop")
        try:
            done, _ = await asyncio.wait({pump, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, stopped):
                task.cancel()
        if pump in done:
            pump.result()  # re-raises the disconnect
            raise aiomqtt.MqttError("message stream ended")
        return True

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish on the gateway's connection (commands). Raises MqttError when offline."""
        if self._client is None or not self._connected:
            raise aiomqtt.MqttError("not connected to the MQTT broker")
        await self._client.publish(topic, payload, qos=qos, retain=retain)
