"""Device profiles: the shipped files in devices/ and the errors a broken one gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.profiles import (
    MetricKind,
    ProfileCatalog,
    builtin_profile_files,
    load_catalog,
    parse_profile,
)
from gateway.errors import ProfileError, SourceProblem

# The names simulators, rules and billing rely on: changing one is a contract change.
PORT_METRICS = {
    f"port{n}_{m}"
    for n in range(1, 5)
    for m in ("voltage_v", "current_a", "power_w", "power_factor", "energy_kwh", "switch_on")
}
EXPECTED: dict[str, tuple[set[str], dict[str, str]]] = {
    "lamp-controller": (
        {
            "lamp_on",
            "dim_pct",
            "voltage_v",
            "current_a",
            "power_w",
            "power_factor",
            "energy_kwh",
            "burning_hours",
        },
        {"lamp_failure": "major", "dimming_failure": "minor", "supply_loss": "major"},
    ),
    "port-meter-4": (
        PORT_METRICS,
        {
            "leakage": "critical",
            "over_current": "major",
            "supply_loss": "major",
            "counter_reset": "minor",
        },
    ),
    "env-station": (
        {
            "pm25_ugm3",
            "pm10_ugm3",
            "temp_c",
            "humidity_pct",
            "noise_dba",
            "wind_speed_ms",
            "wind_dir_deg",
            "rain_mmh",
            "illuminance_lux",
        },
        {},
    ),
    "cabinet-monitor": (
        {
            "door_open",
            "temp_c",
            "humidity_pct",
            "water_detected",
            "smoke_detected",
            "leakage_ma",
            "ups_state",
            "ups_battery_pct",
        },
        {
            "door_open": "info",
            "door_close": "info",
            "water": "critical",
            "smoke": "critical",
            "leakage": "critical",
            "over_temperature": "major",
        },
    ),
    "pole-tilt": (
        {"tilt_x_deg", "tilt_y_deg", "tilt_deg", "vibration_g"},
        {"impact": "major"},
    ),
    "sos-button": (
        set(),
        {
            "sos_pressed": "critical",
            "sos_cleared": "info",
            "broadcast_started": "info",
            "broadcast_stopped": "info",
        },
    ),
}

BOOL_METRICS = {
    "lamp_on",
    "door_open",
    "water_detected",
    "smoke_detected",
    *(f"port{n}_switch_on" for n in range(1, 5)),
}
COUNTERS = {"energy_kwh", "burning_hours", *(f"port{n}_energy_kwh" for n in range(1, 5))}

# Validity ranges (not alarm thresholds) the simulators stay inside.
RANGES = {
    ("lamp-controller", "dim_pct"): (0, 100),
    ("lamp-controller", "voltage_v"): (0, 300),
    ("lamp-controller", "current_a"): (0, 20),
    ("lamp-controller", "power_w"): (0, 1000),
    ("lamp-controller", "power_factor"): (0, 1),
    ("lamp-controller", "energy_kwh"): (0, 1e9),
    ("lamp-controller", "burning_hours"): (0, 1e6),
    ("port-meter-4", "port3_current_a"): (0, 63),
    ("port-meter-4", "port4_power_w"): (0, 15000),
    ("env-station", "temp_c"): (-50, 70),
    ("env-station", "noise_dba"): (20, 140),
    ("env-station", "illuminance_lux"): (0, 200000),
    ("cabinet-monitor", "temp_c"): (-50, 100),
    ("cabinet-monitor", "leakage_ma"): (0, 3000),
    ("cabinet-monitor", "ups_state"): (0, 3),
    ("pole-tilt", "tilt_x_deg"): (-90, 90),
    ("pole-tilt", "tilt_deg"): (0, 90),
    ("pole-tilt", "vibration_g"): (0, 16),
}


@pytest.fixture(scope="module")
def catalog() -> ProfileCatalog:
    return load_catalog()


def test_catalog_holds_the_six_shipped_profiles(catalog: ProfileCatalog) -> None:
    assert set(catalog) == set(EXPECTED)
    assert len(catalog) == 6


@pytest.mark.parametrize("name", [name for name, _ in builtin_profile_files()])
def test_every_shipped_file_parses_on_its_own(name: str) -> None:
    text = dict(builtin_profile_files())[name]
    profile = parse_profile(text, f"devices/{name}")
    assert profile.profile == Path(name).stem
    assert profile.description
    assert profile.category


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profile_declares_exactly_the_agreed_names(catalog: ProfileCatalog, name: str) -> None:
    metrics, events = EXPECTED[name]
    profile = catalog[name]
    assert set(profile.metrics) == metrics
    assert {e: t.severity for e, t in profile.events.items()} == events


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_metric_is_described_and_bounded(catalog: ProfileCatalog, name: str) -> None:
    for metric_name, metric in catalog[name].metrics.items():
        assert metric.description, metric_name
        if metric_name in BOOL_METRICS:
            assert (metric.type, metric.kind) == ("bool", MetricKind.STATE), metric_name
            continue
        assert metric.type == "number", metric_name
        assert metric.min is not None, metric_name
        assert metric.max is not None, metric_name
        if metric_name.endswith("_kwh") or metric_name == "burning_hours":
            assert metric.kind is MetricKind.COUNTER, metric_name
            assert metric.min == 0, metric_name
        if metric.kind is MetricKind.GAUGE and "power_factor" not in metric_name:
            assert metric.unit, metric_name
    for event_name, event in catalog[name].events.items():
        assert event.description, event_name


@pytest.mark.parametrize(("key", "bounds"), sorted(RANGES.items()))
def test_validity_ranges(
    catalog: ProfileCatalog, key: tuple[str, str], bounds: tuple[float, float]
) -> None:
    metric = catalog[key[0]].metrics[key[1]]
    assert (metric.min, metric.max) == bounds


def test_ups_state_is_an_enumerated_state_explained_to_the_operator(
    catalog: ProfileCatalog,
) -> None:
    ups = catalog["cabinet-monitor"].metrics["ups_state"]
    assert ups.kind is MetricKind.STATE
    assert ups.type == "number"
    for word in ("mains", "battery", "low", "fault"):
        assert word in ups.description.lower()
        assert word in catalog["cabinet-monitor"].description.lower()


# A valid profile whose line numbers the broken variants below rely on.
BASE = """\
profile: lamp
description: Test lamp
metrics:
  lamp_on: {kind: state, type: bool}
  power_w:
    unit: W
    kind: gauge
    min: 0
    max: 1000
events:
  lamp_failure:
    severity: major
"""


def test_base_profile_is_valid() -> None:
    profile = parse_profile(BASE, "lamp.yaml")
    assert profile.metrics["power_w"].max == 1000
    assert profile.metrics["lamp_on"].check(True) == 1.0


BROKEN = [
    # (id, old text, new text, line, field, fragment of the message)
    ("bad-kind", "    kind: gauge", "    kind: gage", 7, "metrics.power_w.kind", "'gauge'"),
    ("min-above-max", "    min: 0", "    min: 2000", 5, "metrics.power_w", "min (2000"),
    (
        "unknown-metric-key",
        "    unit: W",
        "    units: W",
        6,
        "metrics.power_w.units",
        "did you mean 'unit'?",
    ),
    (
        "unknown-top-key",
        "description:",
        "colour: red\ndescription:",
        2,
        "colour",
        "unknown field 'colour' (allowed: ",
    ),
    (
        "bool-not-state",
        "{kind: state, type: bool}",
        "{kind: gauge, type: bool}",
        4,
        "metrics.lamp_on",
        "kind: state",
    ),
    (
        "bool-default-kind",
        "{kind: state, type: bool}",
        "{type: bool}",
        4,
        "metrics.lamp_on",
        "kind: state",
    ),
    ("bad-type", "{kind: state, type: bool}", "{type: boolean}", 4, "metrics.lamp_on.type", ""),
    ("min-not-number", "    min: 0", "    min: low", 8, "metrics.power_w.min", "number"),
    ("bad-severity", "severity: major", "severity: fatal", 12, "events.lamp_failure.severity", ""),
    ("bad-metric-name", "  power_w:", "  Power-W:", 5, "metrics.Power-W", "pattern"),
    ("name-not-file", "profile: lamp", "profile: lamps", 1, "profile", "'lamp'"),
    ("bad-profile-name", "profile: lamp", "profile: Lamp_1", 1, "profile", "pattern"),
    ("metric-not-mapping", "{kind: state, type: bool}", "on", 4, "metrics.lamp_on", ""),
]


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "fragment"),
    [case[1:] for case in BROKEN],
    ids=[case[0] for case in BROKEN],
)
def test_broken_profile_names_file_line_and_field(
    old: str, new: str, line: int, field: str, fragment: str
) -> None:
    text = BASE.replace(old, new, 1)
    assert text != BASE
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "lamp.yaml")
    problem = info.value.problems[0]
    assert (problem.file, problem.line) == ("lamp.yaml", line)
    # pydantic marks a bad mapping key with a trailing "[key]" part.
    assert problem.field.removesuffix(".[key]") == field
    assert str(info.value).startswith(f"lamp.yaml:{line}: {problem.field}: ")
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        ("    kind: gauge", "\tkind: gauge", 7),
        ("    kind: gauge", "    kind: gauge: x", 7),
        ("  power_w:", "  power_w: [", 7),
    ],
    ids=["tab", "nested-colon", "unclosed-flow"],
)
def test_yaml_syntax_error_names_file_and_line(old: str, new: str, line: int) -> None:
    with pytest.raises(ProfileError) as info:
        parse_profile(BASE.replace(old, new, 1), "lamp.yaml")
    assert str(info.value).startswith(f"lamp.yaml:{line}: invalid YAML: ")
    assert len(info.value.problems) == 1


def test_several_problems_in_one_file_are_reported_together() -> None:
    text = BASE.replace("kind: gauge", "kind: gage").replace("unit: W", "units: W")
    text = text.replace("severity: major", "severity: fatal")
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "lamp.yaml")
    fields = {p.field for p in info.value.problems}
    assert fields == {
        "metrics.power_w.kind",
        "metrics.power_w.units",
        "events.lamp_failure.severity",
    }
    assert len(str(info.value).splitlines()) == 3


@pytest.mark.parametrize(
    "text",
    ["", "profile: lamp\n", "profile: lamp\nmetrics: {}\nevents: {}\n", "- lamp\n"],
    ids=["empty-file", "nothing-declared", "both-empty", "not-a-mapping"],
)
def test_profile_without_content_is_refused(text: str) -> None:
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "lamp.yaml")
    assert str(info.value).startswith("lamp.yaml")


def test_profile_name_defaults_to_the_file_name() -> None:
    text = BASE.replace("profile: lamp\n", "")
    assert parse_profile(text, "somewhere/lamp.yaml").profile == "lamp"


def test_merge_keys_are_understood_and_errors_keep_their_lines() -> None:
    # Long profiles (several identical ports) may share settings with anchors.
    text = """\
profile: meter
metrics:
  port1_voltage_v: &volts
    unit: V
    min: 0
    max: 300
    description: Port 1 voltage
  port2_voltage_v:
    <<: *volts
    description: Port 2 voltage
"""
    profile = parse_profile(text, "meter.yaml")
    assert profile.metrics["port2_voltage_v"].max == 300
    assert profile.metrics["port2_voltage_v"].description == "Port 2 voltage"
    assert profile.metrics["port1_voltage_v"].description == "Port 1 voltage"

    broken = text.replace("    description: Port 2", "    kind: gage\n    description: Port 2")
    with pytest.raises(ProfileError) as info:
        parse_profile(broken, "meter.yaml")
    assert str(info.value).startswith("meter.yaml:10: metrics.port2_voltage_v.kind: ")


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_extra_dir_adds_and_overrides_profiles(tmp_path: Path) -> None:
    _write(tmp_path, "lamp.yaml", BASE)
    override = BASE.replace("profile: lamp", "profile: lamp-controller")
    _write(tmp_path, "lamp-controller.yaml", override.replace("max: 1000", "max: 2000"))
    _write(tmp_path, "notes.txt", "not a profile")

    catalog = load_catalog(tmp_path)

    assert set(catalog) == {*EXPECTED, "lamp"}
    assert catalog["lamp-controller"].metrics["power_w"].max == 2000
    assert "dim_pct" not in catalog["lamp-controller"].metrics  # replaced whole, not merged
    assert catalog["env-station"] == load_catalog()["env-station"]


def test_yml_suffix_is_accepted(tmp_path: Path) -> None:
    _write(tmp_path, "lamp.yml", BASE)
    assert "lamp" in load_catalog(tmp_path)


def test_problems_from_several_files_are_reported_together(tmp_path: Path) -> None:
    bad_kind = _write(tmp_path, "a-lamp.yaml", BASE.replace("profile: lamp", "profile: a-lamp"))
    bad_kind.write_text(bad_kind.read_text().replace("kind: gauge", "kind: gage"))
    bad_yaml = _write(tmp_path, "b-lamp.yaml", "profile: b-lamp\nmetrics: {power_w: \n")
    wrong_name = _write(tmp_path, "c-lamp.yaml", BASE)
    _write(tmp_path, "d-lamp.yaml", BASE.replace("profile: lamp", "profile: d-lamp"))

    with pytest.raises(ProfileError) as info:
        load_catalog(tmp_path)

    problems = info.value.problems
    assert [p.file for p in problems] == [str(bad_kind), str(bad_yaml), str(wrong_name)]
    assert all(isinstance(p, SourceProblem) for p in problems)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{bad_kind}:7: metrics.power_w.kind: " + problems[0].message
    assert lines[1].startswith(f"{bad_yaml}:3: invalid YAML: ")
    assert lines[2] == f"{wrong_name}:1: profile: must match the file name ('c-lamp')"


def test_a_broken_override_of_a_shipped_profile_is_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, "pole-tilt.yaml", "profile: pole-tilt\nmetrics:\n  tilt_deg: 5\n")
    with pytest.raises(ProfileError) as info:
        load_catalog(tmp_path)
    assert str(info.value).startswith(f"{path}:3: metrics.tilt_deg: ")
