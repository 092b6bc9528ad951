"""Device profiles: what a device type reports, declared as data in devices/*.yaml.

A profile names each metric with its unit, kind and valid range, and each event
type the device may raise. The gateway validates every reading against the
profile of the device that sent it.

A profile may also carry a Modbus register map (`modbus:`, where each metric
lives on the device and how its raw value converts) and the commands the device
accepts (`commands:`, over MQTT or Modbus; `write:` says how a Modbus device
carries one out). Both are checked at load, each problem naming its file, line
and field. Converting registers to values is the Modbus adapter's job
(gateway/adapters/modbus_registers.py); planning block reads is in
gateway/core/modbus_plan.py.
"""

from __future__ import annotations

__all__ = [
    "BIT_TABLES", "LAST_ADDRESS", "NAME_PATTERN", "REGISTER_COUNT", "REGISTER_TABLES",
    "WRITABLE_TABLES", "ArgValue", "Command", "CommandArg", "CommandRefused", "CommandWrite",
    "DataType", "EventType", "FieldProblems", "Loc", "Metric", "MetricKind", "MetricName",
    "ModbusMap", "ModbusPoint", "ModbusWrite", "Order", "Profile", "ProfileCatalog", "Refused",
    "RegisterTable", "builtin_profile_files", "load_catalog", "parse_profile",
]  # fmt: skip

import math
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, ValidationError, model_validator

from gateway.core.alarms import AlarmSection
from gateway.core.device_commands import (  # re-exported: profiles are the public face
    MAX_WRITE_TARGETS,
    YAML_BOOL_WORDS,
    ArgValue,
    Command,
    CommandArg,
    CommandRefused,
    CommandWrite,
    ModbusWrite,
)
from gateway.core.modbus_map import (  # re-exported
    BIT_TABLES,
    LAST_ADDRESS,
    REGISTER_COUNT,
    REGISTER_TABLES,
    WRITABLE_TABLES,
    DataType,
    ModbusMap,
    ModbusPoint,
    Order,
    RegisterTable,
)
from gateway.core.readings import DeadLetterReason
from gateway.core.schema import NAME_PATTERN, FieldProblems, Loc, MetricName, Strict
from gateway.core.yamlsource import (
    LineMap,
    YamlSyntaxError,
    format_loc,
    load_yaml,
    problems_from_validation,
)
from gateway.errors import ProfileError, SourceProblem

PROFILE_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"


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


class Metric(Strict):
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


class EventType(Strict):
    """An event a device may raise (door opened, SOS pressed, impact)."""

    description: str = ""
    severity: Literal["info", "minor", "major", "critical"] = "info"


class Profile(Strict):
    """What one kind of device reports."""

    profile: Annotated[str, Field(pattern=PROFILE_NAME_PATTERN)]
    description: str = ""
    category: str = ""
    talq: list[str] = Field(default_factory=list)
    metrics: dict[MetricName, Metric] = Field(default_factory=dict)
    events: dict[MetricName, EventType] = Field(default_factory=dict)
    modbus: ModbusMap | None = None
    commands: dict[MetricName, Command] = Field(default_factory=dict)
    alarms: AlarmSection | None = None  # alarm rules (gateway/core/alarms.py)

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if not self.metrics and not self.events:
            raise ValueError("a profile declares at least one metric or event")
        return self

    @model_validator(mode="after")
    def _map_and_commands_agree(self) -> Self:
        problems = [*self._map_problems(), *self._command_problems(), *self._alarm_problems()]
        if problems:
            raise FieldProblems(problems)
        return self

    def _map_problems(self) -> Iterator[tuple[Loc, str]]:
        points = self.modbus.points if self.modbus is not None else {}
        for name, point in points.items():
            loc = ("modbus", "points", name)
            metric = self.metrics.get(name)
            if metric is None:
                yield loc, f"{name!r} is not a metric of this profile"
            elif metric.type == "bool" and point.type != "bool":
                yield (
                    (*loc, "type"),
                    (
                        f"{name} is a bool metric: map it to a coil, a discrete input "
                        "or a register bit (type: bool, bit: n)"
                    ),
                )
            elif metric.type == "number" and point.type == "bool":
                field = "table" if point.table in BIT_TABLES else "type"
                yield (*loc, field), f"{name} is a number metric: a single bit cannot hold it"

    def _alarm_problems(self) -> Iterator[tuple[Loc, str]]:
        """Alarm rules name metrics and events of this profile; `equals` fits the metric."""
        if self.alarms is None:
            return
        for name, rule in self.alarms.rules.items():
            loc = ("alarms", "rules", name)
            if rule.metric is not None:
                metric = self.metrics.get(rule.metric)
                if metric is None:
                    yield (*loc, "metric"), f"{rule.metric!r} is not a metric of this profile"
                elif metric.type == "bool" and rule.equals is None:
                    yield (*loc, "metric"), f"{rule.metric} is a bool metric: use equals: true"
            for field_name in ("raise_on", "clear_on"):
                for event in getattr(rule, field_name):
                    if event not in self.events:
                        yield (*loc, field_name), f"{event!r} is not an event of this profile"

    def _command_problems(self) -> Iterator[tuple[Loc, str]]:
        for name, command in self.commands.items():
            if (write := command.write) is None:
                continue
            loc = ("commands", name, "write")
            if self.modbus is None:
                yield loc, "a write needs the profile's modbus: section"
                continue
            problem = self._write_problem(command, write)
            if problem is not None:
                yield (*loc, problem[0]), problem[1]

    def _write_problem(self, command: Command, write: CommandWrite) -> tuple[str, str] | None:
        assert self.modbus is not None
        for placeholder in write.placeholders:
            arg = command.args.get(placeholder)
            if arg is None:
                return "point", f"{{{placeholder}}} is not an argument of this command"
            if arg.values is None:
                return "point", (
                    f"{{{placeholder}}}: a placeholder's argument must be a bounded integer "
                    "(type: integer with min and max)"
                )
        if (
            math.prod(len(command.args[p].values or ()) for p in write.placeholders)
            > MAX_WRITE_TARGETS
        ):
            return "point", f"the placeholders name more than {MAX_WRITE_TARGETS} points"
        if isinstance(write.value, str):
            arg = command.args.get(write.value)
            if arg is None:
                return "value", (
                    f"{write.value!r} is not an argument of this command "
                    "(name one, or give a number or true/false)"
                )
            wants_bool = arg.type == "bool"
        else:
            wants_bool = isinstance(write.value, bool)
            ambiguous = sorted(a for a in command.args if a.lower() in YAML_BOOL_WORDS)
            if wants_bool and ambiguous:
                return "value", (
                    f"YAML reads an unquoted {ambiguous[0]} as {str(write.value).lower()}: "
                    f'to use the argument, quote it (value: "{ambiguous[0]}")'
                )
        for binding, target in command.write_targets():
            where = "".join(f" ({k}={v})" for k, v in binding.items())
            point = self.modbus.points.get(target)
            if point is None:
                return "point", f"{target}{where} is not a point of the modbus map"
            if not point.writable:
                return "point", (
                    f"{target}{where} is in the read-only {point.table} table; "
                    "a write goes to a holding register or a coil"
                )
            if wants_bool != (point.type == "bool"):
                kinds = ("a bool", "a number") if wants_bool else ("a number", "a bool")
                return "value", f"writes {kinds[0]} to {target}{where}, which holds {kinds[1]}"
        return None

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

    @cached_property
    def bool_metrics(self) -> frozenset[str]:
        """The bool metrics: the decoder's fast path takes true/false for them as they are."""
        return frozenset(name for name, m in self.metrics.items() if m.type == "bool")


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
        raise ProfileError(_problems(exc, filename, lines)) from None
    if profile.profile != stem:
        line = lines.line_of(("profile",))
        raise ProfileError(
            [SourceProblem(filename, line, "profile", f"must match the file name ({stem!r})")]
        )
    return profile


def _problems(exc: ValidationError, filename: str, lines: LineMap) -> list[SourceProblem]:
    """pydantic's errors as problems; a FieldProblems error is spread to its fields."""
    problems: list[SourceProblem] = []
    plain = problems_from_validation(exc, filename, lines, model=Profile)
    for err, problem in zip(exc.errors(include_url=False), plain, strict=True):
        placed = err.get("ctx", {}).get("error")
        if not isinstance(placed, FieldProblems):
            problems.append(problem)
            continue
        base = tuple(p for p in err["loc"] if isinstance(p, int | str))
        for path, message in placed.problems:
            full = (*base, *path)
            problems.append(SourceProblem(filename, lines.line_of(full), format_loc(full), message))
    return problems


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
