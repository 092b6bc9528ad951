"""The paho subclass behind the MQTT adapter's read path (gateway/adapters/paho_reader.py).

These tests drive a real paho client over a socket pair, with the bytes a broker
sends. They fail if paho stops reading through `_sock_recv`, stops handing PUBLISH
packets to `_handle_publish` with the variable header and payload in `_in_packet`,
or stops writing queued packets through `_packet_write`: the three private places
the subclass relies on.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway.adapters.paho_reader import CHUNK, DrainingClient


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: str, mid: int, payload: bytes, *, qos: int = 1, v5: bool = True) -> bytes:
    """A PUBLISH as a broker sends it; under MQTT 5 with a User Property, so the
    properties have a length to skip."""
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t
    if qos:
        body += struct.pack("!H", mid)
    if v5:
        prop = b"\x26" + struct.pack("!H", 1) + b"k" + struct.pack("!H", 1) + b"v"
        body += _varint(len(prop)) + prop
    body += payload
    return bytes([0x30 | (qos << 1)]) + _varint(len(body)) + body


class CountingSocket:
    """The client's end of the pair, counting the calls paho makes on it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = 0
        self.sends = 0

    def recv(self, n: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(n)

    def send(self, data: bytes) -> int:
        self.sends += 1
        return self.sock.send(data)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)


Got = list[tuple[bytes, int, bytes]]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def client(
    sock: socket.socket, *, v5: bool = True, sink: bool = True
) -> tuple[DrainingClient, CountingSocket, Got, list[paho.MQTTMessage]]:
    protocol = paho.MQTTv5 if v5 else paho.MQTTv311
    c = DrainingClient.adopt(paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol))
    c.manual_ack_set(True)
    # As aiomqtt does: writes wait for the event loop's writer callback.
    c.on_socket_register_write = lambda *_: None
    c.on_socket_unregister_write = lambda *_: None
    counting = CountingSocket(sock)
    c._sock = counting  # type: ignore[assignment]
    got: Got = []
    messages: list[paho.MQTTMessage] = []
    c.on_message = lambda _c, _u, msg: messages.append(msg)
    if sink:
        c.set_publish_sink(lambda topic, mid, payload: got.append((topic, mid, payload)))
    return c, counting, got, messages


def test_every_buffered_publish_is_handled_in_one_wakeup_with_one_recv(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    c, counting, got, messages = client(a)
    sent = [(f"poles/P{i}/telemetry".encode(), i + 1, b'{"n":%d}' % i) for i in range(50)]
    b.sendall(b"".join(publish(t.decode(), mid, p) for t, mid, p in sent))
    assert c.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert got == sent
    assert messages == []  # no MQTTMessage for a QoS 1 PUBLISH
    # Stock paho makes 3 or more recv calls per packet; here one chunk, and the
    # recv that finds the socket empty.
    assert counting.recvs <= 2
    assert c.buffered == 0


def test_a_packet_split_across_reads_is_finished_and_nothing_stays_buffered(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    c, _, got, _ = client(a)
    first, second = publish("poles/P1/telemetry", 1, b"x" * 300), publish("poles/P2/status", 2, b"")
    data = first + second
    for cut in (1, 2, 5, len(first), len(first) + 3):
        got.clear()
        b.sendall(data[:cut])
        c.loop_read()
        assert c.buffered == 0  # the selector would never wake for buffered bytes
        b.sendall(data[cut:])
        c.loop_read()
        assert got == [(b"poles/P1/telemetry", 1, b"x" * 300), (b"poles/P2/status", 2, b"")]


def test_a_wakeup_handles_at_most_one_chunk(pair: tuple[socket.socket, socket.socket]) -> None:
    """Draining is bounded: what arrives beyond one chunk waits for the next wakeup."""
    a, b = pair
    c, _, got, _ = client(a)
    packet = publish("poles/P1/telemetry", 7, b"y" * 1000)
    count = 2 * CHUNK // len(packet)
    b.sendall(packet * count)
    c.loop_read()
    assert 0 < len(got) < count
    while len(got) < count:
        c.loop_read()
    assert len(got) == count


def test_mqtt_311_and_qos_0_and_2_take_paho_s_own_path(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    c, _, got, messages = client(a, v5=False)
    b.sendall(
        publish("poles/P1/telemetry", 3, b"one", v5=False)
        + publish("poles/P1/events", 0, b"two", qos=0, v5=False)
        + publish("poles/P1/events", 4, b"three", qos=2, v5=False)
    )
    c.loop_read()
    assert got == [(b"poles/P1/telemetry", 3, b"one")]
    assert [(m.topic, m.qos, m.payload) for m in messages] == [("poles/P1/events", 0, b"two")]
    assert 4 in c._in_messages  # QoS 2 waits for PUBREL, as paho does it


def test_without_a_sink_messages_go_to_on_message(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    c, _, got, messages = client(a, sink=False)
    b.sendall(publish("poles/P1/telemetry", 9, b"p") * 3)
    c.loop_read()
    assert got == []
    assert [(m.topic, m.mid, m.payload) for m in messages] == [("poles/P1/telemetry", 9, b"p")] * 3


def test_a_cut_short_publish_is_a_protocol_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    c, _, got, _ = client(a)
    body = struct.pack("!H", 1) + b"t" + struct.pack("!H", 5) + b"\x09"  # 9 bytes of properties
    b.sendall(bytes([0x32, len(body)]) + body)
    assert c.loop_read() == MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert got == []


def test_the_acks_of_a_batch_go_out_in_one_write_in_order(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    c, counting, _, _ = client(a)
    for mid in (5, 6, 300):
        c.ack(mid, 1)
    assert counting.sends == 0  # queued until the writer callback runs
    c.loop_write()
    assert counting.sends == 1
    assert b.recv(100) == b"".join(b"\x40\x02" + struct.pack("!H", m) for m in (5, 6, 300))


def test_the_sink_needs_manual_acks_and_adopt_needs_a_plain_paho_client() -> None:
    c = DrainingClient.adopt(paho.Client(CallbackAPIVersion.VERSION2))
    with pytest.raises(ValueError, match="manual ack"):
        c.set_publish_sink(lambda *_: None)
    with pytest.raises(TypeError):
        DrainingClient.adopt(c)
