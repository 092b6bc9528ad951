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

import itertools
import math
import string
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Final, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.core.readings import DeadLetterReason
from gateway.core.yamlsource import (
    LineMap,
    YamlSyntaxError,
    format_loc,
    load_yaml,
    problems_from_validation,
)
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


Loc = tuple[str | int, ...]


class FieldProblems(ValueError):
    """Problems a cross-field check found, each at its own path below the model checked.

    pydantic reports a model validator's error at the model; parse_profile puts
    each of these at its field instead, so the message names the right line.
    """

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{format_loc(p)}: {m}" if p else m for p, m in problems))


# --- Modbus register map ----------------------------------------------------------

RegisterTable = Literal["holding", "input", "coil", "discrete"]
DataType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool"
]
Order = Literal["big", "little"]

#: The one table of data types: registers each occupies (bool: one bit of one register).
REGISTER_COUNT: Final[Mapping[str, int]] = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
    "float32": 2, "float64": 4, "bool": 1,
}  # fmt: skip
BIT_TABLES: Final = frozenset({"coil", "discrete"})  # one bit per address
REGISTER_TABLES: Final = frozenset({"holding", "input"})  # 16 bits per address
WRITABLE_TABLES: Final = frozenset({"holding", "coil"})
LAST_ADDRESS: Final = 65535


class ModbusPoint(_Strict):
    """Where one metric lives on a Modbus device, and how its raw value converts.

    value = raw * scale + offset. A coil or discrete input is a bool (type implied);
    a bool in a register is one bit of it (`bit: 0..15`). Byte order is that of
    the two bytes in each register, word order that of the registers of a 32- or
    64-bit value; a map's own orders are copied into points that do not set them.
    """

    table: RegisterTable
    address: int = Field(ge=0, le=LAST_ADDRESS)
    type: DataType
    bit: int | None = Field(default=None, ge=0, le=15)
    scale: float = 1.0
    offset: float = 0.0
    byte_order: Order = "big"
    word_order: Order = "big"

    @model_validator(mode="before")
    @classmethod
    def _bits_are_bools(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("table") in BIT_TABLES and "type" not in data:
            return {**data, "type": "bool"}
        return data

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        given = self.model_fields_set
        if self.table in BIT_TABLES:
            if self.type != "bool":
                problems.append((("type",), f"a {self.table} is one bit: its type is bool"))
            for name in ("bit", "scale", "offset", "byte_order", "word_order"):
                if name in given:
                    problems.append(((name,), f"does not apply to a {self.table}"))
        elif self.type == "bool":
            if self.bit is None:
                problems.append((("bit",), "a bool in a register names its bit: 0..15"))
            for name in ("scale", "offset"):
                if name in given:
                    problems.append(((name,), "does not apply to a bool"))
        elif self.bit is not None:
            problems.append((("bit",), f"only a bool is one bit of a register, not a {self.type}"))
        if not math.isfinite(self.scale) or self.scale == 0:
            problems.append((("scale",), "must be a finite number other than 0"))
        if not math.isfinite(self.offset):
            problems.append((("offset",), "must be a finite number"))
        if self.address + self.count - 1 > LAST_ADDRESS:
            problems.append(
                (
                    ("address",),
                    f"a {self.type} takes {self.count} registers: "
                    f"{self.address}..{self.address + self.count - 1} runs past {LAST_ADDRESS}",
                )
            )
        if problems:
            raise FieldProblems(problems)
        return self

    @property
    def count(self) -> int:
        """Addresses the point occupies: registers, or 1 bit in a coil/discrete table."""
        return 1 if self.table in BIT_TABLES else REGISTER_COUNT[self.type]

    @property
    def end(self) -> int:
        """The address after the point's last one."""
        return self.address + self.count

    @property
    def writable(self) -> bool:
        return self.table in WRITABLE_TABLES


def _span(start: int, end: int) -> str:
    return str(start) if end - start == 1 else f"{start}..{end - 1}"


class ModbusMap(_Strict):
    """A profile's register map: one point per metric a Modbus device of it reports."""

    byte_order: Order = "big"
    word_order: Order = "big"
    # Unread addresses a block read may span to merge two neighbouring points.
    max_gap: int = Field(default=8, ge=0, le=2000)
    points: dict[MetricName, ModbusPoint] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _orders_into_points(cls, data: object) -> object:
        if not isinstance(data, dict) or not isinstance(points := data.get("points"), dict):
            return data
        orders = {
            k: data[k] for k in ("byte_order", "word_order") if data.get(k) in get_args(Order)
        }
        if not orders:
            return data
        return {
            **data,
            "points": {
                name: {**orders, **p}
                if isinstance(p, dict) and p.get("table") in REGISTER_TABLES
                else p
                for name, p in points.items()
            },
        }

    @model_validator(mode="after")
    def _no_overlaps(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        for table in sorted({p.table for p in self.points.values()}):
            holder: tuple[str, ModbusPoint] | None = None  # the point reaching furthest yet
            bits: dict[tuple[int, int], str] = {}  # (register, bit) -> point
            for name, p in sorted(
                ((n, p) for n, p in self.points.items() if p.table == table),
                key=lambda item: (item[1].address, item[0]),
            ):
                if p.bit is not None and (owner := bits.get((p.address, p.bit))):
                    problems.append(
                        (
                            ("points", name, "bit"),
                            f"bit {p.bit} of {table} {p.address} is {owner}'s",
                        )
                    )
                elif holder is not None and p.address < holder[1].end:
                    other_name, other = holder
                    if p.bit is None or other.bit is None:  # bits of one register may share it
                        problems.append(
                            (
                                ("points", name, "address"),
                                f"{table} {_span(p.address, p.end)} overlaps {other_name} "
                                f"({table} {_span(other.address, other.end)})",
                            )
                        )
                if p.bit is not None:
                    bits.setdefault((p.address, p.bit), name)
                if holder is None or p.end > holder[1].end:
                    holder = (name, p)
        if problems:
            raise FieldProblems(problems)
        return self


# --- Commands ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandRefused:
    """Why a command's arguments were not accepted."""

    detail: str


@dataclass(frozen=True, slots=True)
class ModbusWrite:
    """What executing a command on a Modbus device writes: a point and its value."""

    point: str
    value: float | bool
    readback: bool


ArgValue = int | float | bool


class CommandArg(_Strict):
    """One argument of a command."""

    type: Literal["number", "integer", "bool"]
    min: float | None = None
    max: float | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.type == "bool" and (self.min is not None or self.max is not None):
            raise ValueError("a bool argument has no min or max")
        if self.type == "integer":
            for bound in (self.min, self.max):
                if bound is not None and not bound.is_integer():
                    raise ValueError(f"an integer argument's bounds are integers, not {bound:g}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is greater than max ({self.max:g})")
        return self

    def check(self, value: object) -> ArgValue | str:
        """The value as the command uses it, or why it is refused (a str)."""
        if self.type == "bool":
            return value if isinstance(value, bool) else "must be true or false"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be {'an integer' if self.type == 'integer' else 'a number'}"
        if not math.isfinite(value):
            return "must be a finite number"
        if self.type == "integer":
            if not float(value).is_integer():
                return "must be an integer"
            value = int(value)
        if self.min is not None and value < self.min:
            return f"{value:g} is below the minimum {self.min:g}"
        if self.max is not None and value > self.max:
            return f"{value:g} is above the maximum {self.max:g}"
        return value

    @property
    def values(self) -> range | None:
        """Every value of a bounded integer argument; None for any other argument."""
        if self.type != "integer" or self.min is None or self.max is None:
            return None
        return range(int(self.min), int(self.max) + 1)


class CommandWrite(_Strict):
    """How a Modbus device carries out a command: the point written and its value.

    `point` may hold {arg} placeholders (`port{port}_switch_on`); `value` is an
    argument's name or a literal number or bool. After the write the gateway
    reads the point back to confirm, unless `readback: false`.
    """

    point: Annotated[str, Field(min_length=1)]
    value: bool | float | str
    readback: bool = True

    @model_validator(mode="after")
    def _check(self) -> Self:
        self.placeholders  # noqa: B018 - raises ValueError for a malformed template
        return self

    @cached_property
    def placeholders(self) -> tuple[str, ...]:
        """Argument names the point's name is built from, in order."""
        names = []
        for _, field, spec, conversion in string.Formatter().parse(self.point):
            if field is None:
                continue
            if not field.isidentifier() or spec or conversion:
                raise ValueError(f"{{{field}}}: a placeholder is a plain argument name")
            names.append(field)
        return tuple(dict.fromkeys(names))


# PyYAML reads these unquoted words as booleans (YAML 1.1).
_YAML_BOOL_WORDS = frozenset({"yes", "no", "true", "false", "on", "off"})
_MAX_TARGETS = 1024


class Command(_Strict):
    """A command a device of the profile accepts."""

    description: str = ""
    args: dict[MetricName, CommandArg] = Field(default_factory=dict)
    write: CommandWrite | None = None

    def check_args(self, args: Mapping[str, object]) -> dict[str, ArgValue] | CommandRefused:
        """The arguments as the command uses them, or why they are refused."""
        unknown = sorted(set(args) - set(self.args))
        if unknown:
            return CommandRefused(f"unknown argument {unknown[0]!r}")
        checked: dict[str, ArgValue] = {}
        for name, arg in self.args.items():
            if name not in args:
                return CommandRefused(f"argument {name!r} is missing")
            value = arg.check(args[name])
            if isinstance(value, str):
                return CommandRefused(f"argument {name!r}: {value}")
            checked[name] = value
        return checked

    def modbus_write(self, args: Mapping[str, ArgValue]) -> ModbusWrite | None:
        """The write for checked arguments (see check_args); None if not a Modbus command."""
        if self.write is None:
            return None
        w = self.write
        point = w.point.format_map({p: args[p] for p in w.placeholders})
        value = args[w.value] if isinstance(w.value, str) else w.value
        return ModbusWrite(point, value, w.readback)

    def write_targets(self) -> Iterator[tuple[dict[str, int], str]]:
        """Each (placeholder values, point name) the write may address.

        Only for a write whose placeholders are all bounded integer arguments.
        """
        if self.write is None:
            return
        names = self.write.placeholders
        ranges = [self.args[n].values or range(0) for n in names]
        for combo in itertools.product(*ranges):
            binding = dict(zip(names, combo, strict=True))
            yield binding, self.write.point.format_map(binding)


class Profile(_Strict):
    """What one kind of device reports."""

    profile: Annotated[str, Field(pattern=PROFILE_NAME_PATTERN)]
    description: str = ""
    category: str = ""
    talq: list[str] = Field(default_factory=list)
    metrics: dict[MetricName, Metric] = Field(default_factory=dict)
    events: dict[MetricName, EventType] = Field(default_factory=dict)
    modbus: ModbusMap | None = None
    commands: dict[MetricName, Command] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if not self.metrics and not self.events:
            raise ValueError("a profile declares at least one metric or event")
        return self

    @model_validator(mode="after")
    def _map_and_commands_agree(self) -> Self:
        problems = [*self._map_problems(), *self._command_problems()]
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
        if math.prod(len(command.args[p].values or ()) for p in write.placeholders) > _MAX_TARGETS:
            return "point", f"the placeholders name more than {_MAX_TARGETS} points"
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
            ambiguous = sorted(a for a in command.args if a.lower() in _YAML_BOOL_WORDS)
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
    plain = problems_from_validation(exc, filename, lines)
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
