"""`dcp`: Megatron-LM's dynamic (hybrid) context parallelism policy, on our cost model and executor.

Megatron-LM's `BalancedCPScheduler` (megatron/core/pipeline_parallel/hybrid_cp_schedule.py) forms, per
global batch, groups of GPUs of power-of-two sizes and runs each sequence on one group:

- a sequence of L tokens needs a group of `max(1, 2^ceil(log2(L / max_seqlen_per_rank)))` GPUs;
- its workload is estimated as L^2 / group size;
- sequences, longest first, go to the least-loaded existing group of exactly the size they need, or to a new
  group of free GPUs when that is less loaded (it starts empty);
- GPUs left without work at the end are filled by doubling the smallest groups;
- when a size class has no group and no GPU is free, the round ends (behind a barrier) and the rest of the
  sequences form the next round's groups on all GPUs.

This module follows that policy with our own code: `max_seqlen_per_rank` is the tokens per device one
micro-batch may hold without recompute (`memory_fit.memory_token_cap`, at SP degree 1), or with every layer
recomputed when the longest sequence needs it to fit the largest group (a user enables checkpointing then);
a group is a lane;
each sequence is its own micro-batch (Megatron runs sub-samples one at a time); checkpointing is per lane,
none when memory allows, else every layer (Megatron's job-level `--recompute-granularity full`). Our plans
have one set of lanes per iteration, not rounds, so the rounds become one set of groups in which each size
class gets GPUs in proportion to its work (what the rounds give it in time: every class runs on the whole
cluster in its turn), priced by the work model, one group at a time to the class with the most work per GPU;
sequences are then balanced by Megatron's rule within their class.

P is fixed: the job's, else the smallest candidate P on which every sequence fits some lane without slicing
(hybrid CP has no pipeline support upstream; a job may still fix P > 1, and the micro-batches then flow
through a 1F1B pipeline unsliced).
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field

import numpy as np

from planner_service.assembly import (
    LaneDraft,
    finish_plan,
    fits_memory,
    heuristic_record,
    lane_of_draft,
    simulate_lanes,
)
from planner_service.context import PlanningContext, options_that_fit, zero_stage_contexts
from planner_service.errors import InfeasibleWorkload
from planner_service.layout.lanes import buddy_offsets
from planner_service.layout.memory_fit import memory_token_cap, sequence_fits
from planner_service.layout.recompute import uniform_recompute
from planner_service.layout.work_model import work_model
from planner_service.schedules import max_in_flight
from planner_service.strategies.greedy import lanes_fit
from proto import Chunk, Lane, PipelineSpec, Plan, Segment, SolverInfo, SolverStatus
from proto.topology import Topology, valid_sp_degrees


@dataclass(slots=True)
class Group:
    """A group of GPUs (a lane) being filled: its size, its sequences and its estimated load per GPU."""

    size: int
    items: list[tuple[int, int]] = field(default_factory=list)
    load: float = 0.0


def group_size_needed(length: int, per_rank: int, sizes: list[int]) -> int:
    """The smallest allowed power-of-two size >= ceil(length / per_rank) (the largest size when none is)."""
    want = max(1, 2 ** math.ceil(math.log2(max(length / per_rank, 1.0))))
    return next((s for s in sizes if s >= want), sizes[-1])


def allot_groups(class_work: dict[int, float], block: int, sizes: list[int]) -> list[Group]:
    """Groups per size class: one for every class that needs one (largest first), then a group at a time to
    the class with the most work per GPU it has, while GPUs are free."""
    groups: list[Group] = []
    gpus = dict.fromkeys(class_work, 0)
    free = block
    for s in sorted(class_work, reverse=True):
        if s <= free:
            groups.append(Group(s))
            gpus[s] += s
            free -= s
    while True:
        open_classes = [s for s in class_work if s <= free]
        if not open_classes:
            break
        s = max(open_classes, key=lambda s: (class_work[s] / max(gpus[s], 1), s))
        groups.append(Group(s))
        gpus[s] += s
        free -= s
    while free > 0:  # idle GPUs (Megatron's fill step): double the smallest group that can grow, else a new one
        growable = [g for g in groups if 2 * g.size in sizes and g.size <= free]
        if growable:
            g = min(growable, key=lambda g: g.size)
            free -= g.size
            g.size *= 2
        else:
            s = max(s for s in sizes if s <= free)
            groups.append(Group(s))
            free -= s
    return groups


def balance_groups(items: list[tuple[int, int]], groups: list[Group], need: dict[int, int]) -> list[Group]:
    """Megatron's greedy balancing: longest first, each to the least-loaded group of the size it needs (load
    L^2 / size per GPU, Megatron's estimate), else to the least-loaded larger group, else the largest.

    One heap of (load, index) per group size keeps each choice logarithmic (thousands of sequences)."""
    heaps: dict[int, list[tuple[float, int]]] = {}
    for i, g in enumerate(groups):
        heaps.setdefault(g.size, []).append((g.load, i))
    for heap in heaps.values():
        heapq.heapify(heap)
    sizes = sorted(heaps)
    for seq_id, length in sorted(items, key=lambda x: (-x[1], x[0])):
        want = need[seq_id]
        options = [s for s in sizes if s == want] or [s for s in sizes if s > want] or sizes[-1:]
        size = min(options, key=lambda s: heaps[s][0])
        _, i = heapq.heappop(heaps[size])
        group = groups[i]
        group.items.append((seq_id, length))
        group.load += length * length / group.size
        heapq.heappush(heaps[size], (group.load, i))
    return groups


def smallest_fitting_degree(ctx: PlanningContext) -> int:
    longest = max(ctx.batch.lengths)
    for p in ctx.pipeline_degrees():
        pipeline = ctx.split_for(p)
        p_ctx = options_that_fit(ctx, pipeline)
        sizes = valid_sp_degrees(ctx.model, p_ctx.cost.dp_size(pipeline))
        if any(sequence_fits(p_ctx.cost, pipeline, longest, s, sliced=False) for s in sizes):
            return p
    raise InfeasibleWorkload(
        f"dcp: the longest sequence ({longest} tokens) fits no lane of {ctx.cluster.name} without slicing",
        field="lengths",
    )


def plan_dcp(ctx: PlanningContext) -> Plan:
    started = time.perf_counter()
    num_stages = ctx.num_stages or smallest_fitting_degree(ctx)
    pipeline = ctx.split_for(num_stages)
    p_ctx = options_that_fit(ctx, pipeline)
    block = p_ctx.cost.dp_size(pipeline)
    sizes = [s for s in valid_sp_degrees(ctx.model, block) if block % s == 0]
    per_rank = memory_token_cap(p_ctx.cost, pipeline, 1, in_flight=num_stages)
    if max(ctx.batch.lengths) > per_rank * sizes[-1]:  # the job needs checkpointing to hold its longest sequence
        per_rank = memory_token_cap(p_ctx.cost, pipeline, 1, in_flight=num_stages, recompute=True)
    items = list(zip(ctx.batch.seq_ids, ctx.batch.lengths, strict=True))
    need = {i: group_size_needed(n, per_rank, sizes) for i, n in items}
    class_work: dict[int, float] = {}
    for s in sorted(set(need.values())):
        lengths = np.array([n for i, n in items if need[i] == s], dtype=np.float64)
        class_work[s] = s * float(work_model(p_ctx.cost, pipeline, s)(lengths).sum())
    groups = balance_groups(items, allot_groups(class_work, block, sizes), need)
    offsets = buddy_offsets([g.size for g in groups])
    drafts = []
    for group, offset in zip(groups, offsets, strict=True):
        chunks = tuple(Chunk(segments=[Segment(seq_id=i, start=0, end=n)]) for i, n in group.items)
        drafts.append((group.size, offset, chunks))
    topology = Topology.of(ctx.cluster, num_stages)
    lanes = [
        lane_of_draft(
            topology,
            LaneDraft(
                sp_degree=size, offset=offset, chunks=chunks, recompute=uniform_recompute(pipeline, len(chunks), False)
            ),
        )
        for size, offset, chunks in drafts
    ]
    length_of = ctx.batch.length_of()
    for zero_ctx in zero_stage_contexts(p_ctx):  # model states sharded further when a group does not fit
        plan = simulate_lanes(
            zero_ctx,
            strategy="dcp",
            pipeline=pipeline,
            lanes=[with_checkpointing(zero_ctx, pipeline, lane, length_of) for lane in lanes],
            solver=SolverInfo(backend="greedy", status=SolverStatus.HEURISTIC),
            budget=ctx.budget,
        )
        if fits_memory(plan, ctx.cluster):
            break
    else:
        raise InfeasibleWorkload(
            f"dcp: some group of P={num_stages} runs out of memory even with full recompute", field="lengths"
        )
    layout = " + ".join(f"{n}x{s}" for s, n in sorted(count_sizes(groups).items(), reverse=True))
    message = f"Megatron hybrid-CP balancing: P={num_stages}, groups {layout}, {per_rank} tokens per rank"
    return finish_plan(plan, heuristic_record("greedy", started, message))


def with_checkpointing(ctx: PlanningContext, pipeline: PipelineSpec, lane: Lane, lengths: dict[int, int]) -> Lane:
    """The group (built without recompute) with Megatron's checkpointing: none when its peak memory fits, else
    every layer."""
    if fits_without_recompute(ctx, pipeline, lane, lengths):
        return lane
    full = uniform_recompute(pipeline, len(lane.chunks), True)
    return lane.model_copy(update={"recompute": [list(r) for r in full]})


def fits_without_recompute(ctx: PlanningContext, pipeline: PipelineSpec, lane: Lane, lengths: dict[int, int]) -> bool:
    """Whether a group of whole sequences fits memory without recompute: `lanes_fit`'s answer, reached without
    walking its memory timeline when a quick sufficient test passes.

    The quick test, per stage: the group's longest sequence held in every slot its schedule keeps in flight at
    once, plus that sequence's working memory. A whole sequence's held and working bytes grow with its tokens,
    so this bounds the timeline's peak; with thousands of groups it saves most of dcp's planning time.
    """
    cost = ctx.cost
    dp = cost.dp_size(pipeline)
    longest = max((c.num_tokens for c in lane.chunks), default=0)
    for p in range(pipeline.num_stages):
        last = p == pipeline.num_stages - 1
        held = cost.chunk_activation_bytes(
            longest, sp_degree=lane.sp_degree, num_layers=pipeline.layers_of(p), is_last_stage=last
        )
        working = cost.transient_bytes(longest, sp_degree=lane.sp_degree, is_last_stage=last)
        bound = max_in_flight(lane.schedule[p]) * held + working
        if bound > cost.usable_memory_bytes - cost.model_state_bytes(p, pipeline, dp):
            return lanes_fit(ctx, pipeline, [lane], lengths)
    return True


def count_sizes(groups: list[Group]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for g in groups:
        counts[g.size] = counts.get(g.size, 0) + 1
    return counts
