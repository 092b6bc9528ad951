"""A device profile's Modbus register map: where each metric lives on the device
and how its raw registers convert (checked at load; converting is the adapter's job,
gateway/adapters/modbus_registers.py; planning reads is gateway/core/modbus_plan.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final, Literal, Self, get_args

from pydantic import Field, model_validator

from gateway.core.schema import FieldProblems, Loc, MetricName, Strict

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


class ModbusPoint(Strict):
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


class ModbusMap(Strict):
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
