"""`GET /usage`'s sums of one port (`_usage_out`): the per-piece look-up gives the
same buckets, periods and estimated kWh, digit for digit, as cutting every
interval at every bound and looking up each part (the code before, kept here as
the reference)."""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.adapters.usage_store import PortMeta, PortUsage
from gateway.api.routes.usage import (
    PortUsageOut,
    UsageBucket,
    UsageFlag,
    UsageGap,
    _bucket_bounds,
    _usage_out,
)
from gateway.core import metering as mt
from gateway.core import tariffs as tf
from tests.test_tariffs_core import bill_case

PORT = PortMeta("p1", "m1", 1, Decimal(2000), None)


def usage_out_reference(
    usage: PortUsage,
    intervals: list[mt.Interval],
    tariffs: list[tf.Tariff],
    tenant_id: str | None,
    start: datetime,
    end: datetime,
    width: str,
    tz: ZoneInfo,
) -> PortUsageOut:
    """`_usage_out` as it was: every interval cut, every part looked up."""
    bounds = _bucket_bounds(start, end, width, tz)
    cuts = mt.Cuts(bounds + tf.hour_bounds(start, end, tz) + [t.valid_from for t in tariffs])
    buckets: dict[datetime, dict[str, Decimal]] = {}
    estimated: dict[datetime, Decimal] = defaultdict(lambda: mt.ZERO)
    totals: dict[str, Decimal] = defaultdict(lambda: mt.ZERO)
    clock = tf.Clock(tariffs, tz, start, end)
    bounds_utc = [mt.utc(b) for b in bounds]
    for iv in intervals:
        for part in mt.split_interval(iv, cuts):
            _, at = clock.at(part.start)
            period = at.value if at is not None else "none"
            key = bounds[bisect_right(bounds_utc, mt.utc(part.start)) - 1] if bounds else start
            slot = buckets.setdefault(key, defaultdict(lambda: mt.ZERO))
            slot[period] += part.kwh
            totals[period] += part.kwh
            if mt.Flag.ESTIMATED in part.flags:
                estimated[key] += part.kwh
    q = mt.KWH  # kWh as shown (issue 16, item 17)
    return PortUsageOut(
        port_id=usage.port.id,
        tenant_id=tenant_id,
        kwh=sum(totals.values(), mt.ZERO).quantize(q),
        periods={k: v.quantize(q) for k, v in sorted(totals.items())},
        buckets=[
            UsageBucket(
                start=k,
                kwh=sum(v.values(), mt.ZERO).quantize(q),
                periods={p: x.quantize(q) for p, x in sorted(v.items())},
                estimated_kwh=estimated[k].quantize(q),
            )
            for k, v in sorted(buckets.items())
        ],
        gaps=[
            UsageGap(start=g.start, end=g.end, duration_s=g.duration.total_seconds())
            for g in usage.gaps
        ],
        flags=[
            UsageFlag(
                start=iv.start,
                end=iv.end,
                kwh=iv.kwh.quantize(q),
                flags=sorted(iv.flags),
                excess_kwh=iv.excess_kwh.quantize(q),
            )
            for iv in intervals
            if iv.flags
        ],
    )


@settings(max_examples=300, deadline=None)
@given(
    bill_case(),
    st.sampled_from(["15m", "1h", "1d"]),
    st.integers(-7200, 7200),
    st.integers(0, 3 * 86400),
    st.booleans(),
)
def test_usage_out_equals_the_part_by_part_reference(
    case: tuple[list[mt.Interval], list[tuple[datetime, datetime]], list[tf.Tariff], ZoneInfo],
    width: str,
    offset: int,
    length: int,
    tenant: bool,
) -> None:
    """A window anywhere on the series (its intervals clipped to it by bisection,
    as `port_usage` does), by 15 minutes, hours or local days, for the port or
    limited to a tenant's spans; versions ending without a cut (a hole)."""
    series, spans, tariffs, tz = case
    start = series[0].start + timedelta(seconds=offset)
    end = start + timedelta(seconds=length + 1)
    intervals = mt.clip_all(series, start, end)
    assert intervals == [p for iv in series if (p := mt.clip(iv, start, end)) is not None]
    if tenant:
        intervals = [p for a, b in spans for p in mt.clip_all(intervals, a, b)]
    usage = PortUsage(PORT, intervals, [])
    args = (usage, intervals, tariffs, "t1" if tenant else None, start, end, width, tz)
    assert _usage_out(*args).model_dump_json() == usage_out_reference(*args).model_dump_json()
