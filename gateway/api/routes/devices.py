"""Devices, their latest values and their telemetry."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from gateway.api.deps import ApiContext, Context
from gateway.api.errors import bad_param, not_found
from gateway.api.schemas import (
    ArchiveStatus,
    Bucket,
    CommandArgInfo,
    CommandInfo,
    Device,
    DeviceDetail,
    Latest,
    LatestValue,
    MetricInfo,
    Page,
    Point,
    Series,
)
from gateway.api.security import require
from gateway.core.auth import STAFF
from gateway.core.profiles import Metric, Profile

# The operator's devices are staff business; a tenant reads its own ports and usage.
router = APIRouter(prefix="/devices", tags=["devices"], dependencies=[Depends(require(STAFF))])

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
After = Annotated[
    str | None, Query(max_length=64, description="Cursor: the `next` of the previous page")
]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such device"}}

# Each bucket of a query is aggregated from raw rows: bound the work one request can ask for.
MAX_BUCKETS = 10_000
_BUCKET = re.compile(r"^(\d{1,6})(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_bucket(text: str) -> timedelta:
    match = _BUCKET.match(text)
    if match is None:
        raise bad_param("bucket", "use a number and a unit: 30s, 15m, 1h, 1d")
    seconds = int(match[1]) * _UNIT[match[2]]
    if seconds < 1:
        raise bad_param("bucket", "must be at least 1s")
    return timedelta(seconds=seconds)


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise bad_param(name, "must carry a UTC offset (e.g. 2026-11-22T10:00:00Z)")
    return value


def _render(metric: Metric, value: float) -> float | bool:
    return bool(value) if metric.type == "bool" else value


async def _device_and_profile(ctx: ApiContext, device_id: str) -> tuple[dict[str, object], Profile]:
    row = await ctx.reads.device(device_id)
    if row is None:
        raise not_found("device", device_id)
    profile = ctx.catalog.get(str(row["profile"]))
    if profile is None:
        raise HTTPException(
            409,
            detail=f"device {device_id!r} has profile {row['profile']!r}, unknown to this gateway",
        )
    return row, profile


@router.get("", summary="List devices, optionally of one pole")
async def list_devices(
    ctx: Context,
    pole: Annotated[
        str | None, Query(max_length=64, description="Only this pole's devices")
    ] = None,
    status: Annotated[
        ArchiveStatus | None, Query(description="Only devices in this archive status")
    ] = None,
    limit: Limit = 100,
    after: After = None,
) -> Page[Device]:
    rows = await ctx.reads.devices(pole=pole, after=after, limit=limit, status=status)
    items = [Device.model_validate(r) for r in rows]
    return Page[Device](items=items, next=items[-1].id if len(items) == limit else None)


@router.get("/{device_id}", summary="One device with its profile", responses=NOT_FOUND)
async def get_device(ctx: Context, device_id: str) -> DeviceDetail:
    row, profile = await _device_and_profile(ctx, device_id)
    latest = await ctx.reads.latest(device_id, list(profile.metrics))
    state: object
    # Polled devices: their polls. MQTT devices: their data and their pole's status
    # (gateway/core/presence.py), recorded as polled devices' are; before anything
    # is recorded, their pole's presence.
    online = row["polled_online"]
    if online is not None or row["transport"] == "modbus":
        state = "unknown" if online is None else ("online" if online else "offline")
        since, detail = row["polled_since"], row["polled_detail"]
    else:
        state = row["pole_presence"] or "unknown"
        since, detail = row["pole_presence_since"], None
    return DeviceDetail.model_validate(
        {
            **row,
            "state": state,
            "state_since": since,
            "state_detail": detail,
            "last_seen": max((r["ts"] for r in latest), default=None),
            "metrics": {
                name: MetricInfo.model_validate(m.model_dump())
                for name, m in profile.metrics.items()
            },
            "events": list(profile.events),
            "commands": {
                name: CommandInfo(
                    description=c.description,
                    args={
                        a: CommandArgInfo.model_validate(v.model_dump()) for a, v in c.args.items()
                    },
                )
                for name, c in profile.commands.items()
            },
        }
    )


@router.get("/{device_id}/latest", summary="The newest value of every metric", responses=NOT_FOUND)
async def latest_values(ctx: Context, device_id: str) -> Latest:
    _, profile = await _device_and_profile(ctx, device_id)
    rows = await ctx.reads.latest(device_id, list(profile.metrics))
    values = {}
    for r in rows:
        spec = profile.metrics[r["metric"]]
        values[r["metric"]] = LatestValue(
            value=_render(spec, r["value"]), ts=r["ts"], unit=spec.unit, quality=r["quality"]
        )
    return Latest(device_id=device_id, values=values)


@router.get(
    "/{device_id}/telemetry",
    summary="Readings of one metric over a time range, raw or in time buckets",
    description=(
        "Without `bucket`: raw points, oldest first, at most `limit` per page. With "
        "`bucket` (30s, 15m, 1h, 1d): min/avg/max/last per bucket. The range defaults "
        "to the last 24 hours and is capped (raw: POLEGW_API_MAX_RAW_RANGE_H hours; "
        "bucketed: POLEGW_API_MAX_BUCKET_RANGE_D days)."
    ),
    responses=NOT_FOUND,
)
async def telemetry(
    ctx: Context,
    device_id: str,
    metric: Annotated[str, Query(max_length=64, description="A metric of the device's profile")],
    start: Annotated[datetime | None, Query(description="Inclusive, RFC 3339 with offset")] = None,
    end: Annotated[
        datetime | None, Query(description="Exclusive, RFC 3339 with offset; default now")
    ] = None,
    bucket: Annotated[
        str | None, Query(max_length=10, description="Bucket width: 30s, 15m, 1h, 1d")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    after: Annotated[
        datetime | None, Query(description="Cursor: the `next` of the previous page")
    ] = None,
) -> Series:
    _, profile = await _device_and_profile(ctx, device_id)
    spec = profile.metrics.get(metric)
    if spec is None:
        raise bad_param(
            "metric", f"not a metric of profile {profile.profile!r}: {sorted(profile.metrics)}"
        )
    end = _aware("end", end) or datetime.now(UTC)
    start = _aware("start", start) or end - timedelta(hours=24)
    after = _aware("after", after)
    if start >= end:
        raise bad_param("start", "must be before end")
    width = parse_bucket(bucket) if bucket is not None else None
    s = ctx.settings
    cap = (
        timedelta(days=s.api_max_bucket_range_d)
        if width
        else timedelta(hours=s.api_max_raw_range_h)
    )
    if end - start > cap:
        raise bad_param("start", f"the range may span at most {cap}; narrow it or use a bucket")
    if width is not None and (end - start) / width > MAX_BUCKETS:
        raise bad_param(
            "bucket",
            f"at most {MAX_BUCKETS} buckets per query; widen the bucket or narrow the range",
        )
    series = Series(
        device_id=device_id, metric=metric, unit=spec.unit, start=start, end=end, bucket=bucket
    )
    if width is None:
        rows = await ctx.reads.raw(device_id, metric, start, end, after=after, limit=limit)
        series.points = [
            Point(ts=r["ts"], value=_render(spec, r["value"]), quality=r["quality"]) for r in rows
        ]
        if len(rows) == limit:
            series.next = rows[-1]["ts"].isoformat()
    else:
        rows = await ctx.reads.buckets(
            device_id, metric, start, end, width, after=after, limit=limit
        )
        series.buckets = [Bucket.model_validate(r) for r in rows]
        if len(rows) == limit:
            series.next = rows[-1]["bucket"].isoformat()
    return series
