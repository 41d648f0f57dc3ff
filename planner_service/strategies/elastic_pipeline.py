"""Elastic pipeline per lane (InfiniPipe): slice long sequences, pack short ones, into cost-balanced chunks.

A lane's work is cut into about `target_chunks` chunks of equal cost. A sequence costlier than one
chunk (or longer than the memory-derived token cap) is sliced at equal-cost cut points (later
slices attend to more context, so they are shorter); its tail slice stays open for short
sequences. Short sequences are packed best-fit decreasing by cost under the chunk cost and token
caps; a chunk never holds slices of two different long sequences. Chunks are ordered long-first
(slices in token order), so the 1F1B cool-down runs on the cheapest chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from planner_service.cost_model import CostModel
from planner_service.strategies.packing import sequence_cost, slice_sequence
from proto import Chunk, CostProfile, PipelineSpec, Segment

MIN_SLICE_TOKENS_PER_DEVICE = 512
"""Smallest slice worth running per device: below ~512 tokens per GPU, GEMMs and attention kernels lose
most of their efficiency (per-call overhead b dominates), so slicing finer buys memory at too high a price."""


def activation_bytes_per_token(cost: CostModel, sp_degree: int, num_layers: int) -> float:
    """Bytes one device holds per token of an in-flight chunk with no recompute."""
    probe = 1024 * sp_degree
    return cost.chunk_activation_bytes(probe, sp_degree=sp_degree, num_layers=num_layers) / probe


def memory_token_cap(cost: CostModel, pipeline: PipelineSpec, sp_degree: int, in_flight: int) -> int:
    """Tokens per chunk such that `in_flight` chunks fit stage 0 without recompute (at least the minimum slice)."""
    dp = cost.dp_size(pipeline)
    budget = cost.usable_memory_bytes - cost.model_state_bytes(0, pipeline, dp)
    per_token = activation_bytes_per_token(cost, sp_degree, pipeline.layers_of(0))
    cap = int(budget / (max(in_flight, 1) * per_token)) if budget > 0 else 0
    return max(cap, MIN_SLICE_TOKENS_PER_DEVICE * sp_degree)


def sequence_fits(cost: CostModel, pipeline: PipelineSpec, length: int, sp_degree: int, *, sliced: bool) -> bool:
    """Whether one sequence alone can run on a lane of `sp_degree` with full recompute (and slicing if allowed).

    Unsliced: its checkpoints plus one layer's working memory for the whole sequence. Sliced: its
    checkpoints, the K/V of every slice and their dK/dV accumulators, and one minimal slice's working memory.
    """
    dp = cost.dp_size(pipeline)
    for p in range(pipeline.num_stages):
        layers = pipeline.layers_of(p)
        last = p == pipeline.num_stages - 1
        need = cost.model_state_bytes(p, pipeline, dp)
        need += cost.chunk_activation_bytes(
            length, sp_degree=sp_degree, num_layers=layers, recompute_layers=layers, is_last_stage=last
        )
        if sliced:
            need += 2 * cost.kv_bytes(length, sp_degree, layers)
            need += cost.transient_bytes(
                min(length, MIN_SLICE_TOKENS_PER_DEVICE * sp_degree), sp_degree=sp_degree, is_last_stage=last
            )
        else:
            need += cost.transient_bytes(length, sp_degree=sp_degree, is_last_stage=last)
        if need > cost.usable_memory_bytes:
            return False
    return True


def build_lane_chunks(
    profile: CostProfile,
    items: Sequence[tuple[int, int]],
    *,
    target_chunks: int,
    token_cap: int,
    allow_slicing: bool,
) -> list[Chunk]:
    """Chunks for one lane's sequences (seq_id, length)."""
    if not items:
        return []
    total = sum(sequence_cost(profile, n) for _, n in items)
    cost_cap = total / max(target_chunks, 1)
    long_chunks: list[list[Segment]] = []
    open_bins: list[tuple[list[Segment], float, int]] = []  # segments, cost, tokens (tail slices)
    shorts: list[tuple[int, int, float]] = []
    for seq_id, length in sorted(items, key=lambda x: (-x[1], x[0])):
        c = sequence_cost(profile, length)
        if allow_slicing and (c > cost_cap * 1.0001 or length > token_cap):
            pieces = max(math.ceil(c / cost_cap), math.ceil(length / token_cap))
            segs = slice_sequence(profile, seq_id, length, pieces)
            long_chunks.extend([seg] for seg in segs[:-1])
            tail = segs[-1]
            long_chunks.append([tail])
            open_bins.append(
                (long_chunks[-1], sequence_cost(profile, tail.num_tokens, context=tail.start), tail.num_tokens)
            )
        elif length > token_cap or c > cost_cap:
            long_chunks.append([Segment(seq_id=seq_id, start=0, end=length)])
        else:
            shorts.append((seq_id, length, c))
    bins = list(open_bins)
    for seq_id, length, c in shorts:  # already longest-first: best fit decreasing
        best = -1
        best_room = math.inf
        for b, (_, used, tokens) in enumerate(bins):
            room = cost_cap - used
            if c <= room + 1e-12 and tokens + length <= token_cap and room < best_room:
                best, best_room = b, room
        if best < 0:
            bins.append(([], 0.0, 0))
            best = len(bins) - 1
        segs, used, tokens = bins[best]
        segs.append(Segment(seq_id=seq_id, start=0, end=length))
        bins[best] = (segs, used + c, tokens + length)
    packed = [segs for segs, _, _ in bins[len(open_bins) :]]
    packed.sort(key=lambda segs: -sum(sequence_cost(profile, s.num_tokens) for s in segs))
    return [Chunk(segments=segs) for segs in long_chunks + packed]
