"""Turning a lane's sequences into chunks: one slicer, the packers, and the two chunking policies built on them.

- Slicer: `slice_sequence` cuts a sequence at equal-cost points (`equal_cost_cuts`); later slices attend
  to more context, so they come out shorter.
- Packers: `pack_next_fit` (Megatron-style fixed micro-batches in data order, the `static` baseline) and
  one best-fit-decreasing packer, `best_fit_decreasing`, under a cost cap and a token cap, optionally into
  chunks already open (tail slices). `pack_best_fit_decreasing` is its token-only form (cost = tokens).
- Policies: `capped_chunks` (the `greedy` plan: slice what exceeds a token cap into ceil(L / cap) pieces,
  each its own chunk, pack the rest by tokens) and `cost_balanced_chunks` (InfiniPipe's elastic pipeline:
  about `target_chunks` chunks of equal cost, tail slices shared with short sequences, long-first order).
  The two are kept apart on purpose: they cut at different points and pack under different caps, so one
  cannot stand in for the other without changing plans.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from proto import Chunk, CostProfile, Segment

COST_SLACK = 1e-12
"""Rounding slack when a short sequence's cost is compared with a chunk's cost room (costs are float sums)."""
SLICE_COST_SLACK = 1.0001
"""A sequence is sliced only when it costs more than this many chunk-cost caps: one within rounding of the
cap stays whole."""


def sequence_cost(profile: CostProfile, length: int, context: int = 0) -> float:
    """Relative forward cost of a segment: causal attention with its context plus the linear part."""
    return profile.attn_s_per_token2 * ((context + length) ** 2 - context**2) + profile.linear_s_per_token * length


# ---- the slicer -------------------------------------------------------------------------------------------
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
        if a2 > 0:
            x = (-a1 + math.sqrt(a1 * a1 + 4 * a2 * target)) / (2 * a2)
        else:  # no attention term: linear in x; a profile with no compute cost at all cuts equal token counts
            x = target / a1 if a1 > 0 else length * k / num_slices
        cut = min(max(round(x), cuts[-1] + 1), length - (num_slices - k))
        cuts.append(cut)
    cuts.append(length)
    return cuts


def slice_sequence(profile: CostProfile, seq_id: int, length: int, num_slices: int) -> list[Segment]:
    cuts = equal_cost_cuts(profile, length, num_slices)
    return [Segment(seq_id=seq_id, start=a, end=b) for a, b in itertools.pairwise(cuts)]


# ---- the packers ------------------------------------------------------------------------------------------
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


@dataclass(slots=True)
class OpenChunk:
    """A chunk being filled by the packer: its segments so far, their cost and their tokens."""

    segments: list[Segment]
    cost: float
    tokens: int


def best_fit_decreasing(
    items: Iterable[tuple[int, int, float]],
    *,
    cost_cap: float,
    token_cap: int,
    open_chunks: Sequence[OpenChunk] = (),
) -> list[OpenChunk]:
    """Best fit for whole sequences (seq_id, length, cost), given costliest first: each goes to the chunk
    with the least cost room left that still holds it under both caps (the first such on ties), or to a new
    chunk. Returns `open_chunks` (filled in place) followed by the new chunks in order of opening."""
    chunks = list(open_chunks)
    for seq_id, length, cost in items:
        best = -1
        best_room = math.inf
        for b, chunk in enumerate(chunks):
            room = cost_cap - chunk.cost
            if cost <= room + COST_SLACK and chunk.tokens + length <= token_cap and room < best_room:
                best, best_room = b, room
        if best < 0:
            chunks.append(OpenChunk(segments=[], cost=0.0, tokens=0))
            best = len(chunks) - 1
        chunk = chunks[best]
        chunk.segments.append(Segment(seq_id=seq_id, start=0, end=length))
        chunk.cost += cost
        chunk.tokens += length
    return chunks


def pack_best_fit_decreasing(items: Sequence[tuple[int, int]], cap: int) -> list[Chunk]:
    """Pack whole sequences into as few chunks of at most `cap` tokens as best-fit decreasing finds."""
    ordered = sorted(items, key=lambda x: (-x[1], x[0]))
    for seq_id, length in ordered:
        assert length <= cap, f"sequence {seq_id} ({length} tokens) exceeds the chunk cap {cap}"
    packed = best_fit_decreasing(((i, n, float(n)) for i, n in ordered), cost_cap=cap, token_cap=cap)
    return [Chunk(segments=c.segments) for c in packed]


# ---- the chunking policies --------------------------------------------------------------------------------
def capped_chunks(
    profile: CostProfile, items: Sequence[tuple[int, int]], *, token_cap: int, allow_slicing: bool
) -> list[Chunk]:
    """Slice sequences over `token_cap` tokens into ceil(L / cap) pieces (when allowed), pack the rest by
    tokens (under the cap, or the longest unsliced sequence if that is longer); slices first."""
    sliced: list[Chunk] = []
    short: list[tuple[int, int]] = []
    for seq_id, length in items:
        if length > token_cap and allow_slicing:
            pieces = slice_sequence(profile, seq_id, length, math.ceil(length / token_cap))
            sliced += [Chunk(segments=[seg]) for seg in pieces]
        else:
            short.append((seq_id, length))
    return sliced + pack_best_fit_decreasing(short, max(token_cap, max((n for _, n in short), default=1)))


def cost_balanced_chunks(
    profile: CostProfile,
    items: Sequence[tuple[int, int]],
    *,
    target_chunks: int,
    token_cap: int,
    allow_slicing: bool,
) -> list[Chunk]:
    """InfiniPipe's elastic pipeline for one lane's sequences (seq_id, length).

    The lane's work is cut into about `target_chunks` chunks of equal cost. A sequence costlier than one
    chunk (or longer than the memory-derived token cap) is sliced at equal-cost cut points; its tail slice
    stays open for short sequences. Short sequences are packed best-fit decreasing by cost under the chunk
    cost and token caps; a chunk never holds slices of two different long sequences. Chunks are ordered
    long-first (slices in token order), so the 1F1B cool-down runs on the cheapest chunks.
    """
    if not items:
        return []
    total = sum(sequence_cost(profile, n) for _, n in items)
    cost_cap = total / max(target_chunks, 1)
    long_chunks: list[list[Segment]] = []
    tails: list[OpenChunk] = []
    shorts: list[tuple[int, int, float]] = []
    for seq_id, length in sorted(items, key=lambda x: (-x[1], x[0])):
        c = sequence_cost(profile, length)
        if allow_slicing and (c > cost_cap * SLICE_COST_SLACK or length > token_cap):
            pieces = max(math.ceil(c / cost_cap), math.ceil(length / token_cap))
            segs = slice_sequence(profile, seq_id, length, pieces)
            long_chunks.extend([seg] for seg in segs[:-1])
            tail = segs[-1]
            tails.append(
                OpenChunk(
                    segments=[tail],
                    cost=sequence_cost(profile, tail.num_tokens, context=tail.start),
                    tokens=tail.num_tokens,
                )
            )
            long_chunks.append(tails[-1].segments)  # the same list: shorts packed into the tail land here
        elif length > token_cap or c > cost_cap:
            long_chunks.append([Segment(seq_id=seq_id, start=0, end=length)])
        else:
            shorts.append((seq_id, length, c))
    filled = best_fit_decreasing(shorts, cost_cap=cost_cap, token_cap=token_cap, open_chunks=tails)
    packed = [c.segments for c in filled[len(tails) :]]
    packed.sort(key=lambda segs: -sum(sequence_cost(profile, s.num_tokens) for s in segs))
    return [Chunk(segments=segs) for segs in long_chunks + packed]


def costliest_last(profile: CostProfile, chunks: Sequence[Chunk], lengths: dict[int, int]) -> list[Chunk]:
    """The chunks with the costliest one that holds no non-final slice moved to the end.

    The last backward op of a lane is what the data-parallel gradient sync overlaps with: a long last op
    hides it, a short one leaves it exposed. Only a chunk of whole sequences or final slices may move (a
    later position keeps every slice after the earlier slices of its sequence)."""
    movable = [c for c, chunk in enumerate(chunks) if all(seg.end == lengths[seg.seq_id] for seg in chunk.segments)]
    if not movable:
        return list(chunks)
    cost = [sum(sequence_cost(profile, s.num_tokens, context=s.start) for s in chunks[c].segments) for c in movable]
    pick = movable[max(range(len(movable)), key=lambda i: (cost[i], -i))]
    return [chunk for c, chunk in enumerate(chunks) if c != pick] + [chunks[pick]]
