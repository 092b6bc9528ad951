"""Simulated poles' edge controllers publishing over MQTT (DESIGN.md section 5).

Each pole gets its own connection (client id `polegw-sim-{pole_id}`) with a will
that marks it offline, announces itself online (retained), then publishes one
telemetry batch per interval and its events as they happen, all at QoS 1. Poles
start staggered across the interval. A dropped connection is retried with a
capped, jittered back-off; stopping publishes the offline status and disconnects
cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

import aiomqtt
import orjson

from gateway.backoff import Backoff
from gateway.core.site import SiteSpec
from gateway.errors import ConfigError
from simulators.model import (
    PoleModel,
    SimConfig,
    build_events,
    build_telemetry,
    rfc3339,
    site_models,
)

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 1.0
BACKOFF_CAP_S = 30.0
OFFLINE_GRACE_S = 2.0  # how long stopping waits to say goodbye before dropping the line


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker is, from `mqtt://user:pass@host:1883` or `mqtts://…` (TLS)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_mqtt_url(url: str) -> BrokerAddress:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        scheme = url.split(":", 1)[0]
        raise ConfigError(f"MQTT URL must start with mqtt:// or mqtts://, not {scheme!r}://")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"MQTT URL has an invalid port: {parts.netloc!r}") from None
    if not parts.hostname:
        raise ConfigError("MQTT URL has no host")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(
        host=parts.hostname,
        port=port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=tls,
    )


def _json(value: object) -> bytes:
    return orjson.dumps(value)


def _status(state: str) -> bytes:
    return _json({"state": state, "ts": rfc3339(datetime.now(UTC))})


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True at once if `stop` is set."""
    if seconds <= 0:
        return stop.is_set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()


class EdgeController:
    """One pole's edge controller: a connection, a sequence number and the pole's devices."""

    def __init__(
        self,
        model: PoleModel,
        broker: BrokerAddress,
        *,
        prefix: str,
        interval_s: float,
        rng: random.Random,
    ) -> None:
        self.model = model
        self.broker = broker
        self.interval_s = interval_s
        self.rng = rng
        base = f"{prefix}/{model.pole_id}"
        self.status_topic = f"{base}/status"
        self.telemetry_topic = f"{base}/telemetry"
        self.events_topic = f"{base}/events"
        self.seq = 0
        self._last_sample: datetime | None = None

    def _client(self) -> aiomqtt.Client:
        b = self.broker
        return aiomqtt.Client(
            b.host,
            b.port,
            username=b.username,
            password=b.password,
            identifier=f"polegw-sim-{self.model.pole_id}",
            will=aiomqtt.Will(self.status_topic, _json({"state": "offline"}), qos=1, retain=True),
            tls_context=ssl.create_default_context() if b.tls else None,
            keepalive=max(10, int(self.interval_s * 3)),
            # How long to wait for CONNACK and PUBACKs: a broker that accepts the socket
            # and then says nothing must not hold a pole for aiomqtt's default 10 s.
            timeout=min(10.0, max(2.0, 2 * self.interval_s)),
        )

    async def run(self, stop: asyncio.Event, start_delay_s: float) -> None:
        """Publish until `stop` is set, reconnecting whenever the broker drops us."""
        if await _wait(stop, start_delay_s):
            return
        backoff = Backoff(first=BACKOFF_FIRST_S, cap=BACKOFF_CAP_S, rng=self.rng)
        while not stop.is_set():
            try:
                async with self._client() as client:
                    await client.publish(self.status_topic, _status("online"), qos=1, retain=True)
                    if backoff.failures:
                        log.info("pole %s reconnected to the broker", self.model.pole_id)
                    backoff.reset()
                    await self._publish_until(client, stop)
            except aiomqtt.MqttError as exc:
                delay = backoff.next_delay()
                level = logging.WARNING if backoff.failures == 1 else logging.DEBUG
                log.log(
                    level,
                    "pole %s: broker connection failed (%s); retrying in %.1f s",
                    self.model.pole_id,
                    exc,
                    delay,
                )
                if await _wait(stop, delay):
                    return
            else:
                return

    async def _publish_until(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        try:
            while not stop.is_set():
                await self.publish_once(client)
                next_tick += self.interval_s
                now = loop.time()
                if next_tick < now:  # fell behind (slow broker, paused process): skip, not burst
                    next_tick = now + self.interval_s - (now - next_tick) % self.interval_s
                if await _wait(stop, next_tick - now):
                    break
        except asyncio.CancelledError:
            await self._say_offline(client)
            raise
        await self._say_offline(client)

    async def publish_once(self, client: aiomqtt.Client) -> None:
        """One telemetry batch now, then the events since the previous one."""
        now = datetime.now(UTC)
        message = build_telemetry(self.model, now, self.seq + 1)
        if message["devices"]:  # a pole of event-only devices has nothing to batch
            self.seq += 1
            await client.publish(self.telemetry_topic, _json(message), qos=1)
        if self._last_sample is not None:
            for event in build_events(self.model, self._last_sample, now):
                await client.publish(self.events_topic, _json(event), qos=1)
        self._last_sample = now

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        """Best effort: if it fails the broker still has the will to say it for us."""
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(OFFLINE_GRACE_S):
                await client.publish(self.status_topic, _status("offline"), qos=1, retain=True)


async def run_poles(
    site: SiteSpec,
    mqtt_url: str,
    *,
    prefix: str = "poles",
    interval_s: float = 5.0,
    seed: int = 1,
    stop: asyncio.Event | None = None,
    event_rate: float | None = None,
    only_transport: str = "mqtt",
    config: SimConfig | None = None,
) -> None:
    """Run every pole of `site` that has a simulated device on `only_transport` until
    `stop` is set (or the task is cancelled). `event_rate` (door openings and impacts
    per device per hour) overrides the one in `config`."""
    if interval_s <= 0:
        raise ValueError("interval_s must be positive")
    prefix = prefix.strip("/")
    if not prefix or any(c in prefix for c in "+#"):
        raise ConfigError(f"invalid MQTT topic prefix {prefix!r}")
    broker = parse_mqtt_url(mqtt_url)
    config = config or SimConfig()
    if event_rate is not None:
        config = replace(config, event_rate=event_rate)
    stop = stop or asyncio.Event()
    models = site_models(site, seed=seed, config=config, transport=only_transport)
    log.info(
        "simulating %d poles against %s:%d every %g s",
        len(models),
        broker.host,
        broker.port,
        interval_s,
    )
    async with asyncio.TaskGroup() as tg:
        for i, model in enumerate(models):
            pole = EdgeController(
                model,
                broker,
                prefix=prefix,
                interval_s=interval_s,
                rng=random.Random(f"{seed}:{model.pole_id}"),
            )
            tg.create_task(
                pole.run(stop, start_delay_s=interval_s * i / len(models)),
                name=f"sim-pole-{model.pole_id}",
            )
