"""The mounting rules without a database: capacity checks and state machines."""

from __future__ import annotations

import pytest

from gateway.core import mounting as mo
from gateway.core.auth import Role

POLE = mo.PoleBudget(max_load_kg=100, max_wind_area_m2=2.0, power_budget_w=1000)
SLOT = mo.SlotLimits("S1", max_load_kg=30, max_wind_area_m2=0.5, max_power_w=600, voltage_v=220)
PORT = mo.PortLimits("PT1", rated_w=500)
CAB = mo.CompartmentLimits("C1", units=4)
OK_REQ = mo.Request(load_kg=20, wind_area_m2=0.3, power_w=400, voltage_v=220, cabinet_units=2)


def failed(checks: list[mo.Check]) -> set[str]:
    return {c.name for c in checks if not c.ok}


@pytest.mark.parametrize(
    ("request_", "reservations", "slot", "port", "cab", "want_failed"),
    [
        (OK_REQ, [], SLOT, PORT, CAB, set()),
        (OK_REQ, [mo.Reservation(slot_id="S1")], SLOT, PORT, CAB, {"slot_free"}),
        (OK_REQ, [mo.Reservation(port_id="PT1")], SLOT, PORT, CAB, {"port_free"}),
        (mo.Request(31, 0.3, 400, voltage_v=220), [], SLOT, PORT, CAB, {"slot_load"}),
        (mo.Request(20, 0.6, 400), [], SLOT, PORT, CAB, {"slot_wind_area"}),
        (mo.Request(20, 0.3, 550), [], SLOT, PORT, CAB, {"port_power"}),
        (mo.Request(20, 0.3, 650), [], SLOT, PORT, CAB, {"slot_power", "port_power"}),
        (mo.Request(20, 0.3, 100, supply="DC"), [], SLOT, PORT, CAB, {"slot_supply", "port_power"}),
        (mo.Request(20, 0.3, 100, voltage_v=48), [], SLOT, PORT, CAB, {"slot_supply"}),
        # the pole's remaining budget counts every live reservation
        (OK_REQ, [mo.Reservation(load_kg=85)], SLOT, PORT, CAB, {"pole_load"}),
        (OK_REQ, [mo.Reservation(wind_area_m2=1.8)], SLOT, PORT, CAB, {"pole_wind_area"}),
        (OK_REQ, [mo.Reservation(power_w=700)], SLOT, PORT, CAB, {"pole_power"}),
        (OK_REQ, [mo.Reservation(power_w=600)], SLOT, PORT, CAB, set()),  # exactly full is fine
        (
            OK_REQ,
            [mo.Reservation(compartment_id="C1", cabinet_units=3)],
            SLOT,
            PORT,
            CAB,
            {"cabinet_space"},
        ),
        (OK_REQ, [mo.Reservation(compartment_id="C2", cabinet_units=4)], SLOT, PORT, CAB, set()),
        (OK_REQ, [], None, PORT, CAB, {"slot_free"}),
        (OK_REQ, [], SLOT, None, CAB, {"port_free"}),
        (OK_REQ, [], SLOT, PORT, None, {"cabinet_space"}),
        (mo.Request(20, 0.3, 0), [], SLOT, None, None, set()),  # no power, no cabinet: no port
    ],
)
def test_capacity_checks(
    request_: mo.Request,
    reservations: list[mo.Reservation],
    slot: mo.SlotLimits | None,
    port: mo.PortLimits | None,
    cab: mo.CompartmentLimits | None,
    want_failed: set[str],
) -> None:
    checks = mo.check_capacity(POLE, request_, reservations, slot=slot, port=port, compartment=cab)
    assert failed(checks) == want_failed
    for c in checks:
        assert c.name in mo.CHECK_NAMES
        assert c.message


def test_a_failed_limit_says_needed_and_available() -> None:
    checks = mo.check_capacity(
        POLE, OK_REQ, [mo.Reservation(power_w=700)], slot=SLOT, port=PORT, compartment=CAB
    )
    power = next(c for c in checks if c.name == "pole_power")
    assert (power.ok, power.needed, power.available) == (False, 400, 300)
    assert "only 300 W available" in power.message


def test_undeclared_pole_budget_is_not_checked() -> None:
    big = mo.Request(1000, 50, 100)
    checks = mo.check_capacity(mo.PoleBudget(), big, [], slot=None)
    assert {c.name for c in checks if c.name.startswith("pole_") and c.ok} == {
        "pole_load",
        "pole_wind_area",
        "pole_power",
    }


def test_request_totals_multiply_quantity() -> None:
    devices: list[dict[str, object]] = [
        {"quantity": 2, "weight_kg": 5, "wind_area_m2": 0.1, "power_w": 50},
        {"weight_kg": 3, "power_w": 10},
    ]
    assert mo.request_totals(devices) == pytest.approx((13, 0.2, 110))


def test_overrides_waive_all_but_slot_and_port() -> None:
    checks = [
        mo.Check("pole_power", False, 1, 0, ""),
        mo.Check("slot_free", False, 1, 0, ""),
        mo.Check("slot_load", True, 1, 2, ""),
    ]
    assert [c.name for c in mo.blocking(checks)] == ["pole_power", "slot_free"]
    assert [c.name for c in mo.blocking(checks, ["pole_power", "slot_free"])] == ["slot_free"]


A, L = mo.ApplicationState, mo.LeaseState
T, OP, MT, AD = Role.TENANT, Role.OPERATOR, Role.MAINTAINER, Role.ADMIN


@pytest.mark.parametrize(
    ("current", "to", "role", "outcome"),
    [
        (A.SUBMITTED, A.ACCEPTED, MT, None),
        (A.SUBMITTED, A.ACCEPTED, T, "forbidden"),
        (A.SUBMITTED, A.RETURNED, OP, None),
        (A.RETURNED, A.SUBMITTED, T, None),
        (A.RETURNED, A.SUBMITTED, OP, "forbidden"),
        (A.ACCEPTED, A.UNDER_REVIEW, OP, None),
        (A.UNDER_REVIEW, A.APPROVED, OP, None),
        (A.UNDER_REVIEW, A.APPROVED, AD, None),
        (A.UNDER_REVIEW, A.APPROVED, MT, "forbidden"),
        (A.UNDER_REVIEW, A.APPROVED, T, "forbidden"),
        (A.UNDER_REVIEW, A.REJECTED, MT, None),
        (A.SUBMITTED, A.APPROVED, AD, "illegal"),
        (A.ACCEPTED, A.APPROVED, AD, "illegal"),
        (A.UNDER_REVIEW, A.WITHDRAWN, T, None),
        (A.UNDER_REVIEW, A.WITHDRAWN, OP, "forbidden"),
        (A.APPROVED, A.WITHDRAWN, T, "illegal"),
        (A.REJECTED, A.SUBMITTED, T, "illegal"),
        (A.WITHDRAWN, A.SUBMITTED, T, "illegal"),
    ],
)
def test_application_moves(
    current: mo.ApplicationState, to: mo.ApplicationState, role: Role, outcome: str | None
) -> None:
    if outcome is None:
        mo.check_application_transition(current, to, role)
    else:
        with pytest.raises(mo.TransitionRefused) as exc:
            mo.check_application_transition(current, to, role)
        assert exc.value.reason == outcome


@pytest.mark.parametrize(
    ("current", "to", "role", "outcome"),
    [
        (L.CONTRACTED, L.INSTALLING, MT, None),
        (L.INSTALLING, L.ACCEPTANCE_TEST, MT, None),
        (L.ACCEPTANCE_TEST, L.IN_SERVICE, OP, None),
        (L.ACCEPTANCE_TEST, L.INSTALLING, OP, None),
        (L.IN_SERVICE, L.SUSPENDED, OP, None),
        (L.SUSPENDED, L.IN_SERVICE, OP, None),
        (L.IN_SERVICE, L.TERMINATED, OP, None),
        (L.IN_SERVICE, L.TERMINATED, MT, "forbidden"),
        (L.TERMINATED, L.REMOVED, MT, None),
        (L.CONTRACTED, L.IN_SERVICE, AD, "illegal"),
        (L.REMOVED, L.IN_SERVICE, AD, "illegal"),
        (L.TERMINATED, L.IN_SERVICE, AD, "illegal"),
        (L.IN_SERVICE, L.SUSPENDED, T, "forbidden"),
    ],
)
def test_lease_moves(
    current: mo.LeaseState, to: mo.LeaseState, role: Role, outcome: str | None
) -> None:
    if outcome is None:
        mo.check_lease_transition(current, to, role)
    else:
        with pytest.raises(mo.TransitionRefused) as exc:
            mo.check_lease_transition(current, to, role)
        assert exc.value.reason == outcome


def test_port_is_energised_only_in_service() -> None:
    assert mo.port_switch_for(L.IN_SERVICE) is True
    assert mo.port_switch_for(L.SUSPENDED) is False
    assert mo.port_switch_for(L.TERMINATED) is False
    for state in (L.CONTRACTED, L.INSTALLING, L.ACCEPTANCE_TEST, L.REMOVED):
        assert mo.port_switch_for(state) is None


def test_every_lease_state_is_reachable_and_ends_in_removed() -> None:
    reachable = {L.CONTRACTED}
    frontier = [L.CONTRACTED]
    while frontier:
        s = frontier.pop()
        for frm, to in mo.LEASE_MOVES:
            if frm == s and to not in reachable:
                reachable.add(to)
                frontier.append(to)
    assert reachable == set(L)
    assert not mo.allowed_moves(mo.LEASE_MOVES, L.REMOVED)


SITE_YAML = """\
poles:
  - id: P1
    devices:
      - {id: P1-pm, profile: port-meter-4}
      - {id: P1-lamp, profile: lamp-controller}
    capacity: {max_load_kg: 100, power_budget_w: 2000}
    slots:
      - {id: S1, position: top, max_load_kg: 30, max_wind_area_m2: 0.5, max_power_w: 600}
      - {id: S1, position: mid, max_load_kg: 30, max_wind_area_m2: 0.5, max_power_w: 600}
    ports:
      - {id: PT1, meter: P1-pm, port: 1, rated_w: 500}
      - {id: PT2, meter: P1-pm, port: 5, rated_w: 500}
      - {id: PT3, meter: P1-lamp, port: 1, rated_w: 500}
      - {id: PT4, meter: P2-pm, port: 1, rated_w: 500}
      - {id: PT5, meter: P1-pm, port: 1, rated_w: 500}
"""


def test_site_file_mounting_problems_name_their_lines() -> None:
    from gateway.core.profiles import load_catalog
    from gateway.core.site import parse_site
    from gateway.errors import SiteError

    with pytest.raises(SiteError) as exc:
        parse_site(SITE_YAML, "site.yaml", load_catalog())
    found = [(p.line, p.field) for p in exc.value.problems]
    assert found == [
        (9, "poles[0].slots[1].id"),
        (12, "poles[0].ports[1].port"),
        (13, "poles[0].ports[2].meter"),
        (14, "poles[0].ports[3].meter"),
        (15, "poles[0].ports[4].port"),
    ], exc.value.problems
    text = str(exc.value)
    assert "duplicate slot id 'S1'" in text
    assert "has ports 1..4" in text
    assert "no switch_port command" in text
    assert "not a device of this pole" in text


def test_site_file_with_capacity_parses() -> None:
    from gateway.core.profiles import load_catalog
    from gateway.core.site import parse_site

    good = "\n".join(
        line
        for line in SITE_YAML.splitlines()
        if "S1, position: mid" not in line
        and "PT2" not in line
        and "PT3" not in line
        and "PT4" not in line
        and "PT5" not in line
    )
    site = parse_site(good, "site.yaml", load_catalog())
    (pole,) = site.poles
    assert pole.capacity is not None
    assert pole.capacity.power_budget_w == 2000
    assert [p.id for p in pole.ports] == ["PT1"]
