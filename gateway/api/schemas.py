"""Response bodies of the read API (they are the OpenAPI documentation too)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class RequestBody(BaseModel):
    """The base of every JSON request body: a field the API does not know is refused.

    A client that sends `"at"` where the route takes `"effective_at"` must learn it at once
    (422 naming the field), not believe the server took it.
    """

    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next: str | None = Field(
        None, description="Pass as `after` to get the next page; null on the last page."
    )


ArchiveStatus = Literal["planned", "in_service", "faulty", "under_maintenance", "retired"]


class ArchiveRecord(BaseModel):
    """The operation archive's fields of a pole or device (migration 0004)."""

    model: str | None = None
    vendor: str | None = None
    serial: str | None = None
    installed_on: date | None = None
    taken_over_on: date | None = Field(None, description="Takeover (接管) from the builder")
    taken_over_from: str | None = Field(None, description="Who handed it over")
    warranty_until: date | None = None
    mounting_position: str | None = None
    status: ArchiveStatus = "in_service"
    notes: str | None = None


class Pole(ArchiveRecord):
    id: str
    name: str
    road: str
    lat: float | None
    lon: float | None
    height_m: float | None
    presence: str | None = Field(None, description="online / offline, from the pole's status topic")
    presence_since: datetime | None
    device_count: int
    clock_skew_s: float | None = Field(
        None,
        description="The pole's clock minus the gateway's at its last telemetry, s"
        " (null: not seen since the gateway started)",
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "id": "P0001",
                    "name": "Renmin Rd 1",
                    "road": "Renmin Rd",
                    "lat": 30.657,
                    "lon": 104.066,
                    "height_m": 10,
                    "presence": "online",
                    "presence_since": "2026-11-22T10:00:00Z",
                    "device_count": 5,
                    "model": "ZHG-10A",
                    "vendor": "Sichuan Smart Pole Co.",
                    "serial": "SP2026-000123",
                    "installed_on": "2026-05-20",
                    "taken_over_on": "2026-06-01",
                    "taken_over_from": "Chengdu Municipal Construction",
                    "warranty_until": "2029-06-01",
                    "mounting_position": None,
                    "status": "in_service",
                    "notes": None,
                }
            ]
        }
    }


class MetricInfo(BaseModel):
    unit: str | None
    kind: str
    type: str
    min: float | None
    max: float | None
    description: str


class CommandArgInfo(BaseModel):
    type: Literal["number", "integer", "bool"]
    min: float | None
    max: float | None
    description: str


class CommandInfo(BaseModel):
    description: str
    args: dict[str, CommandArgInfo]


class Device(ArchiveRecord):
    id: str
    pole_id: str
    profile: str
    transport: str
    modbus: dict[str, Any] | None


class DeviceDetail(Device):
    state: Literal["online", "offline", "unknown"] = Field(
        description="Polled devices: from their polls (offline after repeated failures);"
        " MQTT devices: online when they send data or their pole reports online, offline"
        " when their pole reports offline or after their profile's report interval x"
        " after_intervals without data"
    )
    state_since: datetime | None
    state_detail: str | None = Field(None, description="Why the device is offline")
    pole_presence: str | None
    pole_presence_since: datetime | None
    last_seen: datetime | None = Field(None, description="Time of the newest stored reading")
    metrics: dict[str, MetricInfo]
    events: list[str]
    commands: dict[str, CommandInfo] = Field(
        description="Commands the device accepts (POST /devices/{id}/commands), with their"
        " arguments"
    )


class LatestValue(BaseModel):
    value: float | bool
    ts: datetime
    unit: str | None
    quality: int


class Latest(BaseModel):
    device_id: str
    values: dict[str, LatestValue]

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "device_id": "P0001-lamp",
                    "values": {
                        "power_w": {
                            "value": 96.5,
                            "ts": "2026-11-22T10:00:00Z",
                            "unit": "W",
                            "quality": 0,
                        },
                        "lamp_on": {
                            "value": True,
                            "ts": "2026-11-22T10:00:00Z",
                            "unit": None,
                            "quality": 0,
                        },
                    },
                }
            ]
        }
    }


class Point(BaseModel):
    ts: datetime
    value: float | bool
    quality: int


class Bucket(BaseModel):
    bucket: datetime
    min: float
    avg: float
    max: float
    last: float
    samples: int


class Series(BaseModel):
    device_id: str
    metric: str
    unit: str | None
    start: datetime
    end: datetime
    bucket: str | None
    points: list[Point] | None = None
    buckets: list[Bucket] | None = None
    next: str | None = Field(None, description="Pass as `after` for the next page")
