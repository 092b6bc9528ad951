"""A gone replica's share of the messages (issue 19, docs/scaling.md "Failure
behaviour"): Mosquitto keeps dealing a share of a group's messages to a member's
persistent session while it is offline. A replica stopped gracefully leaves the
group first; the session of one that was killed is adopted by a survivor, which
ingests what is queued there and ends the session.

The first tests drive `MqttSubscription` against the real broker; the slow ones
run three `polegw run` processes (tests/test_replicas.py's helpers)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.adapters.leases import LeaseKeeper
from gateway.adapters.mqtt import Inbound, MqttSubscription, ingest_topics
from gateway.config import Settings
from gateway.core.ownership import Observed, adoption, gone
from gateway.metrics import Metrics
from tests.faults import AckedPublisher, GatewayProcess, readings_of, scaled
from tests.support import READINGS_PER_MESSAGE, count, eventually, prepare_database, stream
from tests.test_replicas import RATE, TTL_S, forget_session, replicas, wait_subscribed

# ------------------------------------------------------------------ pure


def test_the_replicas_to_adopt_are_those_whose_heartbeat_expired_but_this_one() -> None:
    observed = {
        "replica/a": Observed("a", expired=True),
        "replica/b": Observed("b", expired=False),
        "replica/me": Observed("me", expired=True),  # its own row, about to be renewed
        "leader/alarms": Observed("a", expired=True),
        "replica/c": Observed("c", expired=True),
    }
    assert gone(observed, "me") == ["a", "c"]
    assert gone({}, "me") == []


def adoptions(keeper: LeaseKeeper) -> list[str]:
    return [adoption(r) for r in keeper.gone_replicas]


def rows_of(database_url: str, holder: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT name FROM gateway_leases WHERE holder = %s ORDER BY name", (holder,)
        ).fetchall()
    return [str(r[0]) for r in rows]


async def test_the_keepers_see_a_killed_replica_as_gone_and_one_takes_its_adoption(
    migrated_database_url: str,
) -> None:
    """`gone_replicas` and the `adopt/{id}` lease (one adopter), and the heartbeat
    a replica expires when it stops, so that the others adopt its session at once."""
    ttl = 1.5
    keepers = {n: LeaseKeeper(migrated_database_url, n, ttl_s=ttl) for n in ("a", "b", "c")}
    stops = {n: asyncio.Event() for n in keepers}
    for keeper in keepers.values():
        keeper.want("adopt", partial(adoptions, keeper))
        keeper.want("leader", lambda: [f"leader/r{i}" for i in range(4)])
    tasks = {n: asyncio.create_task(k.run(stops[n])) for n, k in keepers.items()}
    try:
        await eventually(lambda: all(k.live_replicas == 3 for k in keepers.values()))
        tasks["c"].cancel()  # killed: its heartbeat is left to expire
        await eventually(
            lambda: all(keepers[n].gone_replicas == ["c"] for n in "ab"), within=ttl * 4
        )
        await eventually(
            lambda: sum(keepers[n].holds("adopt/c") for n in "ab") == 1, within=ttl * 4
        )
        await eventually(lambda: keepers["b"].owned().get("leader", []) != [], within=ttl * 4)
        stops["b"].set()  # stopped gracefully
        await tasks["b"]
        await keepers["b"].release_all(expire_heartbeat=True)
        assert await asyncio.to_thread(rows_of, migrated_database_url, "b") == ["replica/b"]
        await eventually(lambda: keepers["a"].gone_replicas == ["b", "c"], within=ttl)
    finally:
        for n, task in tasks.items():
            stops[n].set()
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


# ----------------------------------------------------------------- broker


class Member:
    """A paho client in the share group with a persistent session (a replica)."""

    def __init__(
        self, mqtt_url: str, client_id: str, *, clean: bool = False, manual_ack: bool = True
    ) -> None:
        host, _, port = mqtt_url.split("://", 1)[1].rpartition(":")
        self.got: list[paho.MQTTMessage] = []
        self.session_present: bool | None = None
        self.closed = threading.Event()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.c.manual_ack_set(manual_ack)
        self.c.on_message = lambda _c, _u, m: self.got.append(m)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *_a: self.closed.set()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 600
        self.c.connect(host, int(port), clean_start=clean, properties=props)
        self.c.loop_start()
        deadline = time.monotonic() + 5
        while self.session_present is None:
            assert time.monotonic() < deadline, "no CONNACK"
            time.sleep(0.02)

    def _on_connect(self, _c: object, _u: object, flags: paho.ConnectFlags, *_a: object) -> None:
        self.session_present = flags.session_present

    def subscribe(self, topics: list[str]) -> None:
        done = threading.Event()
        self.c.on_subscribe = lambda *_a: done.set()
        self.c.subscribe([(t, 1) for t in topics])
        assert done.wait(5)

    def ack_all(self) -> None:
        for m in self.got:
            self.c.ack(m.mid, m.qos)

    def close(self, *, end_session: bool = False) -> None:
        props = None
        if end_session:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        self.c.disconnect(properties=props)
        self.closed.wait(5)
        self.c.loop_stop()


def replica_settings(mqtt_url: str, prefix: str, group: str, client_id: str) -> Settings:
    return Settings(
        mqtt_url=mqtt_url,
        mqtt_topic_prefix=prefix,
        mqtt_share_group=group,
        mqtt_client_id=client_id,
        mqtt_session_expiry_s=600,
    )


@contextlib.contextmanager
def sessions(mqtt_url: str, *ids: str) -> Iterator[None]:
    try:
        yield
    finally:
        for cid in ids:
            forget_session(mqtt_url, cid)


def test_the_broker_deals_an_offline_member_its_share_until_it_unsubscribes(
    mqtt_url: str, topic_prefix: str
) -> None:
    """The broker behaviour this module exists for (docs/scaling.md)."""
    group, tag = f"t{secrets.token_hex(4)}", secrets.token_hex(3)
    a_id, b_id = f"a-{tag}", f"b-{tag}"

    def send(n: int, day: int) -> None:
        with AckedPublisher(mqtt_url) as pub:
            pub.publish_all(
                stream(topic_prefix, n, start=datetime(2026, 1, day, tzinfo=UTC)), rate=500
            )
            assert pub.wait_all_acked(10)
        time.sleep(0.5)

    with sessions(mqtt_url, a_id, b_id):
        topics = ingest_topics(topic_prefix, group)
        b = Member(mqtt_url, b_id, clean=True, manual_ack=False)
        b.subscribe(topics)
        a = Member(mqtt_url, a_id, clean=True, manual_ack=False)
        a.subscribe(topics)
        a.close()  # offline, its session kept
        send(20, 1)
        assert len(b.got) == 10  # round robin: the other half waits for `a`
        a = Member(mqtt_url, a_id, manual_ack=False)
        time.sleep(0.5)
        assert len(a.got) == 10  # delivered on reconnecting, without subscribing
        a.c.unsubscribe(topics)
        time.sleep(0.3)
        a.close()
        send(20, 2)
        assert len(b.got) == 30  # unsubscribed: the whole stream goes to `b`
        a = Member(mqtt_url, a_id, manual_ack=False)
        time.sleep(0.5)
        assert a.session_present is True
        assert a.got == []
        a.close(end_session=True)
        b.close(end_session=True)


async def test_an_adopted_session_is_ingested_acked_after_commit_and_ended(
    mqtt_url: str, topic_prefix: str
) -> None:
    group, tag = f"t{secrets.token_hex(4)}", secrets.token_hex(3)
    dead, alive, me = f"dead-{tag}", f"alive-{tag}", f"adopter-{tag}"
    with sessions(mqtt_url, dead, alive, me):
        topics = ingest_topics(topic_prefix, group)
        gone_one = Member(mqtt_url, dead, clean=True)
        gone_one.subscribe(topics)
        gone_one.c.loop_stop()  # killed: no DISCONNECT, nothing acknowledged
        gone_one.c.socket().close()  # type: ignore[union-attr]
        survivor = Member(mqtt_url, alive, clean=True, manual_ack=False)
        survivor.subscribe(topics)
        messages = stream(topic_prefix, 60)
        with AckedPublisher(mqtt_url) as pub:
            pub.publish_all(messages, rate=500)
            assert pub.wait_all_acked(10)
        await asyncio.sleep(0.5)
        queued = len(messages) - len(survivor.got)
        assert 0 < queued < len(messages)  # the broker dealt the dead member its share

        received: list[Inbound] = []
        commits: list[asyncio.Handle] = []

        def deliver(message: Inbound) -> None:  # "committed" 0.2 s later, then acked
            received.append(message)
            commits.append(asyncio.get_running_loop().call_later(0.2, message.ack))

        settings = replica_settings(mqtt_url, topic_prefix, group, me)
        mqtt = MqttSubscription(settings, Metrics())
        n = await mqtt.adopt(dead, deliver, asyncio.Event(), quiet_s=1.0)
        assert n == queued == len(received)
        # The survivor got the rest and nothing was given to both.
        mine = {(m.topic, bytes(m.payload)) for m in received}
        theirs = {(m.topic, bytes(m.payload)) for m in survivor.got}
        assert mine | theirs == set(messages)
        assert not mine & theirs
        # The session is gone; a new message goes to the survivor.
        back = Member(mqtt_url, dead)
        assert back.session_present is False
        back.close(end_session=True)
        before = len(survivor.got)
        with AckedPublisher(mqtt_url) as pub:
            pub.publish_all(stream(topic_prefix, 4), rate=100)
            assert pub.wait_all_acked(10)
        await asyncio.sleep(0.3)
        assert len(survivor.got) == before + 4
        survivor.close(end_session=True)


async def test_a_replica_that_comes_back_takes_its_session_from_the_adopter(
    mqtt_url: str, topic_prefix: str
) -> None:
    """The adoption stops without ending the session: what the adopter had not
    acknowledged goes to the returning replica."""
    group, tag = f"t{secrets.token_hex(4)}", secrets.token_hex(3)
    dead, me = f"dead-{tag}", f"adopter-{tag}"
    with sessions(mqtt_url, dead, me):
        topics = ingest_topics(topic_prefix, group)
        gone_one = Member(mqtt_url, dead, clean=True)
        gone_one.subscribe(topics)
        gone_one.close()  # the session stays, in the group
        messages = stream(topic_prefix, 20)
        with AckedPublisher(mqtt_url) as pub:
            pub.publish_all(messages, rate=500)
            assert pub.wait_all_acked(10)

        received: list[Inbound] = []  # never "committed": nothing acknowledged
        settings = replica_settings(mqtt_url, topic_prefix, group, me)
        mqtt = MqttSubscription(settings, Metrics())
        adopting = asyncio.create_task(
            mqtt.adopt(dead, received.append, asyncio.Event(), quiet_s=1.0)
        )
        await eventually(lambda: len(received) == len(messages), what="the queue delivered")
        back = await asyncio.to_thread(Member, mqtt_url, dead)  # the replica is back
        with pytest.raises(aiomqtt.MqttError):
            await asyncio.wait_for(adopting, 10)
        assert back.session_present is True
        deadline = time.monotonic() + 5
        while len(back.got) < len(messages):
            assert time.monotonic() < deadline, f"{len(back.got)} redelivered"
            await asyncio.sleep(0.05)
        assert {(m.topic, bytes(m.payload)) for m in back.got} == set(messages)
        assert all(m.dup for m in back.got)
        back.ack_all()
        back.close(end_session=True)


# ------------------------------------------------------------ real processes

STREAM = scaled(600)  # 12 s at RATE
ADOPTING = "adopting the MQTT session of replica"


@contextlib.contextmanager
def paced(
    mqtt_url: str, messages: list[tuple[str, bytes]]
) -> Iterator[tuple[AckedPublisher, threading.Thread]]:
    """A QoS 1 stream at RATE, sent from a thread."""
    with AckedPublisher(mqtt_url) as pub:
        sender = threading.Thread(target=pub.publish_all, args=(messages,), kwargs={"rate": RATE})
        sender.start()
        try:
            yield pub, sender
        finally:
            sender.join()


def all_stored(database_url: str, expected: int, within: float, *logs: str) -> float:
    """Seconds until `expected` readings are stored (fails after `within`)."""
    started = time.monotonic()
    while count(database_url, "SELECT count(*) FROM telemetry") < expected:
        assert time.monotonic() - started < within, "\n".join(logs)
        time.sleep(0.2)
    return time.monotonic() - started


def stored_readings(database_url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT device_id, metric, ts, value FROM telemetry").fetchall()


def adoptions_of(gws: list[GatewayProcess], gone_id: str) -> list[re.Match[str]]:
    """The adoption lines of `gone_id`'s session in the replicas' logs."""
    line = re.compile(
        rf"replica (\S+) adopted the MQTT session of replica {gone_id}:"
        r" (\d+) messages ingested in ([\d.]+)s"
    )
    return [m for gw in gws if (m := line.search(gw.tail(10**7)))]


def session_present(mqtt_url: str, client_id: str) -> bool:
    member = Member(mqtt_url, client_id)
    member.close(end_session=True)
    return bool(member.session_present)


@pytest.mark.slow
def test_a_replica_stopped_mid_stream_loses_nothing_and_all_stopped_queue_everything(
    fresh_database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    """A replica stopped for good (scale-down): its share goes on arriving in its
    session until another replica adopts it, at once since it expired its own
    heartbeat. Then all are stopped together (a full restart): nobody adopts, each
    session stays in the group and keeps its share until its replica is back."""
    asyncio.run(prepare_database(fresh_database_url))
    messages = stream(topic_prefix, STREAM)
    expected = STREAM * READINGS_PER_MESSAGE
    with replicas(
        fresh_database_url, mqtt_url, topic_prefix, tmp_path, BATCH_MAX_DELAY_S="0.5"
    ) as gws:
        leaving, survivors = gws[0], gws[1:]
        gone_id = leaving.env["POLEGW_MQTT_CLIENT_ID"]
        with paced(mqtt_url, messages) as (pub, sender):
            time.sleep(STREAM / RATE * 0.3)
            stopped_at = datetime.now()
            assert leaving.stop() == 0  # SIGTERM mid-stream; not started again
            sender.join()
            assert pub.wait_all_acked(30)
            assert len(pub.acked) == len(messages)
        all_stored(fresh_database_url, expected, 30, *(gw.tail() for gw in gws))
        time.sleep(1.0)  # a late second copy would add nothing, but show up in counts
        stored = stored_readings(fresh_database_url)
        assert len(stored) == expected
        assert set(stored) == readings_of(messages)
        done = adoptions_of(survivors, gone_id)
        assert len(done) == 1, [gw.tail() for gw in survivors]
        line = re.compile(rf"(\S+ \S+) INFO .*{ADOPTING} {gone_id}")
        began = [m for gw in survivors if (m := line.search(gw.tail(10**7)))]
        after = datetime.strptime(began[0].group(1), "%Y-%m-%d %H:%M:%S,%f") - stopped_at
        assert after.total_seconds() < float(TTL_S), after  # not after the TTL: at once
        assert not session_present(mqtt_url, gone_id)  # ended by the adopter

        # All stopped together, then a burst while none runs: nothing may be lost.
        leaving.start()
        leaving.wait_ready(60)
        wait_subscribed(leaving)
        stoppers = [threading.Thread(target=gw.stop) for gw in gws]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        burst = stream(topic_prefix, 90, start=datetime(2026, 11, 23, tzinfo=UTC))
        with paced(mqtt_url, burst) as (pub, _):
            pass
        assert pub.wait_all_acked(30)
        for gw in gws:
            gw.start()
        total = expected + len(burst) * READINGS_PER_MESSAGE
        all_stored(fresh_database_url, total, 60, *(gw.tail() for gw in gws))
        assert set(stored_readings(fresh_database_url)) == readings_of(messages + burst)
        for gw in gws:
            assert "Traceback" not in gw.tail(10**7)
        print(f"stop → adoption started {after.total_seconds():.1f}s; {done[0].group(0)}")


@pytest.mark.slow
def test_a_killed_replica_that_never_returns_has_its_session_adopted_once(
    fresh_database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    asyncio.run(prepare_database(fresh_database_url))
    messages = stream(topic_prefix, STREAM)
    expected = STREAM * READINGS_PER_MESSAGE
    with replicas(
        fresh_database_url, mqtt_url, topic_prefix, tmp_path, BATCH_MAX_DELAY_S="0.5"
    ) as gws:
        victim, survivors = gws[0], gws[1:]
        gone_id = victim.env["POLEGW_MQTT_CLIENT_ID"]
        with paced(mqtt_url, messages) as (pub, sender):
            time.sleep(STREAM / RATE * 0.3)
            victim.kill(signal.SIGKILL)  # never started again
            killed_at, killed_wall = time.monotonic(), datetime.now()
            assert count(fresh_database_url, "SELECT count(*) FROM telemetry") < expected
            sender.join()
            assert pub.wait_all_acked(30)
            assert len(pub.acked) == len(messages)
        all_stored(fresh_database_url, expected, 30, *(gw.tail() for gw in gws))
        took = time.monotonic() - killed_at
        time.sleep(1.0)
        stored = stored_readings(fresh_database_url)
        assert len(stored) == expected
        assert set(stored) == readings_of(messages)
        done = adoptions_of(survivors, gone_id)
        assert len(done) == 1, [gw.tail() for gw in survivors]
        adopted = int(done[0].group(2))
        assert adopted > 0
        ended = [
            gw.metric("polegw_mqtt_sessions_adopted_total", 'outcome="ended"') for gw in survivors
        ]
        assert sorted(ended) == [0.0, 1.0]
        assert sum(gw.metric("polegw_mqtt_adopted_messages_total") for gw in survivors) == adopted
        # Nobody adopts it again, nor counts it as alive.
        assert not count(
            fresh_database_url,
            "SELECT count(*) FROM gateway_leases WHERE name LIKE %s",
            f"%/{gone_id}",
        )
        with sessions(mqtt_url):  # the broker deleted its session
            member = Member(mqtt_url, gone_id)
            assert member.session_present is False
            member.close(end_session=True)
        for gw in survivors:
            assert "Traceback" not in gw.tail(10**7)
        # The adoption starts once the heartbeat has expired (TTL after its last
        # renewal) and a round of the survivors saw it (a third of the TTL each).
        started = [
            m
            for gw in survivors
            if (m := re.search(rf"(\S+ \S+) INFO .*{ADOPTING}", gw.tail(10**7)))
        ]
        after = datetime.strptime(started[0].group(1), "%Y-%m-%d %H:%M:%S,%f") - killed_wall
        ttl = float(TTL_S)
        assert ttl * 2 / 3 <= after.total_seconds() <= ttl * 3, after
        print(
            f"kill → adoption started {after.total_seconds():.1f}s (TTL {ttl:g}s);"
            f" {done[0].group(2)} messages in {done[0].group(3)}s;"
            f" every reading stored {took:.1f}s after the kill"
        )


@pytest.mark.slow
def test_a_killed_replica_that_returns_during_the_adoption_takes_its_session_back(
    fresh_database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Batches held open 8 s keep the adoption from ending (it waits for every
    acknowledgement) while the replica starts again: the broker hands the session
    to the replica, the adopter stops without ending it, nothing is lost."""
    asyncio.run(prepare_database(fresh_database_url))
    messages = stream(topic_prefix, STREAM // 2)
    expected = len(messages) * READINGS_PER_MESSAGE
    with replicas(
        fresh_database_url, mqtt_url, topic_prefix, tmp_path, BATCH_MAX_DELAY_S="8"
    ) as gws:
        victim, survivors = gws[0], gws[1:]
        gone_id = victim.env["POLEGW_MQTT_CLIENT_ID"]
        with paced(mqtt_url, messages) as (pub, sender):
            time.sleep(len(messages) / RATE * 0.3)
            victim.kill(signal.SIGKILL)
            deadline = time.monotonic() + 30
            adopting = f"{ADOPTING} {gone_id}"
            while not any(adopting in gw.tail(10**7) for gw in survivors):
                assert time.monotonic() < deadline, [gw.tail() for gw in survivors]
                time.sleep(0.1)
            victim.start()  # same client id, same machine: not refused by the adopter
            victim.wait_ready(60)
            wait_subscribed(victim)
            sender.join()
            assert pub.wait_all_acked(30)
        all_stored(fresh_database_url, expected, 40, *(gw.tail() for gw in gws))
        time.sleep(1.0)
        stored = stored_readings(fresh_database_url)
        assert len(stored) == expected
        assert set(stored) == readings_of(messages)
        outcomes = [
            (
                gw.metric("polegw_mqtt_sessions_adopted_total", 'outcome="ended"'),
                gw.metric("polegw_mqtt_sessions_adopted_total", 'outcome="interrupted"'),
            )
            for gw in survivors
        ]
        assert sorted(outcomes) == [(0.0, 0.0), (0.0, 1.0)], outcomes
        # The replica is back in the group with its heartbeat; nobody adopts it.
        assert count(
            fresh_database_url,
            "SELECT count(*) FROM gateway_leases WHERE name = %s AND expires_at > now()",
            f"replica/{gone_id}",
        )
        # What the adopter had not acknowledged went to the replica (counted at
        # commit, so after its batch's delay).
        deadline = time.monotonic() + 20
        while victim.metric("polegw_mqtt_messages_received_total", 'kind="telemetry"') == 0:
            assert time.monotonic() < deadline, victim.tail()
            time.sleep(0.5)
        for gw in gws:
            assert "Traceback" not in gw.tail(10**7)
