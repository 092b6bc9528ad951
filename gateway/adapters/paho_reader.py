"""paho-mqtt's read path, made to cost less per message: a small subclass of
`paho.mqtt.client.Client` that aiomqtt's client is switched to (see mqtt.py).

Stock paho 2.x, driven by aiomqtt's socket reader, handles one packet per socket
wakeup (`loop_read` reads `len(in) + len(out)` packets, which is 1 for QoS 1 with
manual acks) and issues three or four `recv` calls per packet (the command byte,
each byte of the remaining length, the rest). Every PUBLISH also becomes an
`MQTTMessage` with an MQTT 5 `Properties` object, and is matched against the
per-topic callbacks. For the gateway, that was about half its CPU per message
(docs/performance.md).

`DrainingClient` changes three things and nothing else:

- `_sock_recv` reads the socket in chunks of up to `CHUNK` bytes into a buffer and
  serves paho's small reads from it;
- `loop_read` goes on handling packets while that buffer holds bytes, so every
  packet already read is handled in the same wakeup (no byte is left in the
  buffer when it returns: the selector would not wake for it);
- with a publish sink set, a QoS 1 PUBLISH is handed to the sink as (topic, mid,
  payload) without building an `MQTTMessage` or `Properties`. The sink is called
  where paho would call `on_message`, so acknowledging stays the caller's job
  (manual ack) exactly as before.

It relies on private parts of paho 2.x's `Client`: `_sock_recv(bufsize)`,
`_packet_read()` (through `loop_read`), `_handle_publish()`, `_packet_write()`,
and the `_in_packet` / `_out_packet` structures. tests/test_paho_reader.py fails
if any of them changes shape; pyproject.toml pins paho-mqtt to >=2.2,<3. Upstream,
a buffered `_packet_read` and batched writes belong in paho itself
(eclipse-paho/paho.mqtt.python; docs/decisions.md, issue 20).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket

if TYPE_CHECKING:
    from paho.mqtt.client import _OutPacket

PUBACK = paho.PUBACK

# One recv reads at most this much; about 130 telemetry messages of 490 bytes.
CHUNK = 64 * 1024

PublishSink = Callable[[bytes, int, bytes], None]  # (topic, mid, payload)

_U16 = struct.Struct("!H")
_EMPTY = b""


class DrainingClient(paho.Client):
    """A paho client that reads in chunks and handles every buffered packet per wakeup."""

    # Set by `adopt`; class defaults so an instance switched over keeps working.
    _rx: bytes = _EMPTY
    _rx_pos: int = 0
    _rx_draining: bool = False
    _publish_sink: PublishSink | None = None

    @classmethod
    def adopt(cls, client: paho.Client) -> DrainingClient:
        """Switch an existing paho client (the one aiomqtt made) to this class."""
        if type(client) is not paho.Client:
            raise TypeError(f"expected a paho.mqtt.client.Client, got {type(client).__name__}")
        client.__class__ = cls
        assert isinstance(client, cls)
        client._rx, client._rx_pos, client._rx_draining = _EMPTY, 0, False
        client._publish_sink = None
        return client

    def set_publish_sink(self, sink: PublishSink | None) -> None:
        """QoS 1 PUBLISH packets go to `sink(topic, mid, payload)` instead of on_message.
        Only with manual acks: the sink's owner acknowledges (`ack(mid, 1)`)."""
        if sink is not None and not self._manual_ack:
            raise ValueError("a publish sink needs manual acks (manual_ack_set(True))")
        self._publish_sink = sink

    @property
    def buffered(self) -> int:
        """Bytes read from the socket and not yet handled."""
        return len(self._rx) - self._rx_pos

    def _sock_recv(self, bufsize: int) -> bytes:
        pos = self._rx_pos
        data = self._rx
        if pos >= len(data):
            if self._rx_draining:
                # Finishing the last packet of a chunk: read only what it needs,
                # so the loop below ends once the chunk is handled.
                return super()._sock_recv(bufsize)
            data = super()._sock_recv(CHUNK)  # raises BlockingIOError when there is nothing
            if len(data) <= bufsize:
                return data  # all of it (or b"" at end of stream)
            self._rx, pos = data, 0
        end = pos + bufsize
        self._rx_pos = end
        if end >= len(data):
            self._rx, self._rx_pos = _EMPTY, 0
            return data[pos:] if pos else data
        return data[pos:end]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        self._rx_draining = False
        rc = super().loop_read(max_packets)
        self._rx_draining = True
        try:
            while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._rx_pos < len(self._rx):
                rc = super().loop_read(max_packets)
        finally:
            self._rx_draining = False
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._rx, self._rx_pos = _EMPTY, 0  # the connection is gone; so is what it sent
        return rc

    def _handle_publish(self) -> MQTTErrorCode:
        sink = self._publish_sink
        header: int = self._in_packet["command"]
        if sink is None or header & 0x06 != 0x02:  # not QoS 1: paho's own way
            return super()._handle_publish()
        packet: Any = self._in_packet["packet"]
        try:
            (topic_len,) = _U16.unpack_from(packet, 0)
            pos = 2 + topic_len
            (mid,) = _U16.unpack_from(packet, pos)
        except struct.error:
            raise MalformedPacket("PUBLISH shorter than its topic and packet id") from None
        pos += 2
        if self._protocol == MQTTProtocolVersion.MQTTv5:
            # Skip the properties: their length is a variable byte integer.
            length = mult = 0
            for _ in range(4):
                if pos >= len(packet):
                    raise MalformedPacket("PUBLISH properties cut short")
                byte = packet[pos]
                pos += 1
                length += (byte & 0x7F) << mult
                mult += 7
                if not byte & 0x80:
                    break
            else:
                raise MalformedPacket("PUBLISH properties length longer than 4 bytes")
            pos += length
            if pos > len(packet):
                raise MalformedPacket("PUBLISH properties longer than the packet")
        if topic_len == 0:
            # An empty topic means a topic alias, which the gateway never allows
            # (no Topic Alias Maximum in CONNECT): paho's own path reports it.
            return super()._handle_publish()
        sink(bytes(packet[2 : 2 + topic_len]), mid, bytes(packet[pos:]))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_write(self) -> MQTTErrorCode:
        # The PUBACKs of a committed batch are queued one by one (`ack`); send the
        # run at the head of the queue in one write instead of one write each.
        out = self._out_packet
        if len(out) > 1 and _is_whole_puback(out[0]) and _is_whole_puback(out[1]):
            parts = []
            size = 0
            while out and size < CHUNK and _is_whole_puback(out[0]):
                packet = out.popleft()["packet"]
                parts.append(packet)
                size += len(packet)
            joined = b"".join(parts)
            out.appendleft(
                {
                    "command": PUBACK,
                    "mid": 0,
                    "qos": 0,
                    "pos": 0,
                    "to_process": len(joined),
                    "packet": joined,
                    "info": None,
                }
            )
        return super()._packet_write()


def _is_whole_puback(packet: _OutPacket) -> bool:
    return packet["command"] & 0xF0 == PUBACK and packet["pos"] == 0
