"""Simulated poles' edge controllers publishing over MQTT (DESIGN.md section 5).

Each pole gets its own connection (client id `polegw-sim-{pole_id}-{run}`, where
`run` is random per `run_poles`, so two simulators, a demo and a test run on one
broker never take each other's sessions over) with a will
that marks it offline, announces itself online (retained), then publishes one
telemetry batch per interval and its events as they happen, all at QoS 1. Poles
start staggered across the interval. A dropped connection is retried with a
capped, jittered back-off; stopping publishes the offline status and disconnects
cleanly.

Each pole also takes commands for its devices on `{prefix}/{pole}/commands/+`
(QoS 1): the command and its arguments are checked against the device's
profile, a device whose model obeys writes (a lamp controller's dim level and
switch, a port meter's port switches) carries it out, and the pole replies on
`…/commands/{device}/reply` with `{"id", "ok", "error"}`. An unknown command or
device, or arguments the profile refuses, get `ok: false` and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypedDict
from urllib.parse import unquote, urlsplit

import aiomqtt
import orjson

from gateway.adapters.mqtt import client_tls_context
from gateway.backoff import Backoff
from gateway.core.clocks import CONTROLLER, SET_TIME
from gateway.core.profiles import CommandRefused, Profile, ProfileCatalog, load_catalog
from gateway.core.site import SiteSpec
from gateway.errors import ConfigError
from simulators.modbus_devices import MODBUS_MODELS, Obeying
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
    # mqtts:// only: the CA of a private broker certificate (else the system's
    # CAs), and a client certificate and key when the broker asks for one.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        return client_tls_context(self.ca_file, self.cert_file, self.key_file)


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


async def _wait(
    stop: asyncio.Event, seconds: float, *, unless: asyncio.Task[None] | None = None
) -> bool:
    """Sleep up to `seconds`, or until `unless` ends; True at once if `stop` is set."""
    if seconds <= 0 or stop.is_set():
        return stop.is_set()
    if unless is None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()
        return stop.is_set()
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({stopping, unless}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    return stop.is_set()


def new_run_tag() -> str:
    """A random tag for one simulator run's client ids."""
    return secrets.token_hex(3)


def sim_client_id(pole_id: str, run_tag: str) -> str:
    """The MQTT client id of a simulated pole in one run."""
    return f"polegw-sim-{pole_id}-{run_tag}"


class CommandReply(TypedDict):
    id: str
    ok: bool
    error: str | None


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
        profiles: Mapping[str, Profile] | None = None,
        run_tag: str | None = None,
    ) -> None:
        """`profiles` (device id -> profile) says which commands each device takes;
        a device without one takes none. `run_tag` makes the MQTT client id unique to
        this run (default: random)."""
        self.model = model
        self.client_id = sim_client_id(model.pole_id, run_tag or new_run_tag())
        self.broker = broker
        self.interval_s = interval_s
        self.rng = rng
        self.profiles = dict(profiles or {})
        self.devices = {d.device_id: d for d in model.devices}
        base = f"{prefix}/{model.pole_id}"
        self.status_topic = f"{base}/status"
        self.telemetry_topic = f"{base}/telemetry"
        self.events_topic = f"{base}/events"
        # The pole's clock minus the true time, s: its messages are stamped by it;
        # `set_time` on commands/controller sets it right (README "Clocks").
        self.clock_offset_s = 0.0
        self.commands_topic = f"{base}/commands/+"
        self.seq = 0
        self._last_sample: datetime | None = None

    def _client(self) -> aiomqtt.Client:
        b = self.broker
        return aiomqtt.Client(
            b.host,
            b.port,
            username=b.username,
            password=b.password,
            identifier=self.client_id,
            will=aiomqtt.Will(self.status_topic, _json({"state": "offline"}), qos=1, retain=True),
            tls_context=b.tls_context(),
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
                    await client.subscribe(self.commands_topic, qos=1)
                    await client.publish(self.status_topic, _status("online"), qos=1, retain=True)
                    if backoff.failures:
                        log.info("pole %s reconnected to the broker", self.model.pole_id)
                    backoff.reset()
                    await self._serve(client, stop)
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

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        """Publish and take commands until `stop` is set or the connection fails."""
        commands = asyncio.create_task(
            self._take_commands(client), name=f"sim-commands-{self.model.pole_id}"
        )
        try:
            await self._publish_until(client, stop, commands)
        finally:
            commands.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await commands

    async def _publish_until(
        self, client: aiomqtt.Client, stop: asyncio.Event, commands: asyncio.Task[None]
    ) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        try:
            while not stop.is_set() and not commands.done():
                await self.publish_once(client)
                next_tick += self.interval_s
                now = loop.time()
                if next_tick < now:  # fell behind (slow broker, paused process): skip, not burst
                    next_tick = now + self.interval_s - (now - next_tick) % self.interval_s
                if await _wait(stop, next_tick - now, unless=commands):
                    break
        except asyncio.CancelledError:
            await self._say_offline(client)
            raise
        if commands.done() and not stop.is_set():  # the connection failed under it
            exc = None if commands.cancelled() else commands.exception()
            if isinstance(exc, aiomqtt.MqttError):
                raise exc
            raise aiomqtt.MqttError(f"the command listener stopped: {exc!r}")
        await self._say_offline(client)

    async def _take_commands(self, client: aiomqtt.Client) -> None:
        """Answer every command that arrives, in order, until the connection ends."""
        async for message in client.messages:
            if not message.topic.matches(self.commands_topic):
                # Not ours: amqtt hands a new subscriber retained messages of other topics.
                log.debug("pole %s: ignored a message on %s", self.model.pole_id, message.topic)
                continue
            topic = message.topic.value
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                payload = str(payload).encode()
            reply = self.execute(topic.rsplit("/", 1)[1], bytes(payload), datetime.now(UTC))
            if reply is not None:
                await client.publish(f"{topic}/reply", _json(reply), qos=1)

    def execute(self, device_id: str, payload: bytes, now: datetime) -> CommandReply | None:
        """Carry out one command for `device_id` at `now`; the reply, or None when the
        message has no id to answer to."""
        pole = self.model.pole_id
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            log.warning("pole %s: a command for %s is not JSON; ignored", pole, device_id)
            return None
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not body["id"]:
            log.warning("pole %s: a command for %s has no id; ignored", pole, device_id)
            return None
        cid: str = body["id"]

        def refused(reason: str) -> CommandReply:
            log.info("pole %s: command %s for %s refused: %s", pole, cid, device_id, reason)
            return {"id": cid, "ok": False, "error": reason}

        if device_id == CONTROLLER:
            return self._controller(cid, body, now, refused)
        device, profile = self.devices.get(device_id), self.profiles.get(device_id)
        if device is None or profile is None:
            return refused(f"pole {pole} has no simulated device {device_id!r}")
        name = body.get("command")
        command = profile.commands.get(name) if isinstance(name, str) else None
        if command is None:
            return refused(f"unknown command {name!r} for a {profile.profile}")
        args = body.get("args")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return refused("args must be a JSON object")
        checked = command.check_args(args)
        if isinstance(checked, CommandRefused):
            return refused(checked.detail)
        write = command.modbus_write(checked)
        if write is None or not isinstance(device, Obeying) or write.point not in device.WRITABLE:
            return refused(f"the simulated {profile.profile} cannot carry out {name!r}")
        device.sample(now.timestamp())  # counters integrate the old state up to now
        device.obey(write.point, write.value)
        log.info("pole %s: %s %s %s", pole, device_id, name, checked)
        return {"id": cid, "ok": True, "error": None}

    def _controller(
        self,
        cid: str,
        body: dict[str, object],
        now: datetime,
        refused: Callable[[str], CommandReply],
    ) -> CommandReply:
        """A command for the edge controller itself: `set_time` {"epoch_ms": …}."""
        if body.get("command") != SET_TIME:
            return refused(f"unknown command {body.get('command')!r} for the controller")
        args = body.get("args")
        epoch_ms = args.get("epoch_ms") if isinstance(args, dict) else None
        if not isinstance(epoch_ms, int) or isinstance(epoch_ms, bool) or epoch_ms <= 0:
            return refused("set_time needs args.epoch_ms, a positive integer")
        old = self.clock_offset_s
        self.clock_offset_s = epoch_ms / 1000 - now.timestamp()
        log.info(
            "pole %s: clock set (was %.1f s off, now %.3f s)",
            self.model.pole_id,
            old,
            self.clock_offset_s,
        )
        return {"id": cid, "ok": True, "error": None}

    def clock(self) -> datetime:
        """The time as the pole's own clock has it."""
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset_s)

    async def publish_once(self, client: aiomqtt.Client) -> None:
        """One telemetry batch now, then the events since the previous one."""
        now = self.clock()
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
    catalog: ProfileCatalog | None = None,
    tls_files: tuple[Path | None, Path | None, Path | None] = (None, None, None),
) -> None:
    """Run every pole of `site` that has a simulated device on `only_transport` until
    `stop` is set (or the task is cancelled). `event_rate` (door openings and impacts
    per device per hour) overrides the one in `config`. `catalog` holds the devices'
    profiles, for their commands (default: the built-in profiles). `tls_files` are
    the CA, client certificate and key files for mqtts:// (any may be None)."""
    if interval_s <= 0:
        raise ValueError("interval_s must be positive")
    prefix = prefix.strip("/")
    if not prefix or any(c in prefix for c in "+#"):
        raise ConfigError(f"invalid MQTT topic prefix {prefix!r}")
    ca_file, cert_file, key_file = tls_files
    broker = replace(
        parse_mqtt_url(mqtt_url), ca_file=ca_file, cert_file=cert_file, key_file=key_file
    )
    try:
        broker.tls_context()  # unreadable files: say so once, not once per pole
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"MQTT TLS files: {exc}") from None
    config = config or SimConfig()
    if event_rate is not None:
        config = replace(config, event_rate=event_rate)
    stop = stop or asyncio.Event()
    catalog = catalog if catalog is not None else load_catalog()
    profiles = {
        d.id: catalog[d.profile] for p in site.poles for d in p.devices if d.profile in catalog
    }
    models = site_models(
        site, seed=seed, config=config, transport=only_transport, models=MODBUS_MODELS
    )
    run_tag = new_run_tag()
    log.info(
        "simulating %d poles against %s:%d every %g s (client ids polegw-sim-…-%s)",
        len(models),
        broker.host,
        broker.port,
        interval_s,
        run_tag,
    )
    async with asyncio.TaskGroup() as tg:
        for i, model in enumerate(models):
            pole = EdgeController(
                model,
                broker,
                prefix=prefix,
                interval_s=interval_s,
                rng=random.Random(f"{seed}:{model.pole_id}"),
                profiles={
                    d.device_id: profiles[d.device_id]
                    for d in model.devices
                    if d.device_id in profiles
                },
                run_tag=run_tag,
            )
            tg.create_task(
                pole.run(stop, start_delay_s=interval_s * i / len(models)),
                name=f"sim-pole-{model.pole_id}",
            )
