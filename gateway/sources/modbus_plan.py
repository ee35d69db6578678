"""Read planning for one device: coalesce its points into as few block reads as the protocol allows.

Points of the same table are sorted by address and merged into one read while the hole between them is at most
``max_gap`` registers (``16 * max_gap`` bits for coils and discrete inputs) and the block stays within the
device's limit (``max_read`` registers, 2000 bits). Reading a few unused registers costs two bytes each; a
separate request costs a whole round trip (and on RS-485 a turnaround), so small holes are always worth reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hw.modbus.codec import decode_point
from hw.modbus.model import MAX_READ_BITS, Function, Point, PointValue

__all__ = ["ReadBlock", "decode_block", "plan_reads"]


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers (or bits) of ``function`` from ``start``, and the points inside."""

    function: Function
    start: int
    count: int
    points: tuple[tuple[Point, int], ...]  # each point with its offset from ``start``


def plan_reads(points: Sequence[Point], *, max_gap: int, max_registers: int) -> tuple[ReadBlock, ...]:
    """The block reads that cover ``points``, tables in a fixed order, each table's blocks by address."""
    blocks: list[ReadBlock] = []
    for function in Function:
        table = sorted((p for p in points if p.function is function), key=lambda p: p.address)
        if not table:
            continue
        limit = MAX_READ_BITS if function.is_bits else max_registers
        gap = 16 * max_gap if function.is_bits else max_gap
        group = [table[0]]
        end = table[0].end
        for point in table[1:]:
            if point.address - end <= gap and point.end - group[0].address <= limit:
                group.append(point)
                end = max(end, point.end)
                continue
            blocks.append(_block(function, group, end))
            group, end = [point], point.end
        blocks.append(_block(function, group, end))
    return tuple(blocks)


def _block(function: Function, group: list[Point], end: int) -> ReadBlock:
    start = group[0].address
    return ReadBlock(function, start, end - start, tuple((p, p.address - start) for p in group))


def decode_block(block: ReadBlock, words: Sequence[int]) -> list[tuple[Point, PointValue]]:
    """Each point of ``block`` with its value decoded from the block's answer ``words`` (bits as 0/1 or bools)."""
    return [(point, decode_point(point, words[offset : offset + point.count])) for point, offset in block.points]
