"""Turning sequences into chunks: fixed-budget packing, cost-balanced packing, equal-cost slicing."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from proto import Chunk, CostProfile, Segment


def sequence_cost(profile: CostProfile, length: int, context: int = 0) -> float:
    """Relative forward cost of a segment: causal attention with its context plus the linear part."""
    return profile.attn_s_per_token2 * ((context + length) ** 2 - context**2) + profile.linear_s_per_token * length


def pack_next_fit(items: Sequence[tuple[int, int]], budget: int) -> list[Chunk]:
    """Megatron-style packing: fill micro-batches of at most `budget` tokens in data order.

    `items` are (seq_id, length) with every length <= budget.
    """
    chunks: list[Chunk] = []
    current: list[Segment] = []
    used = 0
    for seq_id, length in items:
        assert length <= budget, f"sequence {seq_id} ({length} tokens) exceeds the micro-batch budget {budget}"
        if current and used + length > budget:
            chunks.append(Chunk(segments=current))
            current, used = [], 0
        current.append(Segment(seq_id=seq_id, start=0, end=length))
        used += length
    if current:
        chunks.append(Chunk(segments=current))
    return chunks


def pack_best_fit_decreasing(items: Sequence[tuple[int, int]], cap: int) -> list[Chunk]:
    """Pack whole sequences into as few chunks of at most `cap` tokens as best-fit decreasing finds."""
    bins: list[list[Segment]] = []
    free: list[int] = []
    for seq_id, length in sorted(items, key=lambda x: (-x[1], x[0])):
        assert length <= cap, f"sequence {seq_id} ({length} tokens) exceeds the chunk cap {cap}"
        best = -1
        for b, room in enumerate(free):
            if length <= room and (best < 0 or room < free[best]):
                best = b
        if best < 0:
            bins.append([])
            free.append(cap)
            best = len(bins) - 1
        bins[best].append(Segment(seq_id=seq_id, start=0, end=length))
        free[best] -= length
    return [Chunk(segments=b) for b in bins]


def equal_cost_cuts(profile: CostProfile, length: int, num_slices: int) -> list[int]:
    """Cut points 0 = x0 < x1 < ... < xn = length giving slices of equal attention+linear cost.

    The cumulative cost of the first x tokens is a2*x^2 + a1*x; later slices attend to more context,
    so they come out shorter.
    """
    num_slices = max(1, min(num_slices, length))
    a2, a1 = profile.attn_s_per_token2, profile.linear_s_per_token
    total = a2 * length**2 + a1 * length
    cuts = [0]
    for k in range(1, num_slices):
        target = total * k / num_slices
        x = (-a1 + math.sqrt(a1 * a1 + 4 * a2 * target)) / (2 * a2) if a2 > 0 else target / a1
        cut = min(max(round(x), cuts[-1] + 1), length - (num_slices - k))
        cuts.append(cut)
    cuts.append(length)
    return cuts


def slice_sequence(profile: CostProfile, seq_id: int, length: int, num_slices: int) -> list[Segment]:
    cuts = equal_cost_cuts(profile, length, num_slices)
    return [Segment(seq_id=seq_id, start=a, end=b) for a, b in itertools.pairwise(cuts)]
