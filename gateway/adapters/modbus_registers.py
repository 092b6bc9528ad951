"""Registers to values and back, for the points of a profile's Modbus map.

Numbers go through pymodbus's one conversion (`convert_from_registers` /
`convert_to_registers`): word order is its `word_order` argument; byte order
(the two bytes within each register) is applied by swapping the bytes of each
register around it. Then value = raw * scale + offset (an integer without scale
or offset stays an exact int). A bool is a coil, a
discrete input, or one bit of a register.

Writing one bit of a register is a read-modify-write on the device; use
`bit_write_masks` with Modbus function 22 (mask write register) so the other
bits are left alone.
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Final

from pymodbus.client.mixin import ModbusClientMixin

from gateway.core.modbus_plan import ReadBlock, extract
from gateway.core.profiles import BIT_TABLES, ModbusMap, ModbusPoint

DATATYPE = ModbusClientMixin.DATATYPE
_from_registers = ModbusClientMixin.convert_from_registers
_to_registers = ModbusClientMixin.convert_to_registers

_DATATYPES: Final[dict[str, ModbusClientMixin.DATATYPE]] = {
    "int16": DATATYPE.INT16,
    "uint16": DATATYPE.UINT16,
    "int32": DATATYPE.INT32,
    "uint32": DATATYPE.UINT32,
    "int64": DATATYPE.INT64,
    "uint64": DATATYPE.UINT64,
    "float32": DATATYPE.FLOAT32,
    "float64": DATATYPE.FLOAT64,
}
#: The raw values each integer type holds.
INTEGER_RANGE: Final[dict[str, tuple[int, int]]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
_FLOAT32_MAX: Final = 3.4028234663852886e38


def _swap_bytes(registers: Sequence[int]) -> list[int]:
    return [((r & 0xFF) << 8) | (r >> 8) for r in registers]


def _raw_number(registers: Sequence[int], point: ModbusPoint) -> int | float:
    if point.byte_order == "little":
        registers = _swap_bytes(registers)
    raw = _from_registers(registers, _DATATYPES[point.type], word_order=point.word_order)
    if not isinstance(raw, int | float):  # pragma: no cover - one value of a numeric type
        raise TypeError(f"pymodbus returned {type(raw).__name__} for a {point.type}")
    return raw


@lru_cache(maxsize=1024)
def _places(scale: float, offset: float) -> int | None:
    """The decimal places of raw * scale + offset for an integer raw: those of the
    scale and offset as written (0.01 -> 2). None when they have too many to mean a
    resolution (a scale of 1/3): the value is left as computed."""
    places = max(0, *(-int(Decimal(repr(x)).as_tuple().exponent) for x in (scale, offset)))
    return places if places <= 12 else None


def _scaled(raw: int | float, point: ModbusPoint) -> float:
    # Unscaled integers stay exact (a 64-bit counter is not rounded to a float here).
    if point.scale == 1 and point.offset == 0:
        return raw
    value = raw * point.scale + point.offset
    if isinstance(raw, int):
        # An integer register has the scale's resolution: 2516767 x 0.01 is 25167.67,
        # not the float product 25167.670000000002.
        places = _places(point.scale, point.offset)
        if places is not None:
            return round(value, places)
    return value


class BlockDecoder:
    """The points of one block, compiled once, decoded from every answer to its read.

    The numbers of a block are decoded in one pass: when the decoder is built, the
    registers its numbers occupy are put in value order (word order), and one
    `struct.Struct` is compiled for all of them from pymodbus's own type table
    (`DATATYPE`: the struct code and register count of each type, the ones
    `convert_from_registers` unpacks with, big-endian after its word reordering).
    An answer is then packed back to its big-endian bytes and unpacked in one call:
    the same bytes and codes as pymodbus's per-value conversion (tests check the two
    agree for every type and order), at a fraction of its cost per poll. Scale and
    offset follow, for the points that have them (`_scaled`).
    """

    __slots__ = (
        "_bits",
        "_names",
        "_pack",
        "_register_bits",
        "_scaled",
        "_swap",
        "_take",
        "_unpack",
        "block",
    )

    def __init__(self, block: ReadBlock, modbus_map: ModbusMap) -> None:
        self.block = block
        self._bits: list[tuple[str, int]] = []
        self._register_bits: list[tuple[str, int, int]] = []
        numbers: list[tuple[int, str, ModbusPoint]] = []
        for name in block.points:
            point = modbus_map.points[name]
            where = extract(block, point)
            if point.table in BIT_TABLES:
                self._bits.append((name, where.start))
            elif point.type == "bool":
                assert point.bit is not None  # the profile check guarantees it
                self._register_bits.append((name, where.start, point.bit))
            else:
                numbers.append((where.start, name, point))
        numbers.sort()
        order: list[int] = []  # the block's register indexes, in value order
        swap: list[int] = []  # positions in `order` whose two bytes swap
        codes: list[str] = []
        scaled: list[tuple[str, float, float, int | None]] = []
        for index, name, point in numbers:
            code, count = _DATATYPES[point.type].value
            indexes = list(range(index, index + count))
            if point.word_order == "little":
                indexes.reverse()
            if point.byte_order == "little":
                swap.extend(range(len(order), len(order) + count))
            order.extend(indexes)
            codes.append(str(code))
            if point.scale != 1 or point.offset != 0:
                # An integer register has the scale's resolution (see _scaled).
                places = _places(point.scale, point.offset) if point.type in INTEGER_RANGE else None
                scaled.append((name, point.scale, point.offset, places))
        self._names = tuple(name for _, name, _ in numbers)
        self._scaled = tuple(scaled)
        self._swap = frozenset(swap)
        self._pack = struct.Struct(f">{len(order)}H").pack
        self._unpack = struct.Struct(">" + "".join(codes)).unpack
        self._take = _taker(order)

    def decode(self, values: Sequence[int] | Sequence[bool]) -> dict[str, float | bool]:
        """Each point's value from the registers (or bits) the block's read returned.

        `values` may run past the block (pymodbus pads coils to whole bytes); it
        may not stop short of it.
        """
        if len(values) < self.block.count:
            raise ValueError(
                f"{len(values)} values for a block of {self.block.count} "
                f"({self.block.table} {self.block.start}..{self.block.end - 1})"
            )
        out: dict[str, float | bool]
        if self._names:
            registers = self._take(values)
            if self._swap:
                registers = [
                    ((r & 0xFF) << 8) | (r >> 8) if i in self._swap else r
                    for i, r in enumerate(registers)
                ]
            out = dict(zip(self._names, self._unpack(self._pack(*registers)), strict=True))
            for name, scale, offset, places in self._scaled:
                raw = out[name]
                value = raw * scale + offset
                # 2516767 x 0.01 is 25167.67, not the float product 25167.670000000002.
                out[name] = value if places is None else round(value, places)
        else:
            out = {}
        for name, index in self._bits:
            out[name] = bool(values[index])
        for name, index, bit in self._register_bits:
            out[name] = bool((int(values[index]) >> bit) & 1)
        return out


def _taker(order: list[int]) -> Callable[[Sequence[int] | Sequence[bool]], Sequence[int]]:
    """A function picking the registers at `order` from an answer, as fast as it goes:
    a slice when they are consecutive (the common case), else an itemgetter."""
    if not order:
        return lambda values: ()
    first = order[0]
    if order == list(range(first, first + len(order))):
        end = first + len(order)
        return lambda values: values[first:end]
    if len(order) == 1:
        return lambda values: (values[first],)
    return operator.itemgetter(*order)


# Prepared decoders by (block, id of the map); each entry holds its map, so the id
# cannot be reused by another map while the entry lives.
_decoders: dict[tuple[ReadBlock, int], tuple[ModbusMap, BlockDecoder]] = {}
_MAX_DECODERS: Final = 4096


def decode_block(
    block: ReadBlock, modbus_map: ModbusMap, values: Sequence[int] | Sequence[bool]
) -> dict[str, float | bool]:
    """Each point of `block` from the values its read returned (see BlockDecoder).

    The block's decoder is prepared on first use and kept for the next poll.
    """
    key = (block, id(modbus_map))
    cached = _decoders.get(key)
    if cached is None or cached[0] is not modbus_map:
        if len(_decoders) >= _MAX_DECODERS:
            _decoders.clear()
        cached = _decoders[key] = (modbus_map, BlockDecoder(block, modbus_map))
    return cached[1].decode(values)


def decode_point(point: ModbusPoint, values: Sequence[int] | Sequence[bool]) -> float | bool:
    """One point's value from exactly the registers (or the one bit) it occupies."""
    if len(values) != point.count:
        raise ValueError(f"a {point.type} point takes {point.count} values, not {len(values)}")
    if point.table in BIT_TABLES:
        return bool(values[0])
    if point.type == "bool":
        assert point.bit is not None
        return bool((int(values[0]) >> point.bit) & 1)
    return _scaled(_raw_number(values, point), point)


def encode_write(point: ModbusPoint, value: float | bool) -> list[int] | bool:
    """What to write for `value`: the registers of a number, or the bool of a bit.

    The raw value is (value - offset) / scale, rounded to the nearest integer for
    an integer type (an int with no scale or offset is taken exactly). A value the
    type cannot hold raises ValueError. For a bool in a register the bool is
    returned; write it with `bit_write_masks`.
    """
    if point.type == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"a bool point takes true or false, not {value!r}")
        return value
    if isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"a {point.type} point takes a finite number, not {value!r}")
    unscaled = point.scale == 1 and point.offset == 0
    raw: int | float = value if unscaled else (value - point.offset) / point.scale
    if not math.isfinite(raw):
        raise ValueError(f"{value:g} gives a raw value too large for a {point.type}")
    if point.type in INTEGER_RANGE:
        raw = round(raw)
        low, high = INTEGER_RANGE[point.type]
        if not low <= raw <= high:
            raise ValueError(
                f"{value:g} gives the raw value {raw}, outside a {point.type} ({low}..{high})"
            )
    elif point.type == "float32" and abs(raw) > _FLOAT32_MAX:
        raise ValueError(f"{value:g} gives a raw value too large for a float32")
    registers = _to_registers(raw, _DATATYPES[point.type], word_order=point.word_order)
    return _swap_bytes(registers) if point.byte_order == "little" else registers


def bit_write_masks(point: ModbusPoint, value: bool) -> tuple[int, int]:
    """(and_mask, or_mask) for a mask write (function 22) setting a register bit to `value`."""
    if point.type != "bool" or point.bit is None or point.table in BIT_TABLES:
        raise ValueError("only a bool point that is one bit of a register has bit masks")
    return 0xFFFF & ~(1 << point.bit), (1 << point.bit) if value else 0
