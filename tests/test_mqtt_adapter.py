"""The MQTT adapter's decisions, without a broker: which acks go out, what a refused
subscription is, which topics are command replies, how back-off grows."""

from __future__ import annotations

import random

import pytest
from paho.mqtt.reasoncodes import ReasonCode

from gateway.adapters.mqtt import (
    MqttSubscription,
    SubscriptionRefused,
    _require_qos1,
    ingest_topics,
    is_command_reply,
)
from gateway.backoff import Backoff
from gateway.config import Settings
from gateway.metrics import Metrics


class FakePaho:
    def __init__(self) -> None:
        self.acked: list[tuple[int, int]] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append((mid, qos))


def test_acks_only_on_the_connection_the_message_came_from() -> None:
    sub = MqttSubscription(Settings(), Metrics())
    paho = FakePaho()
    sub._generation, sub._connected = 1, True
    first = sub._ack_for(paho, 1, mid=7, qos=1)  # type: ignore[arg-type]
    assert first() is True
    stale = sub._ack_for(paho, 1, mid=8, qos=1)  # type: ignore[arg-type]
    sub._generation = 2  # reconnected: mid 8 belongs to the old connection
    assert stale() is False
    sub._connected = False
    assert sub._ack_for(paho, 2, mid=9, qos=1)() is False  # type: ignore[arg-type]
    assert sub._ack_for(paho, 2, mid=10, qos=0)() is False  # type: ignore[arg-type]
    assert paho.acked == [(7, 1)]


def test_subscription_must_be_granted_qos1_on_every_topic() -> None:
    topics = ingest_topics("poles")
    _require_qos1((1,) * len(topics), topics)  # MQTT 3.1.1 answers granted QoS values
    granted = [ReasonCode(9, identifier=1) for _ in topics]  # 9 = SUBACK packet type
    _require_qos1(granted, topics)  # MQTT 5 answers reason codes
    with pytest.raises(SubscriptionRefused, match="poles/\\+/events"):
        _require_qos1((1, 1, 0, 1, 1), topics)  # max_qos 0 on one topic
    with pytest.raises(SubscriptionRefused):
        _require_qos1([ReasonCode(9, identifier=0x87) for _ in topics], topics)  # not authorised
    with pytest.raises(SubscriptionRefused):
        _require_qos1((1,), topics)


def test_command_replies_are_told_from_ingest_topics() -> None:
    assert is_command_reply("poles/P1/commands/P1-lamp/reply", "poles")
    assert is_command_reply("a/b/P1/commands/L/reply", "a/b")
    assert not is_command_reply("poles/P1/commands/P1-lamp", "poles")
    assert not is_command_reply("poles/P1/telemetry", "poles")
    assert not is_command_reply("poles/P1/devices/x/reply", "poles")


def test_backoff_grows_to_its_cap_with_jitter_and_resets() -> None:
    b = Backoff(first=0.5, cap=4.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    for delay, top in zip(delays, (0.5, 1, 2, 4, 4, 4, 4, 4), strict=True):
        assert top / 2 <= delay <= top
    assert b.failures == 8
    b.reset()
    assert b.failures == 0
    assert b.next_delay() <= 0.5
    with pytest.raises(ValueError, match="first"):
        Backoff(first=0, cap=1)
