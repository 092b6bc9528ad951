"""The alarm rule engine (gateway/core/alarms.py) with simulated readings and a fake clock:
raise after the minimum duration, no flapping at the limit (hysteresis), auto-clear,
events, offline detection, overrides; and the profiles' alarms: sections."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from gateway.core.alarms import (
    AlarmEngine,
    Clear,
    OverrideProblem,
    Raise,
    Target,
    Transition,
    Update,
    apply_override,
    compile_rules,
)
from gateway.core.emergencies import next_state, plan_actions
from gateway.core.profiles import load_catalog, parse_profile
from gateway.core.readings import DeviceEvent, Quality, Reading
from gateway.errors import ProfileError

CATALOG = load_catalog()
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)

DEVICES = {
    "cab": Target("cab", "P1", "cabinet-monitor"),
    "tilt": Target("tilt", "P1", "pole-tilt"),
    "lamp": Target("lamp", "P1", "lamp-controller"),
    "lamp-polled": Target("lamp-polled", "P1", "lamp-controller", interval_s=10.0),
    "sos": Target("sos", "P1", "sos-button"),
    "env": Target("env", "P1", "env-station"),
}


def engine(overrides: dict[str, dict[str, object]] | None = None) -> AlarmEngine:
    rules, problems = compile_rules(CATALOG, overrides)
    assert not problems
    return AlarmEngine(rules)


def feed(
    e: AlarmEngine, device: str, metric: str, values: Sequence[float], *, step_s: float = 10
) -> list[list[Transition]]:
    """One reading per step (a batch each), readings stamped T0 + i*step; arrival the same."""
    out = []
    for i, v in enumerate(values):
        ts = T0 + timedelta(seconds=i * step_s)
        out.append(e.readings([Reading(ts, device, metric, float(v))], DEVICES.get, ts))
    return out


def kinds(steps: list[list[Transition]]) -> list[str]:
    """Per step: R (raise), C (clear), U (update), . (nothing), for the first transition."""
    letters = {Raise: "R", Clear: "C", Update: "U"}
    return ["".join(letters[type(t)] for t in ts) or "." for ts in steps]


# cabinet over_temperature: above 60, clear below 55, for 60 s; one reading every 10 s.
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # hot for 50 s only: never raised
        ([61, 62, 63, 64, 65, 66, 50], [".", ".", ".", ".", ".", ".", "."]),
        # hot from t=0 to t=60: raised at the reading 60 s after the first hot one
        ([61, 62, 63, 64, 65, 66, 67, 68], [".", ".", ".", ".", ".", ".", "R", "U"]),
        # a dip below the limit restarts the duration
        ([61, 61, 61, 59, 61, 61, 61, 61, 61, 61, 61], ["."] * 10 + ["R"]),
        # raised, then cooling: stays on until below the clear level, then clears
        ([61] * 7 + [58, 56, 55, 54.9], ["."] * 6 + ["R", "U", "U", "U", "C"]),
    ],
    ids=["short-spike", "raise-after-duration", "dip-restarts", "clear-below-hysteresis"],
)
def test_threshold_duration_and_clear(values: list[float], expected: list[str]) -> None:
    e = engine()
    steps = feed(e, "cab", "temp_c", values)
    assert kinds(steps) == expected
    raised = [t for ts in steps for t in ts if isinstance(t, Raise)]
    for r in raised:
        assert r.rule.key == "cabinet-monitor/over_temperature"
        assert r.rule.severity == "major"
        assert r.pole_id == "P1"
        assert "temp_c" in r.message


def test_no_flapping_at_the_limit() -> None:
    """A value hovering around the limit raises once and never clears or re-raises."""
    e = engine()
    hovering = [59.9, 60.1] * 3 + [60.1] * 7 + [59.8, 60.2] * 30
    steps = feed(e, "cab", "temp_c", hovering)
    letters = "".join(kinds(steps))
    assert letters.count("R") == 1
    assert letters.count("C") == 0
    # And with no hysteresis configured (clear at the limit) it would flap: the test can fail.
    flappy = engine({"cabinet-monitor/over_temperature": {"clear_below": 60, "for_s": 0}})
    letters = "".join(kinds(feed(flappy, "cab", "temp_c", [59.8, 60.2] * 5)))
    assert letters.count("R") == 5


def test_below_rule_and_duration() -> None:
    e = engine()
    # lamp voltage_low: below 187 for 300 s, clears above 195
    steps = feed(e, "lamp", "voltage_v", [186] * 31 + [190, 196], step_s=10)
    assert kinds(steps)[30] == "R"
    assert kinds(steps)[31] == "U"
    assert kinds(steps)[32] == "C"


def test_tilt_warn_alarm_pair() -> None:
    e = engine()
    # tilt 12° for 30 s -> warning; 16° for 10 s more -> the alarm too
    steps = feed(e, "tilt", "tilt_deg", [12, 12, 12, 12, 16, 16, 16, 7], step_s=10)
    raised = [(t.rule.name, t.rule.severity) for ts in steps for t in ts if isinstance(t, Raise)]
    assert raised == [("tilt_warning", "warning"), ("tilt_alarm", "critical")]
    cleared = {t.rule.name for t in steps[-1] if isinstance(t, Clear)}
    assert cleared == {"tilt_warning", "tilt_alarm"}


def test_bool_state_metric_and_event_are_one_alarm() -> None:
    e = engine()
    ev = DeviceEvent(T0, "P1", "cab", "water", {})
    out = e.events([ev], DEVICES.get, T0)
    assert [type(t) for t in out] == [Raise]
    assert out[0].rule.fault == "water"
    assert out[0].rule.emergency == "flooding"
    # the metric says wet too: the same alarm, updated
    out = e.readings(
        [Reading(T0 + timedelta(seconds=1), "cab", "water_detected", 1.0)], DEVICES.get, T0
    )
    assert [type(t) for t in out] == [Update]
    # dry again: cleared
    out = e.readings(
        [Reading(T0 + timedelta(seconds=2), "cab", "water_detected", 0.0)], DEVICES.get, T0
    )
    assert [type(t) for t in out] == [Clear]


def test_event_rule_repeat_counts_and_clear_event() -> None:
    e = engine()
    press = DeviceEvent(T0, "P1", "sos", "sos_pressed", {})
    assert [type(t) for t in e.events([press], DEVICES.get, T0)] == [Raise]
    again = DeviceEvent(T0 + timedelta(seconds=5), "P1", "sos", "sos_pressed", {})
    out = e.events([again, again], DEVICES.get, T0)
    assert len(out) == 1
    assert isinstance(out[0], Update)
    assert out[0].count == 2
    reset = DeviceEvent(T0 + timedelta(seconds=9), "P1", "sos", "sos_cleared", {})
    assert [type(t) for t in e.events([reset], DEVICES.get, T0)] == [Clear]
    # undeclared-by-rule events and unknown devices do nothing
    assert e.events([DeviceEvent(T0, "P1", "sos", "broadcast_started", {})], DEVICES.get, T0) == []
    assert e.events([DeviceEvent(T0, "P1", "ghost", "sos_pressed", {})], DEVICES.get, T0) == []


def test_event_rule_clears_after_quiet_time() -> None:
    e = engine()
    out = e.events([DeviceEvent(T0, "P1", "tilt", "impact", {})], DEVICES.get, T0)
    assert [type(t) for t in out] == [Raise]
    assert e.tick(T0 + timedelta(seconds=3599), []) == []
    out = e.tick(T0 + timedelta(seconds=3600), [])
    assert [type(t) for t in out] == [Clear]


def test_offline_detection_by_arrival_time() -> None:
    e = engine()
    targets = [DEVICES["lamp"], DEVICES["lamp-polled"], DEVICES["sos"]]
    assert e.tick(T0, targets) == []  # first tick starts the clocks
    # the polled lamp (10 s interval x 3) goes offline after 30 s; the MQTT one
    # (900 s x 3) not yet; the SOS button has no offline rule
    out = e.tick(T0 + timedelta(seconds=31), targets)
    assert [(type(t), t.device_id) for t in out] == [(Raise, "lamp-polled")]
    assert out[0].rule.fault == "offline"
    assert e.tick(T0 + timedelta(seconds=40), targets) == []  # raised once
    # a reading arrives: cleared, whatever the reading's own timestamp says
    old = Reading(T0 - timedelta(days=3), "lamp-polled", "energy_kwh", 5.0)
    out = e.readings([old], DEVICES.get, T0 + timedelta(seconds=41))
    assert [(type(t), t.device_id) for t in out] == [(Clear, "lamp-polled")]
    # the MQTT lamp after 2700 s of silence
    out = e.tick(T0 + timedelta(seconds=2701), targets)
    assert {(type(t), t.device_id) for t in out} == {(Raise, "lamp"), (Raise, "lamp-polled")}


def test_flagged_readings_and_replays_do_not_trigger() -> None:
    e = engine({"cabinet-monitor/over_temperature": {"for_s": 0}})
    bad_clock = Reading(T0, "cab", "temp_c", 90.0, int(Quality.CLOCK_AHEAD))
    assert e.readings([bad_clock], DEVICES.get, T0) == []
    e.readings([Reading(T0, "cab", "temp_c", 20.0)], DEVICES.get, T0)
    replay = Reading(T0 - timedelta(seconds=1), "cab", "temp_c", 90.0)
    assert e.readings([replay], DEVICES.get, T0) == []


def test_prime_lets_a_restarted_engine_clear() -> None:
    e = engine()
    e.prime([("cabinet-monitor/smoke", "cab")])
    out = e.readings([Reading(T0, "cab", "smoke_detected", 0.0)], DEVICES.get, T0)
    assert [type(t) for t in out] == [Clear]


def test_overrides_and_disabled_rules() -> None:
    e = engine({"env-station/pm25_high": {"above": 100, "for_s": 0}})
    # the profile's clear level (60) is kept: 86 and 61 do not clear it, 59 does
    assert kinds(feed(e, "env", "pm25_ugm3", [90, 101, 86, 61, 59])) == [".", "R", "U", "U", "C"]
    off = engine({"cabinet-monitor/smoke": {"enabled": False}})
    assert off.readings([Reading(T0, "cab", "smoke_detected", 1.0)], DEVICES.get, T0) == []
    # Disabling a rule clears its alarms that are on.
    on = engine()
    assert len(on.readings([Reading(T0, "cab", "smoke_detected", 1.0)], DEVICES.get, T0)) == 1
    rules, _ = compile_rules(CATALOG, {"cabinet-monitor/smoke": {"enabled": False}})
    out = on.configure(rules, T0)
    assert [(type(t), t.rule.key) for t in out] == [(Clear, "cabinet-monitor/smoke")]
    assert not on.is_active("cabinet-monitor/smoke", "cab")


@pytest.mark.parametrize(
    ("key", "override", "field"),
    [
        ("cabinet-monitor/over_temperature", {"clear_below": 70}, "clear_below"),
        ("cabinet-monitor/over_temperature", {"for_s": -1}, "for_s"),
        ("cabinet-monitor/over_temperature", {"severity": "huge"}, "severity"),
        ("cabinet-monitor/over_temperature", {"after_intervals": 2}, "after_intervals"),
        ("cabinet-monitor/offline", {"above": 3}, "above"),
        ("cabinet-monitor/offline", {"after_intervals": 0}, "after_intervals"),
        ("cabinet-monitor/over_temperature", {"metric": "x"}, "metric"),
    ],
)
def test_bad_overrides_name_the_field(key: str, override: dict[str, object], field: str) -> None:
    with pytest.raises(OverrideProblem) as caught:
        apply_override(CATALOG, key, override)
    assert caught.value.field == field


def test_override_keeps_the_fields_it_does_not_give() -> None:
    """Issue 16, item 9: `{"above": 71}` moved noise_high's clear level to 68 where the
    profile says 67; a field left out keeps the profile's value."""
    rule = apply_override(CATALOG, "env-station/noise_high", {"above": 71})
    assert (rule.limit, rule.clear, rule.for_s, rule.severity) == (71, 67, 300, "warning")
    rule = apply_override(CATALOG, "cabinet-monitor/over_temperature", {"above": 65})
    assert (rule.limit, rule.clear) == (65, 55)
    rule = apply_override(
        CATALOG, "cabinet-monitor/over_temperature", {"above": 40, "clear_below": 39}
    )
    assert (rule.limit, rule.clear) == (40, 39)
    # hysteresis given replaces the profile's clear level (not both)
    rule = apply_override(CATALOG, "cabinet-monitor/over_temperature", {"hysteresis": 2})
    assert (rule.limit, rule.clear) == (60, 58)
    # a new limit the profile's clear level no longer fits: said, naming the clear level
    with pytest.raises(OverrideProblem) as caught:
        apply_override(CATALOG, "cabinet-monitor/over_temperature", {"above": 40})
    assert caught.value.field == "clear_below"
    assert "(55) is above the new above (40)" in str(caught.value)
    with pytest.raises(KeyError):
        apply_override(CATALOG, "cabinet-monitor/nope", {})


PROFILE = """
profile: thing
metrics:
  t: {unit: C, min: 0, max: 100}
  wet: {kind: state, type: bool}
events:
  bang: {}
alarms:
  rules:
    {rule}
"""


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ("r: {metric: nope, above: 1}", "alarms.rules.r.metric"),
        ("r: {metric: wet, above: 1}", "alarms.rules.r.metric"),
        ("r: {raise_on: [boom]}", "alarms.rules.r.raise_on"),
        ("r: {metric: t, above: 5, clear_below: 9}", "alarms.rules.r"),
        ("r: {metric: t}", "alarms.rules.r"),
        ("r: {metric: t, above: 5, colour: red}", "alarms.rules.r.colour"),
    ],
)
def test_profile_alarm_section_is_checked(rule: str, field: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(PROFILE.replace("{rule}", rule), "thing.yaml")
    fields = [p.field for p in caught.value.problems]
    assert field in fields, fields
    assert all(p.file == "thing.yaml" for p in caught.value.problems)


def test_shipped_profiles_declare_the_expected_rules() -> None:
    rules, problems = compile_rules(CATALOG)
    assert not problems
    keys = {r.key for r in rules}
    for key in (
        "cabinet-monitor/door_open",
        "cabinet-monitor/water",
        "cabinet-monitor/smoke",
        "cabinet-monitor/leakage",
        "sos-button/sos",
        "pole-tilt/tilt_warning",
        "pole-tilt/tilt_alarm",
        "lamp-controller/lamp_failure",
        "lamp-controller/offline",
        "env-station/pm25_high",
    ):
        assert key in keys
    door = next(r for r in rules if r.key == "cabinet-monitor/door_open")
    assert door.unless_work_order


def test_protective_action_plan() -> None:
    devices = [
        ("P1-lamp", CATALOG["lamp-controller"].commands),
        ("P1-ports", CATALOG["port-meter-4"].commands),
        ("P1-cab", CATALOG["cabinet-monitor"].commands),
    ]
    plan = plan_actions(["cut_ports", "lights_full"], devices)
    assert [(p.device_id, p.command, p.args) for p in plan] == [
        ("P1-ports", "switch_port", {"port": 1, "on": False}),
        ("P1-ports", "switch_port", {"port": 2, "on": False}),
        ("P1-ports", "switch_port", {"port": 3, "on": False}),
        ("P1-ports", "switch_port", {"port": 4, "on": False}),
        ("P1-lamp", "switch_on", {}),
        ("P1-lamp", "set_dim", {"pct": 100}),
    ]
    assert next_state("open", "resolve") == "resolved"
    assert next_state("resolved", "close") == "closed"
    assert next_state("open", "close") is None
    assert next_state("closed", "resolve") is None
