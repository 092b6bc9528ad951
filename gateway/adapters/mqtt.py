"""The MQTT adapter: a persistent QoS 1 subscription whose messages are acknowledged
only when the caller says so (after commit; DESIGN.md section 8, invariant 1).

aiomqtt owns the connection (asyncio integration, TLS, subscribe) and reports
its loss. It does not expose manual acknowledgement, so the adapter switches on
paho-mqtt's manual ack on the client aiomqtt wraps, and takes paho's message
callback over to hand each message to the pipeline without a task per message
(see docs/decisions.md). That client is also switched to `DrainingClient`
(paho_reader.py), which reads in chunks, handles every buffered PUBLISH per
socket wakeup and passes QoS 1 messages on without an `MQTTMessage`.
`MqttSubscription._take_over_messages` and the DISCONNECT with a Session
Expiry that ends an adopted session (`_adopt`) are the only places polegw
reaches into aiomqtt.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.adapters.paho_reader import DrainingClient
from gateway.backoff import Backoff
from gateway.config import MqttEndpoint, Settings
from gateway.errors import ConfigError
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

Ack = Callable[[], bool]  # True when an acknowledgement was sent


@dataclass(frozen=True, slots=True)
class Inbound:
    """One received message and the way to acknowledge it."""

    topic: str
    payload: bytes
    ack: Ack


def _plain_topics(prefix: str) -> list[str]:
    return [
        f"{prefix}/+/telemetry",
        f"{prefix}/+/devices/+/telemetry",
        f"{prefix}/+/events",
        f"{prefix}/+/status",
        f"{prefix}/+/commands/+/reply",
    ]


def ingest_topics(prefix: str, share_group: str | None = None) -> list[str]:
    """The gateway's subscription filters. With a share group (replicas,
    docs/scaling.md) each becomes `$share/{group}/{filter}`, so that the broker
    gives each message to one replica of the group; the messages still arrive on
    their own topics. Pole status stays a plain subscription on every replica:
    shared subscriptions get no retained messages (MQTT 5, section 4.8.2), and a
    replica that sees every status in order writes the newest state last."""
    plain = _plain_topics(prefix)
    if share_group is None:
        return plain
    status = f"{prefix}/+/status"
    return [t if t == status else f"$share/{share_group}/{t}" for t in plain]


def unshared_topics(prefix: str, share_group: str | None) -> list[str]:
    """Plain filters that a persistent session may still hold from a run without
    the share group (a single gateway turned replica keeps its client id): left
    there, they would bring this replica every message a second time."""
    if share_group is None:
        return []
    shared = set(ingest_topics(prefix, share_group))
    return [t for t in _plain_topics(prefix) if t not in shared]


def is_command_reply(topic: str, prefix: str) -> bool:
    parts = topic.split("/")
    n = len(prefix.split("/"))
    return len(parts) == n + 4 and parts[n + 1] == "commands" and parts[n + 3] == "reply"


def is_pole_status(topic: str, prefix: str) -> bool:
    parts = topic.split("/")
    n = len(prefix.split("/"))
    return len(parts) == n + 2 and parts[n + 1] == "status"


def _no_ack() -> bool:
    return False


# A connection must last this long before the reconnect back-off starts over.
STABLE_AFTER_S = 30.0


class SubscriptionRefused(aiomqtt.MqttError):
    """The broker did not grant QoS 1 on every ingest topic (ACL, max_qos)."""


def _require_qos1(granted: object, topics: list[str]) -> None:
    """`subscribe` answers reason codes (MQTT 5) or granted QoS values (3.1.1)."""
    codes = [getattr(g, "value", g) for g in granted] if isinstance(granted, list | tuple) else []
    bad = [t for t, code in zip(topics, codes, strict=False) if code != 1]
    if len(codes) != len(topics) or bad:
        raise SubscriptionRefused(
            f"the broker did not grant QoS 1 on {bad or topics} (got {codes})"
        )


SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: another client took the client id


@contextlib.contextmanager
def client_id_lock(settings: Settings) -> Iterator[None]:
    """Hold this machine's lock on (broker, client id) while inside; a ConfigError
    naming the setting when another process holds it. Where the lock file cannot
    be made (a read-only or foreign temp folder) nothing is checked."""
    endpoint = MqttEndpoint(settings.mqtt_url)
    key = f"{endpoint.host}:{endpoint.port}/{settings.mqtt_client_id}"
    name = f"polegw-mqtt-{hashlib.sha256(key.encode()).hexdigest()[:16]}.lock"
    path = Path(tempfile.gettempdir()) / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        log.debug("no client id lock at %s: %s", path, exc)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(
                f"MQTT client id {settings.mqtt_client_id!r} on {endpoint.host}:{endpoint.port}"
                f" is in use by another polegw on this machine (pid {holder}), which would"
                " take the session over: give each its own POLEGW_MQTT_CLIENT_ID"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def client_tls_context(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """TLS for mqtts://: verify the broker against `ca_file` (a private CA) or the
    system's CAs, and present a client certificate when one is given."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


def settings_tls_context(settings: Settings) -> ssl.SSLContext:
    """The gateway's TLS context from POLEGW_MQTT_CA_FILE, _CERT_FILE and _KEY_FILE."""
    try:
        return client_tls_context(
            settings.mqtt_ca_file, settings.mqtt_cert_file, settings.mqtt_key_file
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"MQTT TLS files (POLEGW_MQTT_CA_FILE/CERT_FILE/KEY_FILE): {exc}"
        ) from None


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
        "tls_context": settings_tls_context(settings) if endpoint.tls else None,
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
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        subscribed: asyncio.Event | None = None,
        on_reply: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self._on_reply = on_reply
        self._client: aiomqtt.Client | None = None
        self._settings = settings
        self._metrics = metrics
        self._subscribed = subscribed or asyncio.Event()
        self._generation = 0
        self._connected = False
        self._closing = False
        self._endpoint = MqttEndpoint(settings.mqtt_url)

    @property
    def connected(self) -> bool:
        return self._connected

    def _ack_for(self, client: paho.Client, generation: int, mid: int, qos: int) -> Ack:
        if qos == 0:
            return _no_ack

        def ack() -> bool:
            # A message from an earlier connection is not acknowledged on this
            # one: the broker redelivers it, and storing it again is a no-op.
            if self._generation != generation or not self._connected:
                return False
            client.ack(mid, qos)
            return True

        return ack

    def _take_over_messages(
        self, client: aiomqtt.Client, deliver: Callable[[Inbound], None]
    ) -> None:
        """Receive straight from paho's callback (see module docstring).

        aiomqtt's own path queues each message and wakes a task per message;
        handing it to `deliver` in the callback halves the gateway's cost per
        message. aiomqtt still owns the connection and reports its loss.
        """
        paho_client = DrainingClient.adopt(client._client)
        generation = self._generation
        prefix = self._settings.mqtt_topic_prefix

        def receive(topic: str, payload: bytes, ack: Ack) -> None:
            if self._on_reply is not None and is_command_reply(topic, prefix):
                # Replies live in memory (the waiting command); a lost one
                # makes that command time out, which is reported.
                self._on_reply(topic, payload)
                ack()
                return
            deliver(Inbound(topic, payload, ack))

        def on_publish(raw_topic: bytes, mid: int, payload: bytes) -> None:
            # Every QoS 1 PUBLISH comes here, without an MQTTMessage (paho_reader.py).
            if self._closing:
                return  # stopping: left unacknowledged for the next session to receive
            topic = raw_topic.decode("utf-8", "replace")  # brokers should refuse bad UTF-8
            try:
                receive(topic, payload, self._ack_for(paho_client, generation, mid, 1))
            except Exception:  # a bug must not kill the network loop; the message stays unacked
                log.exception("ingest failed on a message from %s", topic)

        def on_message(_client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
            # What on_publish does not take (QoS 0 and anything unusual), paho's way.
            if self._closing:
                return
            try:
                topic = msg.topic
            except UnicodeDecodeError:  # brokers should refuse these; keep it readable
                topic = msg._topic.decode("utf-8", "replace")
            try:
                receive(
                    topic,
                    bytes(msg.payload),
                    self._ack_for(paho_client, generation, msg.mid, msg.qos),
                )
            except Exception:  # a bug must not kill the network loop; the message stays unacked
                log.exception("ingest failed on a message from %s", topic)

        paho_client.manual_ack_set(True)
        paho_client.on_message = on_message
        paho_client.set_publish_sink(on_publish)

        def on_disconnect(
            _client: paho.Client,
            userdata: object,
            flags: paho.DisconnectFlags,
            reason_code: ReasonCode,
            properties: Properties | None = None,
        ) -> None:
            # aiomqtt reports the loss without the reason; this one the operator must see.
            if reason_code.value == SESSION_TAKEN_OVER:
                log.error(
                    "another MQTT client connected with this gateway's client id %r and took"
                    " its session over: give every gateway its own POLEGW_MQTT_CLIENT_ID"
                    " (replicas share the work with POLEGW_MQTT_SHARE_GROUP)",
                    self._settings.mqtt_client_id,
                )
            client._on_disconnect(_client, userdata, flags, reason_code, properties)

        paho_client.on_disconnect = on_disconnect

    async def run(
        self,
        deliver: Callable[[Inbound], None],
        stop: asyncio.Event,
        drain: Callable[[], Awaitable[object]],
    ) -> None:
        """Deliver messages until `stop` is set; then `drain` (commit and ack), disconnect.
        Refuses (ConfigError) when another polegw on this machine uses the same client
        id on the same broker: the two would take the session from each other."""
        with client_id_lock(self._settings):
            await self._run(deliver, stop, drain)

    async def _run(
        self,
        deliver: Callable[[Inbound], None],
        stop: asyncio.Event,
        drain: Callable[[], Awaitable[object]],
    ) -> None:
        backoff = Backoff()
        prefix, group = self._settings.mqtt_topic_prefix, self._settings.mqtt_share_group
        topics = ingest_topics(prefix, group)
        stale = unshared_topics(prefix, group)
        first = True
        self._closing = False
        while not stop.is_set():
            if not first:
                self._metrics.mqtt_reconnects.inc()
            first = False
            client = make_client(
                self._settings, client_id=self._settings.mqtt_client_id, clean=False
            )
            self._generation += 1
            self._take_over_messages(client, deliver)
            try:
                async with client:
                    connected_at = time.monotonic()
                    self._client = client
                    self._connected = True
                    self._metrics.mqtt_connected.set(1)
                    granted = await client.subscribe([(t, 1) for t in topics])
                    _require_qos1(granted, topics)
                    if stale:  # after subscribing: an overlap repeats messages, a gap misses them
                        await client.unsubscribe(stale)
                    log.info(
                        "MQTT connected to %r as %s, subscribed to %s",
                        self._endpoint,
                        self._settings.mqtt_client_id,
                        topics,
                    )
                    self._subscribed.set()
                    try:
                        stopped = await self._pump_until(client, stop)
                    finally:
                        # A connection that drops at once is not a recovery.
                        if time.monotonic() - connected_at > STABLE_AFTER_S:
                            backoff.reset()
                    if stopped:
                        self._closing = True
                        await drain()
                        return
            except SubscriptionRefused as exc:
                log.error("MQTT: %s; retrying with back-off", exc)
            except aiomqtt.MqttError as exc:
                log.warning("MQTT connection to %r lost or refused: %s", self._endpoint, exc)
            finally:
                self._connected = False
                self._client = None
                self._subscribed.clear()
                self._metrics.mqtt_connected.set(0)
            delay = backoff.next_delay()
            log.info("MQTT reconnecting in %.1fs", delay)
            try:
                async with asyncio.timeout(delay):
                    await stop.wait()
            except TimeoutError:
                pass

    @staticmethod
    async def _until_disconnected(client: aiomqtt.Client) -> None:
        """Messages go to the callback, so this only waits for aiomqtt's MqttError."""
        async for _ in client.messages:
            pass

    async def _pump_until(self, client: aiomqtt.Client, stop: asyncio.Event) -> bool:
        """True when stopped; raises MqttError when the connection is lost."""
        pump = asyncio.create_task(self._until_disconnected(client), name="mqtt-connection")
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

    async def adopt(
        self,
        client_id: str,
        deliver: Callable[[Inbound], None],
        stop: asyncio.Event,
        *,
        quiet_s: float,
    ) -> int | None:
        """Ingest what the persistent session of `client_id` (a replica that is gone)
        holds, then end that session; the number of messages ingested, or None when
        `stop` came first (the session is left as it is).

        Connects with that client id and clean_start=False, keeping the session's
        expiry (an adopter that dies leaves the session to the next one), removes
        the session's subscriptions (the broker routes nothing more to it), hands
        the queued messages to `deliver` (acknowledged after commit, as always) and,
        once every one is acknowledged and nothing came for `quiet_s`, disconnects
        with Session Expiry 0: the broker deletes the session. Raises MqttError
        when the connection is lost or taken over (the replica came back): the
        session is kept and its unacknowledged messages go to whoever has it next.
        Not under `client_id_lock`: the replica must be able to come back here."""
        settings = self._settings.model_copy(update={"mqtt_client_id": client_id})
        adopter = MqttSubscription(settings, self._metrics, on_reply=self._on_reply)
        return await adopter._adopt(deliver, stop, quiet_s)

    async def _adopt(
        self, deliver: Callable[[Inbound], None], stop: asyncio.Event, quiet_s: float
    ) -> int | None:
        prefix, group = self._settings.mqtt_topic_prefix, self._settings.mqtt_share_group
        received = acked = 0
        last = time.monotonic()  # the last message or acknowledgement

        def counted(message: Inbound) -> None:
            nonlocal received, last
            received += 1
            last = time.monotonic()

            def ack() -> bool:
                nonlocal acked, last
                sent = message.ack()
                if sent:
                    acked += 1
                    last = time.monotonic()  # the broker may send the next one now
                return sent

            if is_pole_status(message.topic, prefix):
                # Every replica received it (a plain subscription); an old copy
                # written now would overwrite a newer state.
                ack()
                return
            deliver(Inbound(message.topic, message.payload, ack))

        client = make_client(self._settings, client_id=self._settings.mqtt_client_id, clean=False)
        self._generation += 1
        self._take_over_messages(client, counted)
        async with client:
            self._connected = True
            pump = asyncio.create_task(self._until_disconnected(client), name="mqtt-adopted")
            try:
                filters = dict.fromkeys(ingest_topics(prefix, group) + _plain_topics(prefix))
                await client.unsubscribe(list(filters))
                while not (acked == received and time.monotonic() - last >= quiet_s):
                    if stop.is_set():
                        return None
                    done, _ = await asyncio.wait({pump}, timeout=0.25)
                    if done:
                        pump.result()  # re-raises the disconnect
                        raise aiomqtt.MqttError("connection ended")
                self._closing = True  # nothing more is taken: the session ends now
                props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = 0
                if client._client.disconnect(properties=props) != paho.MQTT_ERR_SUCCESS:
                    raise aiomqtt.MqttError("connection lost before the session was ended")
                await asyncio.wait({pump}, timeout=10.0)
            finally:
                self._connected = False
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await pump
        return received

    async def publish(self, topic: str, payload: bytes, expiry_s: int | None = None) -> None:
        """Publish at QoS 1 on the gateway's connection; returns when the broker has
        it. Raises MqttError when not connected (never queued silently).

        Under MQTT 5, `expiry_s` sets the Message Expiry Interval: a pole that
        reconnects after that never receives the message (a command the gateway
        has already recorded as timed out must not be carried out late)."""
        client = self._client
        if client is None or not self._connected:
            raise aiomqtt.MqttError("not connected to the MQTT broker")
        props = None
        if expiry_s is not None and self._settings.mqtt_protocol == "5":
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = max(1, expiry_s)
        await client.publish(topic, payload, qos=1, properties=props)
