"""Fault suite item 7: bad input never stops ingestion, and nothing it carries is lost.

Hypothesis draws messages on the contract's topic shapes (real and unknown pole and
device ids, ids with NUL, lone surrogates and odd characters) with random JSON,
wrong types, huge numbers, NaN, deep nesting, invalid UTF-8 and 1 MB payloads.

- In process, for volume: batches of them go through the ingest pipeline into
  PostgreSQL (the real writer, whose salvage turns values the database refuses
  into dead letters). Every message is acknowledged, the pipeline keeps running,
  and every part of every message is in the database: its readings, events and
  presence stored, or a dead letter with its reason.
- End to end, smaller: the same kind of messages through a private Mosquitto into
  a running `python -m gateway run`, checked the same way, and a good message
  published afterwards is still stored.

Size: POLEGW_FAULT_SCALE (tests/faults.py) multiplies the number of examples.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.adapters.mqtt import Inbound
from gateway.adapters.telemetry_writer import TelemetryWriter, dead_letter_key
from gateway.core.decode import MAX_DEAD_LETTERS, decode_message, parse_topic
from gateway.core.profiles import load_catalog
from gateway.core.readings import Decoded
from gateway.core.registry import DeviceRef, Registry
from gateway.ingest import IngestPipeline
from gateway.metrics import Metrics
from tests.faults import AckedPublisher, GatewayProcess, PrivateMosquitto, gateway_env, scaled
from tests.support import POLES, prepare_database_sync, small_site

pytestmark = pytest.mark.slow

CATALOG = load_catalog()
PREFIX = "fuzz/poles"
SITE = small_site()
REGISTRY = Registry(
    [p.id for p in SITE.poles],
    [DeviceRef(d.id, p.id, CATALOG[d.profile]) for p in SITE.poles for d in p.devices],
)
DEVICES = [d.id for p in SITE.poles for d in p.devices]
METRICS = sorted({m for p in CATALOG.values() for m in p.metrics})
EVENTS = sorted({e for p in CATALOG.values() for e in p.events})
TS = "2026-11-22T10:00:00Z"
MB = 1 << 20

# ------------------------------------------------------------------------- strategies


def safe_text(max_size: int) -> st.SearchStrategy[str]:
    """Text a topic level may hold on a real broker: no separators or wildcards, and
    valid UTF-8 without control characters, surrogates or non-characters (Mosquitto
    disconnects a client that publishes such a topic, as MQTT allows)."""
    return st.text(
        st.characters(blacklist_categories=["Cc", "Cs", "Cn"], blacklist_characters="/+#"),
        max_size=max_size,
    )


def ids(*, wire: bool) -> st.SearchStrategy[str]:
    """Pole or device ids: the site's, unknown ones and strange ones (NUL and lone
    surrogates only off the wire: a broker refuses them in topics)."""
    odd = safe_text(12) if wire else st.text(max_size=12)
    return st.sampled_from([*POLES, *DEVICES, "P9999", "ghost-1", ""]) | odd


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30, 10**400, 1e308, -1e308, 5e-324])
    | st.floats()  # NaN and ±Infinity: json.dumps writes them as bare words
    | st.text(max_size=16)
    | st.sampled_from(["\0", "\ud800", "x\udfffy", "\u202e", "💡" * 5])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
timestamps = (
    st.sampled_from([TS, "2026-11-22T10:00:00+08:00", 1_795_341_600_000, "2026-11-22T10:00:00"])
    | st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat)
    | st.integers(-(2**70), 2**70)
    | json_values
)
values = st.floats(-1e4, 2e5) | st.integers(-100, 2000) | st.booleans() | json_values
device_values = (
    st.dictionaries(st.sampled_from(METRICS) | st.text(max_size=10), values, max_size=6)
    | json_values
)


def bodies(device: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    telemetry = st.fixed_dictionaries(
        {
            "ts": timestamps,
            "devices": st.dictionaries(device, device_values, max_size=4) | json_values,
        },
        optional={"seq": json_values},
    )
    single = st.fixed_dictionaries({"ts": timestamps, "values": device_values})
    event = st.fixed_dictionaries(
        {"ts": timestamps},
        optional={
            "device": device | json_values,
            "type": st.sampled_from(EVENTS) | json_values,
            "data": json_values,
        },
    )
    status = st.fixed_dictionaries(
        {},
        optional={"state": st.sampled_from(["online", "offline"]) | json_values, "ts": timestamps},
    )
    return telemetry | single | event | status | json_values


def to_bytes(body: object) -> bytes:
    # ensure_ascii=False lets lone surrogates through as invalid UTF-8.
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def corrupted(draw: st.DrawFn, body: st.SearchStrategy[object]) -> bytes:
    """JSON with bytes that are not UTF-8 (or not JSON) put in, or cut off."""
    data = bytearray(to_bytes(draw(body)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        chunk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\x80"]))
        action = draw(st.sampled_from(["insert", "replace", "truncate"]))
        if action == "insert":
            data[at:at] = chunk
        elif action == "replace":
            data[at : at + len(chunk)] = chunk
        else:
            del data[at:]
    return bytes(data)


def big(kind: str, device: str) -> bytes:
    """About 1 MB: one huge value, a flood of undeclared metrics, a deep list, noise."""
    if kind == "string":
        return orjson.dumps({"ts": TS, "devices": {device: {"power_w": "x" * MB}}})
    if kind == "metrics":
        flood = {f"m{i:06d}": i for i in range(MB // 14)}
        return orjson.dumps({"ts": TS, "devices": {device: flood}})
    if kind == "nesting":
        return b'{"ts": "%s", "devices": %s}' % (TS.encode(), b"[" * (MB // 2) + b"]" * (MB // 2))
    return bytes(range(256)) * (MB // 256)


def payloads(device: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    body = bodies(device)
    return (
        body.map(to_bytes)
        | corrupted(body)
        | st.binary(max_size=100)
        | st.integers(0, 3000).map(lambda depth: b"[" * depth + b"]" * depth)
        | st.builds(
            lambda depth: to_bytes({"ts": TS, "devices": {"P0001-lamp": {"power_w": 0}}}).replace(
                b"0}", b"[" * depth + b"]" * depth + b"}"
            ),
            st.integers(0, 3000),
        )
    )


def topics(*, wire: bool) -> st.SearchStrategy[str]:
    pole, device = ids(wire=wire), ids(wire=wire)
    shaped = (
        st.builds(lambda p: f"{PREFIX}/{p}/telemetry", pole)
        | st.builds(lambda p, d: f"{PREFIX}/{p}/devices/{d}/telemetry", pole, device)
        | st.builds(lambda p: f"{PREFIX}/{p}/events", pole)
        | st.builds(lambda p: f"{PREFIX}/{p}/status", pole)
    )
    if wire:
        return shaped
    return (
        shaped | st.text(max_size=40) | st.builds(lambda t: f"{PREFIX}/{t}", st.text(max_size=20))
    )


def messages(*, wire: bool, max_size: int) -> st.SearchStrategy[list[tuple[str, bytes]]]:
    device = ids(wire=wire)
    one = st.tuples(topics(wire=wire), payloads(device))
    huge = st.tuples(
        st.sampled_from([f"{PREFIX}/P0001/telemetry", f"{PREFIX}/P9999/telemetry"]),
        st.builds(
            big,
            st.sampled_from(["string", "metrics", "nesting", "noise"]),
            st.sampled_from(["P0001-lamp", "ghost-1"]),
        ),
    )
    return st.lists(one, min_size=1, max_size=max_size) | st.tuples(huge, one).map(list)


# ------------------------------------------------------------------------- checking


def outcome(topic: str, payload: bytes) -> Decoded:
    return decode_message(topic, payload, REGISTRY, prefix=PREFIX)


def is_empty(topic: str, payload: bytes, out: Decoded) -> bool:
    """A well-formed telemetry message that carries no values: nothing to store."""
    where = parse_topic(topic, PREFIX)
    if out.message_ts is None or where is None:
        return False
    body = orjson.loads(payload)
    if where.kind == "device_telemetry":
        return bool(body["values"] == {})
    return all(v == {} for v in body["devices"].values())


def clear(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE telemetry, dead_letters, device_events, pole_presence")


def assert_all_accounted_for(database_url: str, sent: list[tuple[str, bytes]]) -> None:
    """Every part of every message is in the database: stored, or a dead letter with
    its reason; and nothing is stored that no message carried."""
    with psycopg.connect(database_url) as conn:
        readings = set(conn.execute("SELECT device_id, metric, ts FROM telemetry").fetchall())
        letters = {bytes(k): r for k, r in conn.execute("SELECT key, reason FROM dead_letters")}
        refused = set(
            conn.execute(
                "SELECT device_id, metric FROM dead_letters WHERE topic = '(database)'"
            ).fetchall()
        )
        events = set(conn.execute("SELECT ts, device_id, type FROM device_events").fetchall())
        presence = {p for (p,) in conn.execute("SELECT pole_id FROM pole_presence")}
    carried: set[tuple[object, ...]] = set()
    for topic, payload in sent:
        out = outcome(topic, payload)
        assert (
            out.readings
            or out.events
            or out.presence
            or out.dead_letters
            or is_empty(topic, payload, out)
        ), (topic, payload[:200])
        assert len(out.dead_letters) <= MAX_DEAD_LETTERS + 1
        for r in out.readings:
            key = (r.device_id, r.metric, r.ts)
            carried.add(key)
            assert key in readings or (r.device_id, r.metric) in refused, (topic, key)
        for d in out.dead_letters:
            assert letters.get(dead_letter_key(d)) == d.reason.value, (topic, d)
        for e in out.events:
            assert (e.ts, e.device_id, e.type) in events or (e.device_id, None) in refused
        for p in out.presence:
            assert p.pole_id in presence
    assert readings <= carried


# ------------------------------------------------------------------------- in process


class Ingest:
    """The ingest pipeline and the real writer, in a loop of their own."""

    def __init__(self, database_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.metrics = Metrics()
        self.writer = TelemetryWriter(database_url)
        self.pipeline = IngestPipeline(
            writer=self.writer, registry=lambda: REGISTRY, metrics=self.metrics, prefix=PREFIX
        )
        self.task = self.loop.create_task(self.pipeline.run())
        self.examples = self.messages = self.bytes = 0
        self.started = time.monotonic()

    def feed(self, sent: list[tuple[str, bytes]]) -> list[int]:
        """Offer every message, commit them; returns how often each was acknowledged."""
        acks = [0] * len(sent)
        self.examples += 1
        self.messages += len(sent)
        self.bytes += sum(len(p) for _, p in sent)

        def ack_of(i: int) -> Inbound:
            def ack() -> bool:
                acks[i] += 1
                return True

            return Inbound(sent[i][0], sent[i][1], ack)

        async def run() -> None:
            for i in range(len(sent)):
                await self.pipeline.put(ack_of(i))
            assert await self.pipeline.drain(timeout_s=60)

        self.loop.run_until_complete(run())
        assert not self.task.done(), self.task
        return acks

    def close(self) -> None:
        self.task.cancel()
        self.loop.run_until_complete(asyncio.gather(self.task, return_exceptions=True))
        self.loop.run_until_complete(self.writer.close())
        self.loop.close()


@pytest.fixture(scope="module")
def ingest(database_url: str) -> Iterator[tuple[Ingest, str]]:
    prepare_database_sync(database_url)
    pipeline = Ingest(database_url)
    try:
        yield pipeline, database_url
    finally:
        pipeline.close()
        print(
            f"\nbad input in process: {pipeline.examples} batches, {pipeline.messages} messages"
            f" ({pipeline.bytes / MB:.1f} MB) in {time.monotonic() - pipeline.started:.1f}s,"
            " every one acknowledged once and accounted for"
        )


@settings(
    max_examples=scaled(150),
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(sent=messages(wire=False, max_size=12))
def test_fuzzed_messages_through_the_pipeline_are_stored_or_dead_lettered(
    ingest: tuple[Ingest, str], sent: list[tuple[str, bytes]]
) -> None:
    pipeline, database_url = ingest
    clear(database_url)
    acks = pipeline.feed(sent)
    assert acks == [1] * len(sent)  # every message acknowledged once, after its commit
    assert_all_accounted_for(database_url, sent)


def test_a_flood_of_refused_parts_is_bounded(ingest: tuple[Ingest, str]) -> None:
    """A 1 MB message of undeclared metrics: a bounded number of dead letters, the
    rest summed up in one, and the valid readings beside them stored (a regression:
    it made ~75 000 dead letters with a 64 KB payload copy each)."""
    pipeline, database_url = ingest
    clear(database_url)
    flood: dict[str, object] = {f"m{i:06d}": i for i in range(MB // 14)}
    flood["power_w"] = 42.0
    sent = [
        (f"{PREFIX}/P0001/telemetry", orjson.dumps({"ts": TS, "devices": {"P0001-lamp": flood}}))
    ]
    assert len(sent[0][1]) > MB * 0.9
    assert pipeline.feed(sent) == [1]
    assert_all_accounted_for(database_url, sent)
    with psycopg.connect(database_url) as conn:
        (n,) = conn.execute("SELECT count(*) FROM dead_letters").fetchone() or (0,)
        (detail,) = conn.execute(
            "SELECT detail FROM dead_letters WHERE metric IS NULL"
        ).fetchone() or ("",)
        stored = conn.execute("SELECT device_id, metric, value FROM telemetry").fetchall()
    assert n == MAX_DEAD_LETTERS + 1
    assert f"{len(flood) - 1 - MAX_DEAD_LETTERS} more parts" in detail
    assert stored == [("P0001-lamp", "power_w", 42.0)]


# ------------------------------------------------------------------------- end to end


def test_fuzzed_messages_through_broker_and_gateway(
    fresh_database_url: str, tmp_path: Path
) -> None:
    prepare_database_sync(fresh_database_url)
    batches: list[list[tuple[str, bytes]]] = []

    @settings(
        max_examples=scaled(60),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(sent=messages(wire=True, max_size=40))
    def collect(sent: list[tuple[str, bytes]]) -> None:
        batches.append(sent)

    collect()
    sent = [m for batch in batches for m in batch]
    with PrivateMosquitto(tmp_path / "broker") as broker:
        env = gateway_env(fresh_database_url, broker.url, PREFIX)
        with GatewayProcess(env, tmp_path / "gateway.log") as gw:
            gw.wait_ready()
            started = time.monotonic()
            with AckedPublisher(broker.url) as pub:
                sender = threading.Thread(
                    target=pub.publish_all, args=(sent,), kwargs={"rate": 2000}
                )
                sender.start()
                sender.join()
                assert pub.wait_all_acked(60)

            def acked_by_gateway() -> float:
                return gw.metric("polegw_mqtt_messages_acked_total")

            deadline = time.monotonic() + 60
            while acked_by_gateway() < len(sent):
                assert gw.running, gw.tail()
                assert time.monotonic() < deadline, (acked_by_gateway(), len(sent), gw.tail())
                time.sleep(0.2)
            took = time.monotonic() - started
            assert_all_accounted_for(fresh_database_url, sent)

            # Still ingesting: a good message afterwards is stored.
            good = {"ts": "2026-11-23T00:00:00Z", "devices": {"P0002-env": {"temp_c": 7.5}}}
            with AckedPublisher(broker.url) as pub:
                pub.publish(0, f"{PREFIX}/P0002/telemetry", orjson.dumps(good))
                assert pub.wait_all_acked(10)
            deadline = time.monotonic() + 20
            while True:
                with psycopg.connect(fresh_database_url) as conn:
                    row = conn.execute(
                        "SELECT value FROM telemetry WHERE device_id = 'P0002-env'"
                        " AND ts = '2026-11-23T00:00:00Z'"
                    ).fetchone()
                if row is not None:
                    break
                assert time.monotonic() < deadline, gw.tail()
                time.sleep(0.2)
            assert row == (7.5,)
            assert gw.running
            max_rss = gw.max_rss
        assert "Traceback" not in gw.tail(10**7)
    print(
        f"\nbad input end to end: {len(sent)} messages"
        f" ({sum(len(p) for _, p in sent) / MB:.1f} MB) in {took:.1f}s,"
        f" all acknowledged and accounted for; gateway max RSS {max_rss / MB:.0f} MiB"
    )
