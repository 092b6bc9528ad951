"""The commands a device accepts (over MQTT or Modbus), their arguments, and how a
Modbus device carries one out (`write:`)."""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from gateway.core.schema import MetricName, Strict


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


class CommandArg(Strict):
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


class CommandWrite(Strict):
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
YAML_BOOL_WORDS = frozenset({"yes", "no", "true", "false", "on", "off"})
MAX_WRITE_TARGETS = 1024


class Command(Strict):
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
