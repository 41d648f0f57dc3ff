"""1F1B schedules that respect the token-level ordering of sliced sequences.

Forward runs chunks in lane order. Backward order is the forward order with each sequence's
slice chain reversed (B of slice j+1 before B of slice j, because gradients of earlier K/V come
from later slices). Stage p keeps P-p-1 forwards in flight beyond the furthest chunk whose
backward is due, which is plain 1F1B without slices and never drains the pipeline after a chain.
If the result could deadlock across stages (checked by replaying it), the lane falls back to
all-forwards-then-all-backwards, which never deadlocks.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

from proto import Chunk, Op
from proto.validation import schedule_stuck_points


@functools.lru_cache(maxsize=1 << 17)
def op_of(kind: Literal["F", "B"], chunk: int) -> Op:
    """The op (kind, chunk), one shared instance per pair: ops are frozen, and a plan of thousands of lanes would
    otherwise hold one object per op of every stage of every lane (allocated, then scanned by the collector)."""
    return Op(kind=kind, chunk=chunk)


def backward_order(chunks: Sequence[Chunk]) -> list[int]:
    """Chunk indices in backward order: forward order with every slice chain reversed in place."""
    chunks_of: dict[int, list[int]] = {}  # seq id -> chunks holding a piece of it, in lane order
    for c, chunk in enumerate(chunks):
        for seg in chunk.segments:
            chunks_of.setdefault(seg.seq_id, []).append(c)
    order = list(range(len(chunks)))
    for chain in chunks_of.values():
        if len(chain) > 1:
            for pos, c in zip(chain, reversed(chain), strict=True):
                order[pos] = c
    return order


def _one_f_one_b(num_chunks: int, b_order: list[int], stage: int, num_stages: int) -> list[Op]:
    """1F1B generalised to slice chains: B(b_order[j]) runs once `warmup` forwards past the furthest
    chunk among b_order[:j+1] are done, so every stage keeps its P-p-1 chunks in flight beyond a chain
    instead of draining the pipeline at the end of each chain."""
    warmup = num_stages - stage - 1
    ops: list[Op] = []
    next_f = 0
    furthest = -1
    for chunk in b_order:
        furthest = max(furthest, chunk)
        needed = min(num_chunks, furthest + 1 + warmup)
        while next_f < needed:
            ops.append(op_of("F", next_f))
            next_f += 1
        ops.append(op_of("B", chunk))
    return ops


def build_schedule(chunks: Sequence[Chunk], num_stages: int) -> list[list[Op]]:
    """Per-stage op lists for a lane's chunks (in their lane order)."""
    n = len(chunks)
    b_order = backward_order(chunks)
    schedule = [_one_f_one_b(n, b_order, p, num_stages) for p in range(num_stages)]
    if schedule_stuck_points(schedule):
        flat = [op_of("F", c) for c in range(n)] + [op_of("B", c) for c in b_order]
        schedule = [list(flat) for _ in range(num_stages)]
    return schedule
