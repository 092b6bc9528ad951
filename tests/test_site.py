"""The site file for `polegw site import`: what it accepts and how it reports mistakes."""

from __future__ import annotations

import pytest

from gateway.core.profiles import ProfileCatalog, load_catalog
from gateway.core.site import parse_site
from gateway.errors import SiteError

# The example site from the issue; line numbers below refer to this text.
EXAMPLE = """\
tenants:
  - id: tn-telecom
    name: City Telecom
poles:
  - id: P0001
    name: Binhe Road 1
    location: {lat: 31.2304, lon: 121.4737}
    height_m: 10
    road: Binhe Road
    devices:
      - id: lamp-1
        profile: lamp-controller
        transport: mqtt
      - id: env-1
        profile: env-station
      - id: meter-1
        profile: port-meter-4
        transport: modbus
        modbus: {host: 127.0.0.1, port: 15020, unit: 1}
"""

SECOND_POLE = """\
  - id: P0002
    devices:
      - id: lamp-2
        profile: lamp-controller
"""


@pytest.fixture(scope="module")
def catalog() -> ProfileCatalog:
    return load_catalog()


def site_error(text: str, catalog: ProfileCatalog) -> SiteError:
    with pytest.raises(SiteError) as info:
        parse_site(text, "site.yaml", catalog)
    return info.value


def test_example_site_parses(catalog: ProfileCatalog) -> None:
    site = parse_site(EXAMPLE, "site.yaml", catalog)

    assert [(t.id, t.name) for t in site.tenants] == [("tn-telecom", "City Telecom")]
    (pole,) = site.poles
    assert pole.id == "P0001"
    assert pole.location is not None
    assert (pole.location.lat, pole.location.lon) == (31.2304, 121.4737)
    assert [(d.id, d.profile, d.transport) for d in pole.devices] == [
        ("lamp-1", "lamp-controller", "mqtt"),
        ("env-1", "env-station", "mqtt"),
        ("meter-1", "port-meter-4", "modbus"),
    ]
    assert pole.devices[0].modbus is None
    endpoint = pole.devices[2].modbus
    assert endpoint is not None
    assert (endpoint.host, endpoint.port, endpoint.unit) == ("127.0.0.1", 15020, 1)
    assert endpoint.framer == "socket"  # the default: Modbus TCP


def test_several_poles_parse(catalog: ProfileCatalog) -> None:
    site = parse_site(EXAMPLE + SECOND_POLE, "site.yaml", catalog)
    assert [p.id for p in site.poles] == ["P0001", "P0002"]
    assert site.poles[1].location is None


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "tenants: []\npoles: []\n"])
def test_a_site_with_nothing_in_it_is_refused(catalog: ProfileCatalog, text: str) -> None:
    """An empty file is a mistake (the wrong file, a failed copy), not "0 created"."""
    error = site_error(text, catalog)
    assert "no tenants and no poles" in str(error)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "    height_m: 10",
            "    heigth_m: 10",
            "unknown field 'heigth_m' (did you mean 'height_m'?)",
        ),
        (
            "unit: 1}",
            "unti: 1}",
            "unknown field 'unti' (did you mean 'unit'?)",
        ),
        ("tenants:", "tenant:", "unknown field 'tenant' (did you mean 'tenants'?)"),
        ("    road:", "    zzz:", "unknown field 'zzz' (allowed: "),
    ],
    ids=["pole", "modbus", "top", "nothing-close"],
)
def test_a_misspelt_field_names_the_field_meant(
    catalog: ProfileCatalog, old: str, new: str, message: str
) -> None:
    error = site_error(EXAMPLE.replace(old, new, 1), catalog)
    assert message in str(error), str(error)


BROKEN = [
    # (id, old text, new text, line, field, fragment of the message)
    (
        "duplicate-device-across-poles",
        "      - id: lamp-2",
        "      - id: lamp-1",
        22,
        "poles[1].devices[0].id",
        "duplicate device id 'lamp-1' (first at poles[0].devices[0].id)",
    ),
    (
        "duplicate-device-on-one-pole",
        "      - id: env-1",
        "      - id: lamp-1",
        14,
        "poles[0].devices[1].id",
        "duplicate device id 'lamp-1'",
    ),
    ("duplicate-pole", "  - id: P0002", "  - id: P0001", 20, "poles[1].id", "duplicate pole"),
    (
        "unknown-profile",
        "profile: env-station",
        "profile: env-sensor",
        15,
        "poles[0].devices[1].profile",
        "unknown profile 'env-sensor' (known: cabinet-monitor, env-station,",
    ),
    (
        "modbus-without-section",
        "        modbus: {host: 127.0.0.1, port: 15020, unit: 1}\n",
        "",
        16,
        "poles[0].devices[2]",
        "transport: modbus needs a modbus:",
    ),
    (
        "modbus-section-on-mqtt",
        "        transport: mqtt\n",
        "        transport: mqtt\n        modbus: {host: 127.0.0.1}\n",
        11,
        "poles[0].devices[0]",
        "only valid with transport: modbus",
    ),
    (
        "unknown-transport",
        "transport: mqtt",
        "transport: lora",
        13,
        "poles[0].devices[0].transport",
        "'mqtt' or 'modbus'",
    ),
    ("bad-lat", "lat: 31.2304", "lat: 91.5", 7, "poles[0].location.lat", "less than or equal"),
    ("lat-not-number", "lat: 31.2304", "lat: north", 7, "poles[0].location.lat", "number"),
    ("unknown-pole-key", "    road:", "    raod:", 9, "poles[0].raod", "did you mean 'road'?"),
    ("unknown-top-key", "tenants:", "tenant:", 1, "tenant", "unknown field 'tenant'"),
    (
        "bad-modbus-port",
        "port: 15020",
        "port: 70000",
        19,
        "poles[0].devices[2].modbus.port",
        "65535",
    ),
    ("id-with-slash", "id: P0001", "id: P/0001", 5, "poles[0].id", "pattern"),
    ("tenant-without-name", "    name: City Telecom\n", "", 2, "tenants[0].name", "Field required"),
]


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "fragment"),
    [case[1:] for case in BROKEN],
    ids=[case[0] for case in BROKEN],
)
def test_broken_site_names_file_line_and_field(
    catalog: ProfileCatalog, old: str, new: str, line: int, field: str, fragment: str
) -> None:
    original = EXAMPLE + SECOND_POLE
    text = original.replace(old, new, 1)
    assert text != original

    error = site_error(text, catalog)

    assert len(error.problems) == 1, str(error)
    (problem,) = error.problems
    assert (problem.file, problem.line, problem.field) == ("site.yaml", line, field)
    assert str(error).startswith(f"site.yaml:{line}: {field}: ")
    assert fragment in str(error)


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        ("    road: Binhe Road", "\troad: Binhe Road", 9),
        ("{host: 127.0.0.1, port: 15020, unit: 1}", "{host: 127.0.0.1, port: 15020", 20),
        ("  - id: P0001", "  - id: P0001\n   name: x", 6),
    ],
    ids=["tab", "unclosed-flow", "bad-indent"],
)
def test_yaml_syntax_error_names_file_and_line(
    catalog: ProfileCatalog, old: str, new: str, line: int
) -> None:
    error = site_error(EXAMPLE.replace(old, new, 1), catalog)
    assert len(error.problems) == 1
    assert str(error).startswith(f"site.yaml:{line}: invalid YAML: ")


def test_top_level_must_be_a_mapping(catalog: ProfileCatalog) -> None:
    error = site_error("- P0001\n", catalog)
    assert str(error).startswith("site.yaml:1: ")


def test_all_problems_are_reported_together(catalog: ProfileCatalog) -> None:
    text = (
        (EXAMPLE + SECOND_POLE)
        .replace("lat: 31.2304", "lat: 91.5")
        .replace("    road:", "    raod:")
        .replace("        modbus: {host: 127.0.0.1, port: 15020, unit: 1}\n", "")
        .replace("profile: env-station", "profile: env-sensor")
        .replace("      - id: lamp-2", "      - id: lamp-1")
    )

    error = site_error(text, catalog)

    found = [(p.line, p.field) for p in error.problems]
    assert sorted(found) == [
        (7, "poles[0].location.lat"),
        (9, "poles[0].raod"),
        (15, "poles[0].devices[1].profile"),
        (16, "poles[0].devices[2]"),
        (21, "poles[1].devices[0].id"),
    ]
    # One line per problem, in the order they appear in the file.
    lines = str(error).splitlines()
    assert len(lines) == 5
    assert [int(line.split(":")[1]) for line in lines] == [7, 9, 15, 16, 21]
    assert all(line.startswith("site.yaml:") for line in lines)


def test_the_error_names_the_file_it_was_given(catalog: ProfileCatalog) -> None:
    text = EXAMPLE.replace("lat: 31.2304", "lat: -91")
    with pytest.raises(SiteError) as info:
        parse_site(text, "sites/north.yaml", catalog)
    assert str(info.value).startswith("sites/north.yaml:7: poles[0].location.lat: ")


def test_bus_conflicts_are_refused_with_their_lines() -> None:
    def meter(ident: str, host: str, unit: int, framer: str) -> str:
        return (
            f"      - id: {ident}\n        profile: port-meter-4\n        transport: modbus\n"
            f"        modbus: {{host: {host}, port: 4001, unit: {unit}, framer: {framer}}}\n"
        )

    text = "poles:\n  - id: P1\n    devices:\n" + "".join(
        (
            meter("m1", "10.0.0.5", 1, "rtu"),
            meter("m2", "10.0.0.5", 1, "rtu"),  # same unit on the same line
            meter("m3", "10.0.0.5", 2, "socket"),  # another framer on the same endpoint
            meter("m4", "10.0.0.6", 0, "rtu"),  # RTU broadcast address
        )
    )
    with pytest.raises(SiteError) as refused:
        parse_site(text, "bus.yaml", load_catalog())
    message = str(refused.value)
    assert "bus.yaml:11: poles[0].devices[1].modbus.unit: unit 1 on 10.0.0.5:4001 is" in message
    assert "bus.yaml:15: poles[0].devices[2].modbus.framer: 10.0.0.5:4001 is spoken" in message
    assert "bus.yaml:19: poles[0].devices[3].modbus.unit: unit 0 is broadcast" in message
