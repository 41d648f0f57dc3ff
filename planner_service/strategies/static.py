"""`static`: the tuned fixed-layout baseline (Megatron-LM / DeepSpeed-Ulysses style).

One Ulysses SP degree s for every lane, one pipeline degree P, DP = N / (P*s) identical lanes,
sequences packed in data order into fixed micro-batches of M tokens (no slicing, so M is at
least the longest sequence), micro-batches dealt round-robin to the lanes, and one checkpoint
policy (none, or full recompute when none does not fit). The grid (P, s, M, policy) is
searched and the fastest memory-feasible layout in the simulator is kept: the baseline is the
best static configuration *for this very batch*, which flatters it, on purpose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from planner_service.assembly import LaneDraft, assemble_plan, fits_memory
from planner_service.context import PlanningContext, options_that_fit, zero_stage_contexts
from planner_service.errors import InfeasibleWorkload
from planner_service.layout.chunks import pack_next_fit
from planner_service.layout.recompute import uniform_recompute
from proto import Chunk, PipelineSpec, Plan, SolverInfo, SolverStatus
from proto.topology import Topology, valid_sp_degrees

MICRO_BATCH_MULTIPLIERS = (1, 2, 4)
"""Micro-batch budgets tried: the longest sequence rounded up to a power of two, times these."""
MAX_STATIC_PIPELINE_DEGREE = 16
"""Static layouts beyond P=16 are not used in practice for 7B-30B models (Megatron guidance)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StaticLayout:
    num_stages: int
    sp_degree: int
    micro_batch_tokens: int
    full_recompute: bool


def next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def static_layouts(ctx: PlanningContext) -> list[StaticLayout]:
    """The grid the baseline searches (pipeline degree fixed when the job fixes it)."""
    longest = max(ctx.batch.lengths)
    base = next_power_of_two(longest)
    stages = ctx.pipeline_degrees(max_degree=MAX_STATIC_PIPELINE_DEGREE)
    return [
        StaticLayout(num_stages=p, sp_degree=s, micro_batch_tokens=base * m, full_recompute=full)
        for p in stages
        for s in valid_sp_degrees(ctx.model, Topology.of(ctx.cluster, p).stage_block_size)
        for m in MICRO_BATCH_MULTIPLIERS
        for full in (False, True)
    ]


def static_drafts(ctx: PlanningContext, layout: StaticLayout, pipeline: PipelineSpec) -> list[LaneDraft]:
    block = Topology.of(ctx.cluster, layout.num_stages).stage_block_size
    num_lanes = block // layout.sp_degree
    micro_batches = pack_next_fit(
        list(zip(ctx.batch.seq_ids, ctx.batch.lengths, strict=True)), layout.micro_batch_tokens
    )
    per_lane: list[list[Chunk]] = [[] for _ in range(num_lanes)]
    for i, chunk in enumerate(micro_batches):
        per_lane[i % num_lanes].append(chunk)
    return [
        LaneDraft(
            sp_degree=layout.sp_degree,
            offset=lane * layout.sp_degree,
            chunks=tuple(chunks),
            recompute=uniform_recompute(pipeline, len(chunks), layout.full_recompute),
        )
        for lane, chunks in enumerate(per_lane)
    ]


def plan_static(ctx: PlanningContext) -> Plan:
    """Fastest feasible static layout for this batch; InfeasibleWorkload when none fits."""
    started = time.perf_counter()
    best: Plan | None = None
    tried = 0
    skip_full: set[tuple[int, int, int]] = set()
    for layout in static_layouts(ctx):
        key = (layout.num_stages, layout.sp_degree, layout.micro_batch_tokens)
        if layout.full_recompute and key in skip_full:
            continue  # no recompute already fits; full recompute can only be slower
        pipeline = PipelineSpec.even(ctx.model.num_layers, layout.num_stages)
        for layout_ctx in zero_stage_contexts(options_that_fit(ctx, pipeline)):
            plan, _ = assemble_plan(
                layout_ctx,
                strategy="static",
                pipeline=pipeline,
                drafts=static_drafts(layout_ctx, layout, pipeline),
                solver=SolverInfo(backend="grid-search", status=SolverStatus.OPTIMAL),
            )
            if fits_memory(plan, ctx.cluster):
                break
        tried += 1
        if not fits_memory(plan, ctx.cluster):
            continue
        skip_full.add(key)
        if best is None or plan.predicted.iteration_s < best.predicted.iteration_s:
            best = plan
    if best is None:
        raise InfeasibleWorkload(
            f"static: no layout fits in {ctx.cluster.device_memory_bytes / 2**30:.1f} GiB per device "
            f"(longest sequence {max(ctx.batch.lengths)} tokens, {tried} layouts tried)",
            field="lengths",
        )
    solver = SolverInfo(
        backend="grid-search",
        status=SolverStatus.OPTIMAL,
        gap=None,
        solve_s=time.perf_counter() - started,
        message=f"best of {tried} static layouts",
    )
    return best.model_copy(update={"solver": solver}).with_id()
