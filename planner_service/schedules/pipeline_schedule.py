"""1F1B schedules that respect the token-level ordering of sliced sequences.

Forward runs chunks in lane order. Backward order is the forward order with each sequence's
slice chain reversed (B of slice j+1 before B of slice j, because gradients of earlier K/V come
from later slices). Stage p keeps P-p-1 forwards in flight beyond the furthest chunk whose
backward is due, which is plain 1F1B without slices and never drains the pipeline after a chain.

That warm-up counts chunks. A slice chain is one unit of the pipeline, though: the last stage can start
its backward only after the chain's last forward, so with chains the stages nearer the tail starve while
the next chain's forwards trickle in one per backward of the previous one. With `warmup_groups` = k >= 1,
stage p also runs ahead to the end of the k*(P-p-1)-th slice group after the one being drained (a *slice
group*: the chunks joined by sliced sequences; a chunk of whole sequences is a group of its own). That is
1F1B with chains as its micro-batches: fewer bubbles, more activations in flight. Which depth pays is the
planner's choice per lane (memory and recompute decide it), so it is a knob, not a rule.

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
def op_of(kind: Literal["F", "B", "W"], chunk: int) -> Op:
    """The op (kind, chunk), one shared instance per pair: ops are frozen, and a plan of thousands of lanes would
    otherwise hold one object per op of every stage of every lane (allocated, then scanned by the collector)."""
    return Op(kind=kind, chunk=chunk)


def max_in_flight(ops: Sequence[Op]) -> int:
    """The most chunks a stage's schedule holds at once (forwards run, backwards not yet): what the warm-up sets."""
    held = peak = 0
    for op in ops:
        held += {"F": 1, "B": -1}.get(op.kind, 0)
        peak = max(peak, held)
    return peak


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


def slice_group_ends(chunks: Sequence[Chunk]) -> list[int]:
    """Per chunk, the last chunk of its slice group: the shortest run of chunks around it that no sliced
    sequence crosses (a chunk of whole sequences ends its own group)."""
    last_of: dict[int, int] = {}
    for c, chunk in enumerate(chunks):
        for seg in chunk.segments:
            last_of[seg.seq_id] = c
    ends = [0] * len(chunks)
    start = 0
    reach = -1
    for c, chunk in enumerate(chunks):
        reach = max([reach, *(last_of[seg.seq_id] for seg in chunk.segments)])
        if reach == c:  # nothing started so far goes on past c: the group closes here
            ends[start : c + 1] = [c] * (c + 1 - start)
            start = c + 1
    return ends


def _one_f_one_b(
    num_chunks: int, b_order: list[int], stage: int, num_stages: int, ahead: list[int] | None = None
) -> list[Op]:
    """1F1B generalised to slice chains: B(b_order[j]) runs once `warmup` forwards past the furthest
    chunk among b_order[:j+1] are done, so every stage keeps its P-p-1 chunks in flight beyond a chain
    instead of draining the pipeline at the end of each chain; and, with `ahead` (per chunk, the last chunk
    the stage must have forwarded before a backward that reaches it), at least that far."""
    warmup = num_stages - stage - 1
    ops: list[Op] = []
    next_f = 0
    furthest = -1
    for chunk in b_order:
        furthest = max(furthest, chunk)
        needed = min(num_chunks, max(furthest + 1 + warmup, ahead[furthest] + 1 if ahead else 0))
        while next_f < needed:
            ops.append(op_of("F", next_f))
            next_f += 1
        ops.append(op_of("B", chunk))
    return ops


def _groups_ahead(group_end: list[int], depth: int) -> list[int]:
    """Per chunk, the last chunk of the `depth`-th slice group after its own (the lane's last chunk if fewer)."""
    lasts = sorted(set(group_end))  # each group's last chunk, in lane order
    index = {end: g for g, end in enumerate(lasts)}
    return [lasts[min(index[end] + depth, len(lasts) - 1)] for end in group_end]


def build_schedule(chunks: Sequence[Chunk], num_stages: int, warmup_groups: int = 0) -> list[list[Op]]:
    """Per-stage op lists for a lane's chunks (in their lane order); `warmup_groups` = k >= 1 also keeps
    k*(P-p-1) slice groups in flight on stage p (see the module docstring; 0: the per-chunk warm-up only)."""
    if warmup_groups < 0:
        raise ValueError(f"warmup_groups must be >= 0, got {warmup_groups}")
    n = len(chunks)
    b_order = backward_order(chunks)
    group_end = slice_group_ends(chunks) if warmup_groups else []
    schedule = [
        _one_f_one_b(
            n,
            b_order,
            p,
            num_stages,
            _groups_ahead(group_end, warmup_groups * (num_stages - p - 1)) if warmup_groups else None,
        )
        for p in range(num_stages)
    ]
    if schedule_stuck_points(schedule):
        flat = [op_of("F", c) for c in range(n)] + [op_of("B", c) for c in b_order]
        schedule = [list(flat) for _ in range(num_stages)]
    return schedule
