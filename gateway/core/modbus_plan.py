"""Block reads for a Modbus register map: the fewest requests that fetch every point.

Pure planning, no I/O: the Modbus adapter sends one request per ReadBlock and
hands the answer to its decoder.

The rule (greedy, left to right): per table, in function-code order (coil 1,
discrete 2, holding 3, input 4), the points are sorted by address. A block starts
at the first point not yet read; each following point joins it when the unread
addresses between the block's end and the point are at most the map's `max_gap`
and the block, grown to take the point, still spans at most 125 registers (2000
bits for coils and discrete inputs). The first point that cannot join starts the
next block.

Why that is the minimal number of blocks: points in one table do not overlap
(the profile check refuses that, bits of one register aside), so a block holds a
run of consecutive points, and any part of a run that fits the two limits fits
them too. Hence the k-th greedy block ends at or after the k-th block of any
other plan, and no plan needs fewer blocks.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from gateway.core.profiles import BIT_TABLES, ModbusMap, ModbusPoint, RegisterTable

MAX_REGISTERS_PER_READ: Final = 125  # Modbus: read holding/input registers, 125 at most
MAX_BITS_PER_READ: Final = 2000  # Modbus: read coils/discrete inputs, 2000 at most
TABLE_ORDER: Final[tuple[RegisterTable, ...]] = ("coil", "discrete", "holding", "input")


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: `count` addresses of `table` from `start`, and the points in them."""

    table: RegisterTable
    start: int
    count: int
    points: tuple[str, ...]

    @property
    def end(self) -> int:
        """The address after the block's last one."""
        return self.start + self.count


def extract(block: ReadBlock, point: ModbusPoint) -> slice:
    """Where `point` lies in the values read for `block`."""
    if point.table != block.table or point.address < block.start or point.end > block.end:
        raise ValueError(
            f"{point.table} {point.address}..{point.end - 1} is not inside the block "
            f"{block.table} {block.start}..{block.end - 1}"
        )
    offset = point.address - block.start
    return slice(offset, offset + point.count)


def plan_reads(
    modbus_map: ModbusMap,
    *,
    only: Collection[str] | None = None,
    max_registers: int = MAX_REGISTERS_PER_READ,
    max_bits: int = MAX_BITS_PER_READ,
) -> list[ReadBlock]:
    """The block reads that fetch every point of the map (or the points in `only`).

    Deterministic: blocks come in TABLE_ORDER, then by address; the points of a
    block by address, then name. `only` serves a readback after a write; the
    lower limits serve devices that answer fewer addresses per request.
    """
    if not 1 <= max_registers <= MAX_REGISTERS_PER_READ:
        raise ValueError(f"max_registers must be 1..{MAX_REGISTERS_PER_READ}")
    if not 1 <= max_bits <= MAX_BITS_PER_READ:
        raise ValueError(f"max_bits must be 1..{MAX_BITS_PER_READ}")
    points = modbus_map.points
    if only is not None:
        if unknown := sorted(set(only) - set(points)):
            raise KeyError(f"not points of the map: {', '.join(unknown)}")
        points = {name: points[name] for name in only}
    gap = modbus_map.max_gap
    blocks: list[ReadBlock] = []
    for table in TABLE_ORDER:
        limit = max_bits if table in BIT_TABLES else max_registers
        run = sorted((p.address, name, p.end) for name, p in points.items() if p.table == table)
        start = end = 0
        names: list[str] = []
        for address, name, stop in run:
            if names and address - end <= gap and max(end, stop) - start <= limit:
                end = max(end, stop)
                names.append(name)
                continue
            if names:
                blocks.append(ReadBlock(table, start, end - start, tuple(names)))
            if stop - address > limit:
                raise ValueError(f"{name} takes {stop - address} registers, above {limit}")
            start, end, names = address, stop, [name]
        if names:
            blocks.append(ReadBlock(table, start, end - start, tuple(names)))
    return blocks
