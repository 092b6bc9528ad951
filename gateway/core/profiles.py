"""Device profiles: what a device type reports, declared as data in devices/*.yaml.

A profile names each metric with its unit, kind and valid range, and each event
type the device may raise. The gateway validates every reading against the
profile of the device that sent it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.core.readings import DeadLetterReason
from gateway.core.yamlsource import YamlSyntaxError, load_yaml, problems_from_validation
from gateway.errors import ProfileError, SourceProblem

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
PROFILE_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"

MetricName = Annotated[str, Field(pattern=NAME_PATTERN)]


BAD = DeadLetterReason.BAD_VALUE
RANGE = DeadLetterReason.OUT_OF_RANGE


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a value was not accepted for a metric."""

    reason: DeadLetterReason
    detail: str


class MetricKind(StrEnum):
    GAUGE = "gauge"  # an instantaneous measurement (V, °C, µg/m³)
    COUNTER = "counter"  # a cumulative, non-decreasing total (kWh, burning hours)
    STATE = "state"  # a switch or enumerated state (lamp on, door open, UPS mode)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metric(_Strict):
    """One quantity a device reports."""

    unit: str | None = None
    kind: MetricKind = MetricKind.GAUGE
    type: Literal["number", "bool"] = "number"
    min: float | None = None
    max: float | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.type == "bool" and self.kind is not MetricKind.STATE:
            raise ValueError("a bool metric must have kind: state")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    def check(self, value: object) -> float | Refused:
        """The value as stored (a float), or why it is refused."""
        if isinstance(value, bool):
            if self.type == "bool":
                return 1.0 if value else 0.0
            return Refused(BAD, "a boolean where the profile declares a number")
        if not isinstance(value, int | float):
            return Refused(BAD, f"not a number or boolean: {type(value).__name__}")
        try:
            number = float(value)
        except OverflowError:
            return Refused(BAD, "number too large")
        if not math.isfinite(number):
            return Refused(BAD, "not a finite number")
        if self.type == "bool":
            if number in (0.0, 1.0):
                return number
            return Refused(BAD, f"{value!r} is not a boolean (true/false or 0/1)")
        if self.min is not None and number < self.min:
            return Refused(RANGE, f"{number:g} is below the profile's minimum {self.min:g}")
        if self.max is not None and number > self.max:
            return Refused(RANGE, f"{number:g} is above the profile's maximum {self.max:g}")
        return number


class EventType(_Strict):
    """An event a device may raise (door opened, SOS pressed, impact)."""

    description: str = ""
    severity: Literal["info", "minor", "major", "critical"] = "info"


class Profile(_Strict):
    """What one kind of device reports."""

    profile: Annotated[str, Field(pattern=PROFILE_NAME_PATTERN)]
    description: str = ""
    category: str = ""
    talq: list[str] = Field(default_factory=list)
    metrics: dict[MetricName, Metric] = Field(default_factory=dict)
    events: dict[MetricName, EventType] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if not self.metrics and not self.events:
            raise ValueError("a profile declares at least one metric or event")
        return self

    @cached_property
    def number_bounds(self) -> dict[str, tuple[float, float]]:
        """(min, max) of each number metric, open ends as the largest finite floats.

        The decoder's fast path: a plain int or float within these bounds is
        valid as it is (NaN and infinities fall outside, to the full check).
        """
        top = sys.float_info.max
        return {
            name: (-top if m.min is None else m.min, top if m.max is None else m.max)
            for name, m in self.metrics.items()
            if m.type == "number"
        }


class ProfileCatalog(Mapping[str, Profile]):
    """All known profiles by name."""

    def __init__(self, profiles: Iterable[Profile]) -> None:
        self._profiles = {p.profile: p for p in profiles}

    def __getitem__(self, name: str) -> Profile:
        return self._profiles[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._profiles)

    def __len__(self) -> int:
        return len(self._profiles)


def parse_profile(text: str, filename: str) -> Profile:
    """Validate one profile's text; the profile's name must match the file's stem."""
    try:
        data, lines = load_yaml(text, filename)
    except YamlSyntaxError as exc:
        raise ProfileError([exc.problem]) from None
    stem = Path(filename).stem
    if isinstance(data, dict):
        data.setdefault("profile", stem)
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(problems_from_validation(exc, filename, lines)) from None
    if profile.profile != stem:
        line = lines.line_of(("profile",))
        raise ProfileError(
            [SourceProblem(filename, line, "profile", f"must match the file name ({stem!r})")]
        )
    return profile


def builtin_profile_files() -> list[tuple[str, str]]:
    """(file name, text) of the profiles shipped in devices/."""
    root = resources.files("polegw_devices")
    return sorted(
        (entry.name, entry.read_text(encoding="utf-8"))
        for entry in root.iterdir()
        if entry.name.endswith((".yaml", ".yml"))
    )


def load_catalog(extra_dir: Path | None = None) -> ProfileCatalog:
    """The built-in profiles plus any in `extra_dir` (same name overrides built-in).

    Every file is checked; all problems are reported together.
    """
    sources: dict[str, tuple[str, str]] = {}
    for name, text in builtin_profile_files():
        sources[Path(name).stem] = (f"devices/{name}", text)
    if extra_dir is not None:
        for path in sorted(extra_dir.glob("*.y*ml")):
            sources[path.stem] = (str(path), path.read_text(encoding="utf-8"))
    problems: list[SourceProblem] = []
    profiles: list[Profile] = []
    for filename, text in sources.values():
        try:
            profiles.append(parse_profile(text, filename))
        except ProfileError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ProfileError(problems)
    return ProfileCatalog(profiles)
