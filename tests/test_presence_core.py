"""An MQTT device's online state from its data and its pole's status (issue 16
item 15), in the pure core: gateway/core/presence.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.core.presence import DataPresence

T0 = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)
LIMIT = timedelta(seconds=30)


def limits(device_id: str) -> timedelta | None:
    return None if device_id == "sos" else LIMIT


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_data_makes_a_device_online_and_silence_takes_it_offline() -> None:
    p = DataPresence(limits, now=T0)
    assert p.data("env", s(0), s(0)) == ("env", True, s(0), None)
    assert p.data("env", s(10), s(10)) is None  # already online
    assert p.silent(s(39)) == []  # 29 s after the last data
    assert p.silent(s(41)) == [("env", False, s(40), "no data for 30 s")]
    assert p.silent(s(50)) == []  # said once
    assert p.data("env", s(60), s(60)) == ("env", True, s(60), None)


def test_old_data_never_makes_a_device_online() -> None:
    p = DataPresence(limits, now=T0)
    assert p.data("env", s(0), s(31)) is None  # a batch drained from the spool
    assert p.state("env") is None
    assert p.data("env", s(5), s(10)) is not None


def test_the_pole_status_is_the_faster_signal_and_newer_data_overrides_it() -> None:
    p = DataPresence(limits, now=T0)
    p.data("env", s(0), s(0))
    assert p.pole(["env", "lamp"], False, s(5), s(5)) == [
        ("env", False, s(5), "its pole reported offline"),
        ("lamp", False, s(5), "its pole reported offline"),
    ]
    assert p.data("env", s(4), s(6)) is None  # older than the status: no change
    assert p.data("env", s(7), s(7)) == ("env", True, s(7), None)
    assert p.pole(["env", "lamp"], True, s(8), s(8)) == [("lamp", True, s(8), None)]
    # online by status alone: silent for its limit, it goes offline
    assert ("lamp", False, s(38), "no data for 30 s") in p.silent(s(40))


def test_a_device_without_a_report_interval_is_not_taken_offline_by_silence() -> None:
    p = DataPresence(limits, now=T0)
    p.data("sos", s(0), s(0))
    assert p.silent(s(10**6)) == []
    assert p.state("sos") is True


def test_recorded_states_are_timed_from_the_start() -> None:
    p = DataPresence(limits, known={"env": True, "lamp": False}, now=s(100))
    assert p.silent(s(129)) == []
    assert p.silent(s(131)) == [("env", False, s(130), "no data for 30 s")]
    assert p.data("lamp", s(140), s(140)) == ("lamp", True, s(140), None)
