"""Modbus register maps: schema checks, block planning, register conversion, shipped maps."""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin

from gateway.adapters.modbus_registers import (
    INTEGER_RANGE,
    BlockDecoder,
    bit_write_masks,
    decode_block,
    decode_point,
    encode_write,
)
from gateway.core.modbus_plan import (
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    ReadBlock,
    extract,
    plan_reads,
)
from gateway.core.profiles import (
    REGISTER_COUNT,
    CommandRefused,
    ModbusMap,
    ModbusPoint,
    ModbusWrite,
    ProfileCatalog,
    load_catalog,
    parse_profile,
)
from gateway.errors import ProfileError


def point(**spec: Any) -> ModbusPoint:
    return ModbusPoint.model_validate(spec)


def modbus_map(points: dict[str, dict[str, Any]], **settings: Any) -> ModbusMap:
    return ModbusMap.model_validate({**settings, "points": points})


# --- decoding every type and order ----------------------------------------------------

# (type, byte_order, word_order, registers as read, value). Byte order swaps the two
# bytes of each register, word order the registers of one value:
# big/big = ABCD, big/little = CDAB, little/big = BADC, little/little = DCBA.
DECODE = [
    ("uint16", "big", "big", [0x1234], 0x1234),
    ("uint16", "little", "big", [0x3412], 0x1234),
    ("uint16", "big", "big", [0xFFFF], 65535),
    ("int16", "big", "big", [0xFFFE], -2),
    ("int16", "little", "big", [0xFEFF], -2),
    ("int16", "big", "big", [0x8000], -32768),
    ("int16", "big", "big", [0x7FFF], 32767),
    ("uint32", "big", "big", [0x1234, 0x5678], 0x12345678),
    ("uint32", "big", "little", [0x5678, 0x1234], 0x12345678),
    ("uint32", "little", "big", [0x3412, 0x7856], 0x12345678),
    ("uint32", "little", "little", [0x7856, 0x3412], 0x12345678),
    ("int32", "big", "big", [0xFFFF, 0xFFFE], -2),
    ("int32", "big", "little", [0xFFFE, 0xFFFF], -2),
    ("int32", "little", "big", [0xFFFF, 0xFEFF], -2),
    ("int32", "little", "little", [0xFEFF, 0xFFFF], -2),
    ("int32", "big", "big", [0x8000, 0x0000], -(2**31)),
    ("uint64", "big", "big", [0x0102, 0x0304, 0x0506, 0x0708], 0x0102030405060708),
    ("uint64", "big", "little", [0x0708, 0x0506, 0x0304, 0x0102], 0x0102030405060708),
    ("uint64", "little", "big", [0x0201, 0x0403, 0x0605, 0x0807], 0x0102030405060708),
    ("uint64", "little", "little", [0x0807, 0x0605, 0x0403, 0x0201], 0x0102030405060708),
    ("uint64", "big", "big", [0xFFFF] * 4, 2**64 - 1),
    ("int64", "big", "big", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], -2),
    ("int64", "big", "little", [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF], -2),
    ("int64", "big", "big", [0xFFFF, 0xFEE0, 0x8E04, 0xFB35], -1234567890123),
    ("float32", "big", "big", [0x3FC0, 0x0000], 1.5),
    ("float32", "big", "little", [0x0000, 0x3FC0], 1.5),
    ("float32", "little", "big", [0xC03F, 0x0000], 1.5),
    ("float32", "little", "little", [0x0000, 0xC03F], 1.5),
    ("float32", "big", "big", [0xC148, 0x0000], -12.5),
    ("float32", "big", "little", [0x0000, 0xC148], -12.5),
    ("float32", "big", "big", [0x0000, 0x0000], 0.0),
    ("float64", "big", "big", [0x3FF8, 0x0000, 0x0000, 0x0000], 1.5),
    ("float64", "big", "big", [0xBFB9, 0x9999, 0x9999, 0x999A], -0.1),
    ("float64", "big", "little", [0x999A, 0x9999, 0x9999, 0xBFB9], -0.1),
    ("float64", "little", "big", [0xB9BF, 0x9999, 0x9999, 0x9A99], -0.1),
    ("float64", "little", "little", [0x9A99, 0x9999, 0x9999, 0xB9BF], -0.1),
]


@pytest.mark.parametrize(
    ("dtype", "byte_order", "word_order", "registers", "value"),
    DECODE,
    ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[4]}" for c in DECODE],
)
def test_every_type_and_order_decodes(
    dtype: str, byte_order: str, word_order: str, registers: list[int], value: float
) -> None:
    spec = point(
        table="holding", address=7, type=dtype, byte_order=byte_order, word_order=word_order
    )
    assert decode_point(spec, registers) == value
    # The same, read within a block with other registers around it.
    the_map = modbus_map(
        {
            "x": {"table": "holding", "address": 7, "type": dtype},
            "before": {"table": "holding", "address": 5, "type": "uint16"},
        },
        byte_order=byte_order,
        word_order=word_order,
    )
    block = ReadBlock("holding", 5, 2 + len(registers), ("before", "x"))
    decoded = decode_block(block, the_map, [0x0102, 0xAAAA, *registers])
    assert decoded["x"] == value
    assert decoded["before"] == (0x0102 if byte_order == "big" else 0x0201)


# One point of a random block: (type, byte order, word order, scale, registers before it).
_POINTS = st.tuples(
    st.sampled_from(sorted(REGISTER_COUNT)),
    st.sampled_from(["big", "little"]),
    st.sampled_from(["big", "little"]),
    st.sampled_from([1.0, 0.1, 0.01, 1000.0, 1 / 3]),
    st.integers(0, 3),
)


@settings(max_examples=300, deadline=None)
@given(points=st.lists(_POINTS, min_size=1, max_size=12), data=st.data())
def test_a_block_decodes_each_point_as_pymodbus_converts_it_alone(
    points: list[tuple[str, str, str, float, int]], data: st.DataObject
) -> None:
    # The block decoder is compiled to one struct per block; decode_point converts each
    # point on its own with pymodbus's convert_from_registers. Both must agree on every
    # type, order, scale and gap, for any register contents.
    spec: dict[str, dict[str, Any]] = {}
    address = 0
    for index, (dtype, byte_order, word_order, scale, space) in enumerate(points):
        address += space
        if dtype == "bool":
            spec[f"p{index}"] = {"table": "holding", "address": address, "type": "bool",
                                 "bit": index % 16}  # fmt: skip
        else:
            spec[f"p{index}"] = {"table": "holding", "address": address, "type": dtype,
                                 "byte_order": byte_order, "word_order": word_order}  # fmt: skip
            if scale != 1.0:
                spec[f"p{index}"]["scale"] = scale
        address += REGISTER_COUNT[dtype]
    the_map = modbus_map(spec, max_gap=3)
    for block in plan_reads(the_map):
        registers = data.draw(
            st.lists(st.integers(0, 0xFFFF), min_size=block.count, max_size=block.count)
        )
        decoded = decode_block(block, the_map, registers)
        assert set(decoded) == set(block.points)
        for name in block.points:
            alone = decode_point(
                the_map.points[name], registers[extract(block, the_map.points[name])]
            )
            got = decoded[name]
            assert type(got) is type(alone), name
            assert got == alone or (math.isnan(got) and math.isnan(alone)), name


@pytest.mark.parametrize(
    ("spec", "registers", "value"),
    [
        ({"type": "uint16", "scale": 0.1}, [2298], 229.8),
        ({"type": "int16", "scale": 0.01}, [0xFB2E], -12.34),  # -1234
        ({"type": "uint16", "scale": 0.1, "offset": -40}, [500], 10.0),
        ({"type": "uint32", "scale": 0.01}, [0x0001, 0xE240], 1234.56),  # 123456
        ({"type": "int32", "scale": 0.1, "word_order": "little"}, [0xFFF6, 0xFFFF], -1.0),
        ({"type": "float32", "scale": 1000, "offset": 1}, [0x3FC0, 0x0000], 1501.0),
    ],
)
def test_scale_and_offset_apply_to_the_raw_value(
    spec: dict[str, Any], registers: list[int], value: float
) -> None:
    assert decode_point(point(table="input", address=0, **spec), registers) == pytest.approx(value)


@pytest.mark.parametrize(
    ("spec", "registers", "shown"),
    [
        # 2516767 x 0.01 is 25167.670000000002 as a float product (issue 16, item 17)
        ({"type": "uint32", "scale": 0.01}, [0x0026, 0x671F], "25167.67"),
        ({"type": "uint16", "scale": 0.1, "offset": -40}, [653], "25.3"),  # 25.299999999999997
        ({"type": "uint16", "scale": 0.001}, [1234], "1.234"),
        ({"type": "int16", "scale": 10}, [7], "70.0"),
    ],
)
def test_a_scaled_register_reads_at_the_scales_resolution(
    spec: dict[str, Any], registers: list[int], shown: str
) -> None:
    """The value is the decimal the register means, not a float product's noise: its
    repr (what the API and the database get) has the scale's decimals."""
    assert repr(decode_point(point(table="input", address=0, **spec), registers)) == shown


def test_bools_come_from_coils_discrete_inputs_and_register_bits() -> None:
    the_map = modbus_map(
        {
            "b0": {"table": "input", "address": 3, "type": "bool", "bit": 0},
            "b3": {"table": "input", "address": 3, "type": "bool", "bit": 3},
            "b15": {"table": "input", "address": 3, "type": "bool", "bit": 15},
            "b4": {"table": "input", "address": 4, "type": "bool", "bit": 4},
        }
    )
    (block,) = plan_reads(the_map)
    assert (block.start, block.count) == (3, 2)
    decoded = decode_block(block, the_map, [0b1000_0000_0000_1000, 0xFFEF])
    assert decoded == {"b0": False, "b3": True, "b15": True, "b4": False}

    coils = modbus_map({f"c{i}": {"table": "coil", "address": i} for i in range(10)})
    (block,) = plan_reads(coils)
    bits = [i % 3 == 0 for i in range(16)]  # pymodbus pads coils to whole bytes
    assert decode_block(block, coils, bits) == {f"c{i}": i % 3 == 0 for i in range(10)}
    discrete = modbus_map({"door": {"table": "discrete", "address": 1}})
    assert decode_block(plan_reads(discrete)[0], discrete, [True]) == {"door": True}


def test_a_short_answer_is_refused() -> None:
    the_map = modbus_map({"v": {"table": "input", "address": 0, "type": "uint32"}})
    decoder = BlockDecoder(plan_reads(the_map)[0], the_map)
    with pytest.raises(ValueError, match="1 values for a block of 2"):
        decoder.decode([1])
    assert decoder.decode([0, 7]) == {"v": 7.0}


# --- encoding writes and round trips -------------------------------------------------

ORDERS = [(b, w) for b in ("big", "little") for w in ("big", "little")]
NUMBER_TYPES = [t for t in REGISTER_COUNT if t != "bool"]


@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS)
@pytest.mark.parametrize("dtype", NUMBER_TYPES)
def test_encode_matches_the_decode_vectors(dtype: str, byte_order: str, word_order: str) -> None:
    for case in DECODE:
        if case[:3] == (dtype, byte_order, word_order):
            spec = point(
                table="holding",
                address=0,
                type=dtype,
                byte_order=byte_order,
                word_order=word_order,
            )
            assert encode_write(spec, case[4]) == case[3]


@settings(max_examples=300, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(NUMBER_TYPES), orders=st.sampled_from(ORDERS))
def test_encode_then_decode_gives_the_value_back(
    data: st.DataObject, dtype: str, orders: tuple[str, str]
) -> None:
    spec = point(table="holding", address=0, type=dtype, byte_order=orders[0], word_order=orders[1])
    if dtype in INTEGER_RANGE:
        low, high = INTEGER_RANGE[dtype]
        value: float = data.draw(st.integers(low, high))
    else:
        floats = st.floats(allow_nan=False, allow_infinity=False, width=32)
        if dtype == "float64":
            floats = st.floats(allow_nan=False, allow_infinity=False)
        value = data.draw(floats)
    registers = encode_write(spec, value)
    assert isinstance(registers, list)
    assert len(registers) == REGISTER_COUNT[dtype]
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert decode_point(spec, registers) == value


@pytest.mark.parametrize(
    ("spec", "value", "registers"),
    [
        ({"type": "uint16", "scale": 0.1}, 229.84, [2298]),  # rounded to the nearest step
        ({"type": "uint16", "scale": 0.1}, 229.86, [2299]),
        ({"type": "int16", "scale": 0.01}, -12.34, [0xFB2E]),
        ({"type": "uint16", "scale": 0.1, "offset": -40}, 10.0, [500]),
        ({"type": "uint32", "scale": 0.01, "word_order": "little"}, 1234.56, [0xE240, 0x0001]),
        ({"type": "float32", "scale": 0.5}, 0.75, [0x3FC0, 0x0000]),
    ],
)
def test_encode_applies_scale_and_offset_inversely(
    spec: dict[str, Any], value: float, registers: list[int]
) -> None:
    the_point = point(table="holding", address=0, **spec)
    assert encode_write(the_point, value) == registers
    assert decode_point(the_point, registers) == pytest.approx(value, abs=0.05)


@pytest.mark.parametrize(
    ("spec", "value", "fragment"),
    [
        ({"type": "uint16"}, -1, "outside a uint16 (0..65535)"),
        ({"type": "uint16"}, 65535.6, "raw value 65536"),
        ({"type": "int16"}, 32768, "outside a int16"),
        ({"type": "int16", "scale": 0.01}, 327.68, "raw value 32768"),
        ({"type": "uint32", "scale": 0.01}, 42949672.96, "outside a uint32"),
        ({"type": "int64"}, 2.0**63, "outside a int64"),
        ({"type": "float32"}, 1e39, "too large for a float32"),
        ({"type": "float64", "scale": 1e-300}, 1e300, "too large for a float64"),
        ({"type": "uint16"}, math.nan, "finite number"),
        ({"type": "float32"}, math.inf, "finite number"),
        ({"type": "uint16"}, True, "finite number"),
        ({"type": "bool", "bit": 2}, 1, "true or false"),
    ],
)
def test_encode_refuses_what_the_type_cannot_hold(
    spec: dict[str, Any], value: float, fragment: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        encode_write(point(table="holding", address=0, **spec), value)


def test_bool_writes() -> None:
    assert encode_write(point(table="coil", address=3), True) is True
    register_bit = point(table="holding", address=20, type="bool", bit=3)
    assert encode_write(register_bit, False) is False
    assert bit_write_masks(register_bit, True) == (0xFFF7, 0x0008)
    assert bit_write_masks(register_bit, False) == (0xFFF7, 0x0000)
    with pytest.raises(ValueError, match="one bit of a register"):
        bit_write_masks(point(table="coil", address=3), True)


def test_conversion_is_pymodbus_own() -> None:
    # The vectors above agree with pymodbus's conversion (the one the adapter uses).
    convert = ModbusClientMixin.convert_to_registers
    assert convert(1.5, ModbusClientMixin.DATATYPE.FLOAT32) == [0x3FC0, 0x0000]
    spec = point(table="input", address=0, type="float32", word_order="little")
    assert encode_write(spec, 1.5) == convert(
        1.5, ModbusClientMixin.DATATYPE.FLOAT32, word_order="little"
    )


# --- block planning ------------------------------------------------------------------


def reg(address: int, dtype: str = "uint16", table: str = "holding") -> dict[str, Any]:
    return {"table": table, "address": address, "type": dtype}


def spans(blocks: list[ReadBlock]) -> list[tuple[str, int, int]]:
    return [(b.table, b.start, b.count) for b in blocks]


def test_scattered_registers_give_the_minimal_set_of_reads() -> None:
    the_map = modbus_map(
        {
            "a": reg(0),
            "b": reg(1, "uint32"),  # 1..2
            "c": reg(11, "float32"),  # gap 8 after b: merged
            "d": reg(22),  # gap 9 after c: a new block
            "e": reg(23, "int64"),  # 23..26
            "f": reg(200, "float64"),  # far away: alone
            "g": reg(100, "int16", "input"),
            "h": reg(104, "int16", "input"),
            "i": {"table": "coil", "address": 9},
            "j": {"table": "coil", "address": 0},
            "k": {"table": "discrete", "address": 5},
        }
    )
    blocks = plan_reads(the_map)
    assert blocks == [
        ReadBlock("coil", 0, 10, ("j", "i")),
        ReadBlock("discrete", 5, 1, ("k",)),
        ReadBlock("holding", 0, 13, ("a", "b", "c")),
        ReadBlock("holding", 22, 5, ("d", "e")),
        ReadBlock("holding", 200, 4, ("f",)),
        ReadBlock("input", 100, 5, ("g", "h")),
    ]
    assert plan_reads(the_map) == blocks  # deterministic
    for block in blocks:
        for name in block.points:
            where = extract(block, the_map.points[name])
            assert 0 <= where.start < where.stop <= block.count


def test_max_gap_decides_what_merges() -> None:
    points = {"a": reg(0), "b": reg(4), "c": reg(5)}  # gaps 3 and 0
    assert spans(plan_reads(modbus_map(points, max_gap=3))) == [("holding", 0, 6)]
    assert spans(plan_reads(modbus_map(points, max_gap=2))) == [
        ("holding", 0, 1),
        ("holding", 4, 2),
    ]
    assert spans(plan_reads(modbus_map(points, max_gap=0))) == [
        ("holding", 0, 1),
        ("holding", 4, 2),
    ]
    assert modbus_map(points).max_gap == 8


def test_register_blocks_hold_at_most_125() -> None:
    # A uint16 every 8 registers (gap 7): only the 125-register limit splits them.
    the_map = modbus_map({f"p{a}": reg(a) for a in range(0, 400, 8)})
    blocks = plan_reads(the_map)
    assert spans(blocks) == [
        ("holding", 0, 121),
        ("holding", 128, 121),
        ("holding", 256, 121),
        ("holding", 384, 9),
    ]
    assert sum(len(b.points) for b in blocks) == len(the_map.points)
    # The limit is inclusive: a value ending on register 124 still fits.
    assert spans(plan_reads(modbus_map({"a": reg(0), "b": reg(123, "uint32")}, max_gap=125))) == [
        ("holding", 0, MAX_REGISTERS_PER_READ)
    ]
    assert spans(plan_reads(modbus_map({"a": reg(0), "b": reg(124, "uint32")}, max_gap=125))) == [
        ("holding", 0, 1),
        ("holding", 124, 2),
    ]
    # A device that answers fewer registers per request.
    assert [b.count for b in plan_reads(the_map, max_registers=64)][:2] == [57, 57]


def test_coil_blocks_hold_at_most_2000() -> None:
    the_map = modbus_map({f"c{i}": {"table": "coil", "address": i} for i in range(2001)})
    blocks = plan_reads(the_map)
    assert spans(blocks) == [("coil", 0, MAX_BITS_PER_READ), ("coil", 2000, 1)]
    assert blocks[0].points[:3] == ("c0", "c1", "c2")  # by address
    discrete = modbus_map(
        {f"d{i}": {"table": "discrete", "address": 10 * i} for i in range(300)}, max_gap=9
    )
    assert spans(plan_reads(discrete)) == [("discrete", 0, 1991), ("discrete", 2000, 991)]


def test_bits_of_one_register_share_a_block() -> None:
    the_map = modbus_map(
        {
            "ups": reg(7, table="input"),
            "water": {"table": "input", "address": 8, "type": "bool", "bit": 0},
            "smoke": {"table": "input", "address": 8, "type": "bool", "bit": 1},
        }
    )
    assert plan_reads(the_map) == [ReadBlock("input", 7, 2, ("ups", "smoke", "water"))]


def test_only_plans_the_named_points() -> None:
    the_map = modbus_map(
        {"a": reg(0), "b": reg(5), "c": reg(40), "d": {"table": "coil", "address": 0}}
    )
    assert plan_reads(the_map, only=["c"]) == [ReadBlock("holding", 40, 1, ("c",))]
    assert plan_reads(the_map, only={"a", "d"}) == [
        ReadBlock("coil", 0, 1, ("d",)),
        ReadBlock("holding", 0, 1, ("a",)),
    ]
    with pytest.raises(KeyError, match="nope"):
        plan_reads(the_map, only=["nope"])


def test_limits_are_checked() -> None:
    the_map = modbus_map({"a": reg(0, "float64")})
    with pytest.raises(ValueError, match="max_registers"):
        plan_reads(the_map, max_registers=126)
    with pytest.raises(ValueError, match="max_bits"):
        plan_reads(the_map, max_bits=0)
    with pytest.raises(ValueError, match="a takes 4 registers, above 2"):
        plan_reads(the_map, max_registers=2)
    with pytest.raises(ValueError, match="not inside the block"):
        extract(ReadBlock("holding", 1, 10, ()), the_map.points["a"])


def fewest_blocks(items: list[tuple[int, int]], gap: int, limit: int) -> int:
    """Reference: the fewest blocks for sorted (address, end) items, by trying every split."""
    n = len(items)
    best = [0] + [n + 1] * n  # best[j]: fewest blocks for the first j items
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):  # items i..j-1 in one block
            run = items[i:j]
            fits = all(b[0] - a[1] <= gap for a, b in itertools.pairwise(run))
            if fits and run[-1][1] - run[0][0] <= limit:
                best[j] = min(best[j], best[i] + 1)
    return best[n]


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.sampled_from(NUMBER_TYPES), min_size=1, max_size=25),
    spaces=st.lists(st.integers(0, 12), min_size=25, max_size=25),
    gap=st.integers(0, 10),
    limit=st.integers(4, 30),
)
def test_greedy_plan_is_minimal_and_covers_every_point(
    sizes: list[str], spaces: list[int], gap: int, limit: int
) -> None:
    points: dict[str, dict[str, Any]] = {}
    address = 0
    for index, (dtype, space) in enumerate(zip(sizes, spaces, strict=False)):
        address += space
        points[f"p{index}"] = reg(address, dtype)
        address += REGISTER_COUNT[dtype]
    the_map = modbus_map(points, max_gap=gap)
    blocks = plan_reads(the_map, max_registers=limit)
    covered = [name for block in blocks for name in block.points]
    assert sorted(covered) == sorted(points)
    for block in blocks:
        assert block.count <= limit
        for name in block.points:
            extract(block, the_map.points[name])  # inside the block
    items = [(p.address, p.end) for p in sorted(the_map.points.values(), key=lambda p: p.address)]
    assert len(blocks) == fewest_blocks(items, gap, limit)


# --- validation at load ----------------------------------------------------------------

# A valid profile whose line numbers the broken variants below rely on.
BASE = """\
profile: lamp
metrics:
  lamp_on: {kind: state, type: bool}
  door_open: {kind: state, type: bool}
  dim_pct: {min: 0, max: 100, unit: "%"}
  power_w: {min: 0, max: 1000, unit: W}
  port1_on: {kind: state, type: bool}
  port2_on: {kind: state, type: bool}
modbus:
  points:
    lamp_on: {table: coil, address: 0}
    door_open: {table: holding, address: 20, type: bool, bit: 3}
    dim_pct: {table: holding, address: 0, type: uint16}
    power_w:
      table: input
      address: 10
      type: float32
      scale: 0.1
    port1_on: {table: coil, address: 1}
    port2_on: {table: coil, address: 2}
commands:
  set_dim:
    args: {pct: {type: number, min: 0, max: 100}}
    write: {point: dim_pct, value: pct}
  switch_on: {write: {point: lamp_on, value: true}}
  switch_port:
    args: {port: {type: integer, min: 1, max: 2}, "on": {type: bool}}
    write: {point: "port{port}_on", value: "on"}
  reboot: {description: Restart the controller (MQTT only)}
"""


def test_base_profile_is_valid() -> None:
    profile = parse_profile(BASE, "lamp.yaml")
    assert profile.modbus is not None
    assert profile.modbus.points["door_open"].bit == 3
    assert profile.modbus.points["lamp_on"].type == "bool"
    assert profile.commands["switch_port"].write is not None
    assert profile.commands["reboot"].write is None


BROKEN = [
    # (id, old text, new text, line, field, fragment of the message)
    (
        "overlap",
        "address: 0, type: uint16}",
        "address: 19, type: uint32}",
        12,
        "modbus.points.door_open.address",
        "holding 20 overlaps dim_pct (holding 19..20)",
    ),
    (
        "overlap-in-one-register",
        "address: 20, type: bool, bit: 3",
        "address: 0, type: bool, bit: 3",
        12,
        "modbus.points.door_open.address",
        "holding 0 overlaps dim_pct (holding 0)",
    ),
    (
        "same-bit-twice",
        "address: 20, type: bool, bit: 3",
        "address: 20, type: bool, bit: 3}\n    lamp_x: {table: holding, address: 20, "
        "type: bool, bit: 3",
        13,
        "modbus.points.lamp_x.bit",
        "bit 3 of holding 20 is door_open's",
    ),
    (
        "coil-overlap",
        "{table: coil, address: 2}",
        "{table: coil, address: 1}",
        20,
        "modbus.points.port2_on.address",
        "coil 1 overlaps port1_on",
    ),
    (
        "runs-past-65535",
        "address: 10\n",
        "address: 65535\n",
        16,
        "modbus.points.power_w.address",
        "a float32 takes 2 registers: 65535..65536 runs past 65535",
    ),
    (
        "address-out-of-range",
        "address: 10\n",
        "address: 65536\n",
        16,
        "modbus.points.power_w.address",
        "less than or equal to 65535",
    ),
    ("negative-address", "address: 10\n", "address: -1\n", 16, "modbus.points.power_w.address", ""),
    (
        "type-for-a-coil",
        "{table: coil, address: 0}",
        "{table: coil, address: 0, type: uint16}",
        11,
        "modbus.points.lamp_on.type",
        "a coil is one bit",
    ),
    (
        "scale-for-a-coil",
        "{table: coil, address: 0}",
        "{table: coil, address: 0, scale: 2}",
        11,
        "modbus.points.lamp_on.scale",
        "does not apply to a coil",
    ),
    (
        "number-metric-on-a-coil",
        "      table: input\n",
        "      table: coil\n",
        17,
        "modbus.points.power_w.type",
        "a coil is one bit",
    ),
    (
        "number-metric-on-a-coil-no-type",
        "    dim_pct: {table: holding, address: 0, type: uint16}",
        "    dim_pct: {table: coil, address: 5}",
        13,
        "modbus.points.dim_pct.table",
        "dim_pct is a number metric",
    ),
    (
        "bool-metric-as-number",
        "{table: coil, address: 0}",
        "{table: input, address: 0, type: uint16}",
        11,
        "modbus.points.lamp_on.type",
        "lamp_on is a bool metric",
    ),
    (
        "bool-without-bit",
        "type: bool, bit: 3",
        "type: bool",
        12,
        "modbus.points.door_open.bit",
        "names its bit",
    ),
    ("bit-above-15", "bit: 3", "bit: 16", 12, "modbus.points.door_open.bit", "15"),
    (
        "bit-of-a-number",
        "address: 0, type: uint16}",
        "address: 0, type: uint16, bit: 2}",
        13,
        "modbus.points.dim_pct.bit",
        "only a bool",
    ),
    ("unknown-type", "type: float32", "type: float16", 17, "modbus.points.power_w.type", "'int16'"),
    ("missing-type", "      type: float32\n", "", 14, "modbus.points.power_w.type", "required"),
    ("unknown-table", "table: input", "table: inputs", 15, "modbus.points.power_w.table", ""),
    ("zero-scale", "scale: 0.1", "scale: 0", 18, "modbus.points.power_w.scale", "other than 0"),
    ("bad-word-order", "  points:", "  word_order: middle\n  points:", 10, "modbus.word_order", ""),
    (
        "non-metric-point",
        "    port2_on: {table: coil, address: 2}",
        "    port3_on: {table: coil, address: 3}",
        20,
        "modbus.points.port3_on",
        "'port3_on' is not a metric",
    ),
    (
        "write-to-read-only-table",
        "point: dim_pct, value: pct",
        "point: power_w, value: pct",
        24,
        "commands.set_dim.write.point",
        "read-only input table",
    ),
    (
        "write-to-discrete",
        "{table: coil, address: 0}",
        "{table: discrete, address: 0}",
        25,
        "commands.switch_on.write.point",
        "read-only discrete table",
    ),
    (
        "write-to-unknown-point",
        "point: dim_pct, value: pct",
        "point: dimming, value: pct",
        24,
        "commands.set_dim.write.point",
        "dimming is not a point",
    ),
    (
        "write-undeclared-arg",
        "point: dim_pct, value: pct",
        "point: dim_pct, value: percent",
        24,
        "commands.set_dim.write.value",
        "'percent' is not an argument",
    ),
    (
        "write-bool-to-number",
        "point: lamp_on, value: true",
        "point: dim_pct, value: true",
        25,
        "commands.switch_on.write.value",
        "writes a bool to dim_pct",
    ),
    (
        "write-number-arg-to-bool",
        "point: dim_pct, value: pct",
        "point: lamp_on, value: pct",
        24,
        "commands.set_dim.write.value",
        "writes a number to lamp_on",
    ),
    (
        "undeclared-placeholder",
        '"port{port}_on"',
        '"port{n}_on"',
        28,
        "commands.switch_port.write.point",
        "{n} is not an argument",
    ),
    (
        "unbounded-placeholder",
        "{type: integer, min: 1, max: 2}",
        "{type: integer, min: 1}",
        28,
        "commands.switch_port.write.point",
        "must be a bounded integer",
    ),
    (
        "number-placeholder",
        "{type: integer, min: 1, max: 2}",
        "{type: number, min: 1, max: 2}",
        28,
        "commands.switch_port.write.point",
        "must be a bounded integer",
    ),
    (
        "placeholder-names-a-missing-point",
        "{type: integer, min: 1, max: 2}",
        "{type: integer, min: 1, max: 3}",
        28,
        "commands.switch_port.write.point",
        "port3_on (port=3) is not a point",
    ),
    (
        "placeholder-with-format",
        '"port{port}_on"',
        '"port{port!r}_on"',
        28,
        "commands.switch_port.write",
        "plain argument name",
    ),
    (
        "unquoted-on",
        'value: "on"',
        "value: on",
        28,
        "commands.switch_port.write.value",
        'quote it (value: "on")',
    ),
    (
        "fractional-integer-bound",
        "min: 1, max: 2",
        "min: 1.5, max: 2",
        27,
        "commands.switch_port.args.port",
        "bounds are integers",
    ),
    (
        "bounded-bool-arg",
        '"on": {type: bool}',
        '"on": {type: bool, max: 1}',
        27,
        "commands.switch_port.args.on",
        "no min or max",
    ),
    (
        "unknown-arg-type",
        "{type: number, min: 0",
        "{type: float, min: 0",
        23,
        "commands.set_dim.args.pct.type",
        "",
    ),
    (
        "write-without-a-map",
        "modbus:\n  points:\n",
        "unused:\n  points:\n",
        9,
        "unused",
        "unknown field 'unused'",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "fragment"),
    [case[1:] for case in BROKEN],
    ids=[case[0] for case in BROKEN],
)
def test_broken_map_names_file_line_and_field(
    old: str, new: str, line: int, field: str, fragment: str
) -> None:
    text = BASE.replace(old, new, 1)
    assert text != BASE
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "lamp.yaml")
    problem = info.value.problems[0]
    assert (problem.file, problem.line, problem.field) == ("lamp.yaml", line, field)
    assert str(info.value).startswith(f"lamp.yaml:{line}: {field}: ")
    assert fragment in problem.message


def test_a_write_needs_a_map() -> None:
    start, end = BASE.index("modbus:"), BASE.index("commands:")
    text = BASE[:start] + BASE[end:]
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "lamp.yaml")
    assert [(p.line, p.field) for p in info.value.problems] == [
        (12, "commands.set_dim.write"),
        (13, "commands.switch_on.write"),
        (16, "commands.switch_port.write"),
    ]
    assert "needs the profile's modbus: section" in str(info.value)
    # Without writes, commands are for MQTT devices alone.
    text = text[: text.index("  set_dim:")] + "  reboot: {}\n"
    assert parse_profile(text, "lamp.yaml").commands["reboot"].write is None


def test_several_map_problems_are_reported_together() -> None:
    text = BASE.replace("address: 0, type: uint16}", "address: 19, type: uint32}").replace(
        "{table: coil, address: 2}", "{table: coil, address: 1}"
    )
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "lamp.yaml")
    assert [(p.line, p.field) for p in info.value.problems] == [
        (20, "modbus.points.port2_on.address"),
        (12, "modbus.points.door_open.address"),
    ]


def test_map_orders_are_inherited_and_overridden() -> None:
    text = BASE.replace("  points:\n", "  byte_order: little\n  word_order: little\n  points:\n")
    text = text.replace("      scale: 0.1\n", "      scale: 0.1\n      word_order: big\n")
    profile = parse_profile(text, "lamp.yaml")
    assert profile.modbus is not None
    points = profile.modbus.points
    assert (points["power_w"].byte_order, points["power_w"].word_order) == ("little", "big")
    assert (points["dim_pct"].byte_order, points["dim_pct"].word_order) == ("little", "little")
    assert "byte_order" not in points["lamp_on"].model_fields_set  # not for a coil


# --- commands ----------------------------------------------------------------------------


def test_command_args_are_checked_and_become_a_write() -> None:
    commands = parse_profile(BASE, "lamp.yaml").commands
    port = commands["switch_port"]
    args = port.check_args({"port": 2.0, "on": False})
    assert args == {"port": 2, "on": False}
    assert not isinstance(args, CommandRefused)
    assert port.modbus_write(args) == ModbusWrite("port2_on", False, readback=True)
    assert sorted(t for _, t in port.write_targets()) == ["port1_on", "port2_on"]
    dim = commands["set_dim"]
    assert dim.modbus_write({"pct": 40}) == ModbusWrite("dim_pct", 40, readback=True)
    assert commands["switch_on"].modbus_write({}) == ModbusWrite("lamp_on", True, readback=True)
    assert commands["reboot"].modbus_write({}) is None

    refusals: list[tuple[dict[str, object], str]] = [
        ({"port": 3, "on": True}, "above the maximum 2"),
        ({"port": 1.5, "on": True}, "must be an integer"),
        ({"port": True, "on": True}, "must be an integer"),
        ({"port": 1, "on": 1}, "must be true or false"),
        ({"port": 1}, "'on' is missing"),
        ({"port": 1, "on": True, "x": 1}, "unknown argument 'x'"),
    ]
    for bad, why in refusals:
        refused = port.check_args(bad)
        assert isinstance(refused, CommandRefused), bad
        assert why in refused.detail
    refused = dim.check_args({"pct": math.nan})
    assert isinstance(refused, CommandRefused)
    assert "finite" in refused.detail
    assert dim.check_args({"pct": -1}) == CommandRefused(
        "argument 'pct': -1 is below the minimum 0"
    )


# --- the shipped profiles ------------------------------------------------------------------

WITH_MAPS = ["cabinet-monitor", "env-station", "lamp-controller", "pole-tilt", "port-meter-4"]


@pytest.fixture(scope="module")
def catalog() -> ProfileCatalog:
    return load_catalog()


@pytest.mark.parametrize("name", WITH_MAPS)
def test_shipped_maps_cover_every_metric_and_plan(catalog: ProfileCatalog, name: str) -> None:
    profile = catalog[name]
    assert profile.modbus is not None
    assert set(profile.modbus.points) == set(profile.metrics)
    blocks = plan_reads(profile.modbus)
    assert sorted(n for b in blocks for n in b.points) == sorted(profile.metrics)
    for block in blocks:
        limit = MAX_BITS_PER_READ if block.table in ("coil", "discrete") else 125
        assert block.count <= limit
        values: list[int] | list[bool] = (
            [False] * block.count if block.table in ("coil", "discrete") else [0] * block.count
        )
        assert set(decode_block(block, profile.modbus, values)) == set(block.points)


def test_shipped_plans(catalog: ProfileCatalog) -> None:
    def plan(name: str) -> list[tuple[str, int, int]]:
        the_map = catalog[name].modbus
        assert the_map is not None
        return spans(plan_reads(the_map))

    assert plan("port-meter-4") == [("coil", 0, 4), ("input", 0, 56)]
    assert plan("lamp-controller") == [("coil", 0, 1), ("holding", 0, 1), ("input", 0, 8)]
    assert plan("env-station") == [("input", 0, 18)]
    assert plan("cabinet-monitor") == [("discrete", 0, 1), ("input", 0, 9)]
    assert plan("pole-tilt") == [("holding", 0, 4)]
    assert catalog["sos-button"].modbus is None


def test_shipped_commands(catalog: ProfileCatalog) -> None:
    lamp = catalog["lamp-controller"].commands
    assert set(lamp) == {"set_dim", "switch_on", "switch_off"}
    assert lamp["set_dim"].modbus_write({"pct": 40}) == ModbusWrite("dim_pct", 40, True)
    assert lamp["switch_off"].modbus_write({}) == ModbusWrite("lamp_on", False, True)
    meter = catalog["port-meter-4"].commands
    assert set(meter) == {"switch_port"}
    args = meter["switch_port"].check_args({"port": 3, "on": True})
    assert not isinstance(args, CommandRefused)
    assert meter["switch_port"].modbus_write(args) == ModbusWrite("port3_switch_on", True, True)
    assert [t for _, t in meter["switch_port"].write_targets()] == [
        f"port{n}_switch_on" for n in range(1, 5)
    ]


def test_shipped_maps_decode_realistic_answers(catalog: ProfileCatalog) -> None:
    env = catalog["env-station"].modbus
    assert env is not None
    (block,) = plan_reads(env)
    registers = [0] * block.count
    registers[4:6] = [0x0000, 0x4148]  # temp_c 12.5 as float32, low word first
    registers[16:18] = [0x86A0, 0x0001]  # illuminance 100000 lx, low word first
    decoded = decode_block(block, env, registers)
    assert (decoded["temp_c"], decoded["illuminance_lux"]) == (12.5, 100000)

    meter = catalog["port-meter-4"].modbus
    assert meter is not None
    block = plan_reads(meter)[1]
    registers = [0] * block.count
    registers[16:24] = [2301, 1234, 0, 28382, 950, 0, 0x0001, 0xE240]  # port 2
    decoded = decode_block(block, meter, registers)
    assert decoded["port2_voltage_v"] == pytest.approx(230.1)
    assert decoded["port2_current_a"] == pytest.approx(12.34)
    assert decoded["port2_power_w"] == pytest.approx(2838.2)
    assert decoded["port2_power_factor"] == pytest.approx(0.95)
    assert decoded["port2_energy_kwh"] == pytest.approx(1234.56)

    cabinet = catalog["cabinet-monitor"].modbus
    assert cabinet is not None
    block = plan_reads(cabinet)[1]
    registers = [0xFF38, 655, 12, 1, 87, 0, 0, 0, 0b10]  # -20.0 °C, 65.5 %, smoke
    decoded = decode_block(block, cabinet, registers)
    assert decoded["temp_c"] == pytest.approx(-20.0)
    assert (decoded["water_detected"], decoded["smoke_detected"]) == (False, True)

    tilt = catalog["pole-tilt"].modbus
    assert tilt is not None
    decoded = decode_block(plan_reads(tilt)[0], tilt, [0xFF85, 250, 271, 1500])
    assert decoded["tilt_x_deg"] == pytest.approx(-1.23)
    assert decoded["vibration_g"] == pytest.approx(1.5)


def test_decoders_are_kept_per_map() -> None:
    points = {"v": {"table": "input", "address": 0, "type": "uint16", "scale": 0.5}}
    tenths = modbus_map({"v": {**points["v"], "scale": 0.1}})
    halves = modbus_map(points)
    block = plan_reads(halves)[0]
    assert block == plan_reads(tenths)[0]
    for _ in range(2):
        assert decode_block(block, halves, [10]) == {"v": 5.0}
        assert decode_block(block, tenths, [10]) == {"v": 1.0}
