#!/usr/bin/env python3
"""Micro-benchmarks of two parts of the gateway's ingest path, in thread CPU time,
without broker or database (docs/performance.md, "What changed for issue 20").

    .venv/bin/python bench/ingest_parts.py read  --wakeup 1|4|32 [--stock]
    .venv/bin/python bench/ingest_parts.py decode [--heap] [--freeze] [--no-gc]

``read``: paho's read path fed from a socket pair with MQTT 5 QoS 1 PUBLISH packets of
the bench's size, ``--wakeup`` packets arriving per socket wakeup; the client is
polegw's ``DrainingClient`` with its publish sink, or stock paho with ``--stock``.
Includes writing the packets into the pair and the PUBACKs of 2,000-message batches.

``decode``: ``IngestPipeline.offer`` on the messages ``bench/ingest.py`` sends (the demo
site, 200 poles, 20 readings per message), batches of 5,000 readings. ``--heap``
imports the gateway's service and API first, so the heap is the size of a running
gateway's; ``--freeze`` then freezes it as ``polegw run`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ingest.py, run as a script


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish(topic: str, mid: int, payload: bytes) -> bytes:
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + struct.pack("!H", mid) + b"\x00" + payload
    return b"\x32" + _varint(len(body)) + body


def bench_read(wakeup: int, stock: bool, n: int) -> None:
    from gateway.adapters.paho_reader import DrainingClient

    payload = b'{"ts":1796455470000,"seq":1,"devices":{' + b"x" * 440 + b"}}"
    packets = [
        _publish(f"bench/poles/P{i % 200:04d}/telemetry", i % 65000 + 1, payload) for i in range(n)
    ]
    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.manual_ack_set(True)
    got = 0

    def on_message(_c: object, _u: object, msg: paho.MQTTMessage) -> None:
        nonlocal got
        got += 1
        _ = msg.topic, msg.payload

    def sink(_topic: bytes, _mid: int, _payload: bytes) -> None:
        nonlocal got
        got += 1

    c.on_message = on_message
    if not stock:
        DrainingClient.adopt(c).set_publish_sink(sink)
    c.on_socket_register_write = lambda *_: None  # as aiomqtt: writes wait for the loop
    c.on_socket_unregister_write = lambda *_: None
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    c._sock = ours

    def drain_acks() -> None:
        while broker.recv(1 << 20):
            pass

    started = time.thread_time()
    wakeups = 0
    for i in range(0, n, wakeup):
        broker.sendall(b"".join(packets[i : i + wakeup]))
        while True:  # one selector wakeup per call, while the socket has data
            c.loop_read()
            wakeups += 1
            try:
                ours.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                break
    read_s = time.thread_time() - started
    threading.Thread(target=drain_acks, daemon=True).start()
    started = time.thread_time()
    for first in range(0, n, 2000):
        for i in range(first, min(n, first + 2000)):
            c.ack(i % 65000 + 1, 1)
        c.loop_write()
    ack_s = time.thread_time() - started
    assert got == n, (got, n)
    print(
        f"{'stock paho' if stock else 'DrainingClient'}, {wakeup} per wakeup:"
        f" read {1e6 * read_s / n:.1f} µs/message ({wakeups / n:.2f} wakeups/message),"
        f" acks {1e6 * ack_s / n:.1f} µs/message"
    )


def bench_decode(heap: bool, freeze: bool, no_gc: bool) -> None:
    import ingest as bench_ingest  # bench/ingest.py

    from gateway.adapters.mqtt import Inbound
    from gateway.core.profiles import load_catalog
    from gateway.core.registry import DeviceRef, Registry
    from gateway.ingest import IngestPipeline
    from gateway.metrics import Metrics

    site = bench_ingest.build_site(200)
    catalog = load_catalog()
    registry = Registry(
        [p.id for p in site.poles],
        [DeviceRef(d.id, p.id, catalog[d.profile]) for p in site.poles for d in p.devices],
    )
    fragments, rows, lamps = bench_ingest.pole_samples(site, 20, 4)
    plan = bench_ingest.build_plan(
        site,
        "bench/poles",
        rate=50_000,
        duration=8,
        per_message=20,
        t0=time.time(),
        fragments=fragments,
        rows=rows,
        lamps=lamps,
        variants=4,
    )
    messages = [
        (plan.topics[plan.pole_of[i]], plan.lines[i].rstrip(b"\n")) for i in range(plan.messages)
    ]
    if heap:
        import gateway.api
        import gateway.service  # noqa: F401
    gc.collect()
    objects = len(gc.get_objects())
    if freeze:
        gc.freeze()
    if no_gc:
        gc.disable()

    def ack() -> bool:
        return True

    async def run() -> None:
        pipeline = IngestPipeline(
            writer=None,  # type: ignore[arg-type]  # nothing is committed here
            registry=lambda: registry,
            metrics=Metrics(),
            prefix="bench/poles",
        )
        started = time.thread_time()
        readings = 0
        for topic, payload in messages:
            pipeline.offer(Inbound(topic, payload, ack))
            if len(pipeline._current.batch.readings) >= 5000:  # a batch is full: next one
                done, pipeline._current = pipeline._current, type(pipeline._current)()
                pipeline._count_received(done)
                readings += len(done.batch.readings)
        spent = time.thread_time() - started
        print(
            f"offer: {1e6 * spent / len(messages):.1f} µs/message over {len(messages):,}"
            f" messages ({readings:,} readings in full batches); objects at start"
            f" {objects:,}, frozen {gc.get_freeze_count():,}, gc on {gc.isenabled()}"
        )

    asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    read = sub.add_parser("read", help="paho's read path")
    read.add_argument("--wakeup", type=int, default=1, help="packets per socket wakeup")
    read.add_argument("--stock", action="store_true", help="stock paho, not DrainingClient")
    read.add_argument("--messages", type=int, default=20_000)
    decode = sub.add_parser("decode", help="IngestPipeline.offer")
    decode.add_argument("--heap", action="store_true", help="import the whole gateway first")
    decode.add_argument("--freeze", action="store_true", help="gc.freeze() as polegw run does")
    decode.add_argument("--no-gc", action="store_true", help="garbage collector off")
    args = ap.parse_args()
    if args.part == "read":
        bench_read(args.wakeup, args.stock, args.messages)
    else:
        bench_decode(args.heap, args.freeze, args.no_gc)


if __name__ == "__main__":
    main()
