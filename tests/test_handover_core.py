"""The pure parts of a handover: the cut-over reading, the load order, the
credential columns (gateway.core.handover)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from gateway.core import handover as ho
from gateway.core import metering as mt

T = datetime(2026, 11, 15, 16, tzinfo=UTC)
M = timedelta(minutes=1)


def series(*points: tuple[int, str]) -> list[mt.Reading]:
    return [mt.Reading(T + m * M, Decimal(v)) for m, v in points]


def cut(readings: list[mt.Reading], modulus: Decimal | None = None) -> ho.CutoverReading:
    return ho.cutover_reading(readings, T, rated_w=Decimal(4000), modulus=modulus)


def test_a_reading_at_the_cut_over_is_measured() -> None:
    c = cut(series((-15, "10"), (0, "10.4"), (15, "10.8")))
    assert (c.value, c.how, c.flagged) == (Decimal("10.4"), "measured", False)


def test_between_two_readings_the_share_before_is_added_and_flagged() -> None:
    c = cut(series((-15, "10"), (-5, "10.2"), (10, "10.5")))
    assert c.how == "interpolated"
    assert c.flagged
    assert c.value == Decimal("10.3")  # 5 of the 15 minutes of 0.3 kWh
    assert c.before == mt.Reading(T - 5 * M, Decimal("10.2"))


def test_the_share_wraps_with_the_counter() -> None:
    mod = Decimal("100")
    c = cut(series((-10, "99.9"), (10, "0.1")), modulus=mod)
    assert c.value == Decimal("0")  # 99.9 + half of 0.2, past the top: 0


def test_without_a_reading_after_the_last_before_is_taken() -> None:
    c = cut(series((-30, "5"), (-15, "6")))
    assert (c.value, c.how) == (Decimal("6"), "last_before")
    assert cut([]).how == "none"
    assert cut([]).value is None


def test_parents_load_before_children() -> None:
    parents = {"leases": {"tenants", "poles"}, "poles": set(), "bills": {"bills", "tenants"}}
    order = ho.load_order(["bills", "leases", "poles", "tenants"], parents)
    assert order.index("tenants") < order.index("leases")
    assert order.index("poles") < order.index("leases")
    assert order.index("tenants") < order.index("bills")


def test_credential_columns_are_recognised_by_name() -> None:
    for name in ("password_hash", "secret_sha256", "key_hash", "token", "mqtt_password"):
        assert ho.is_secret_column(name), name
    for name in ("id", "name", "hashtag", "tokens_used_for", "password_changed"):
        assert ho.is_secret_column(name) == ("password" in name.split("_")), name
