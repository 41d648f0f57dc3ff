"""`greedy`: a plan that is always valid when the batch can run at all (the fallback and warm start).

Uniform lanes of the smallest SP degree on which the longest sequence fits; sequences dealt
longest-first to the least-loaded lane by estimated cost (LPT); per lane, sequences longer than
the chunk cap are sliced at equal-cost cut points when P > 1 (token-level pipelining), the rest
packed best-fit decreasing under the cap. Recompute is off when memory allows and on for every
layer otherwise. No solver, no search beyond that: it must be fast and never fail on a feasible
batch.
"""

from __future__ import annotations

import itertools
import math
import time

from planner_service.errors import InfeasibleWorkload
from planner_service.plan_assembly import (
    LaneDraft,
    PlanningContext,
    assemble_plan,
    fits_memory,
    options_that_fit,
    uniform_recompute,
    zero_stage_contexts,
)
from planner_service.strategies.dynamic_lanes import uniform_lanes, work_model
from planner_service.strategies.packing import pack_best_fit_decreasing, slice_sequence
from proto import Chunk, PipelineSpec, Plan, SolverInfo, SolverStatus
from proto.topology import Topology, pipeline_degree_candidates, valid_sp_degrees


def lane_chunks(ctx: PlanningContext, items: list[tuple[int, int]], cap: int, num_stages: int) -> list[Chunk]:
    """Slice sequences over `cap` tokens (P > 1 only), pack the rest; long slices first."""
    profile = ctx.cost.profile
    sliced: list[Chunk] = []
    short: list[tuple[int, int]] = []
    for seq_id, length in items:
        if length > cap and num_stages > 1:
            pieces = slice_sequence(profile, seq_id, length, math.ceil(length / cap))
            sliced += [Chunk(segments=[seg]) for seg in pieces]
        else:
            short.append((seq_id, length))
    return sliced + pack_best_fit_decreasing(short, max(cap, max((n for _, n in short), default=1)))


def greedy_drafts(
    ctx: PlanningContext, pipeline: PipelineSpec, sp_degree: int, cap: int, full: bool
) -> list[LaneDraft]:
    lanes = uniform_lanes(ctx, pipeline, sp_degree, work_model(ctx.cost, pipeline, sp_degree))
    drafts = []
    for lane, spec in enumerate(lanes):
        chunks = lane_chunks(ctx, list(spec.items), cap, pipeline.num_stages)
        drafts.append(
            LaneDraft(
                sp_degree=sp_degree,
                offset=lane * sp_degree,
                chunks=tuple(chunks),
                recompute=uniform_recompute(pipeline, len(chunks), full),
            )
        )
    return drafts


def greedy_pipeline_degrees(ctx: PlanningContext) -> list[int]:
    """P fixed by the job, else powers of two in increasing order (model states shrink with P)."""
    if ctx.num_stages:
        return [ctx.num_stages]
    return pipeline_degree_candidates(ctx.cluster.num_devices, ctx.model.num_layers)


def plan_greedy(
    ctx: PlanningContext,
    *,
    strategy: str = "greedy",
    status: SolverStatus = SolverStatus.HEURISTIC,
    reason: str = "",
) -> Plan:
    """A valid plan: the smallest P, then the smallest SP degree, whose plan fits memory (recompute if needed)."""
    started = time.perf_counter()
    longest = max(ctx.batch.lengths)
    tried: list[str] = []
    job_ctx = ctx
    for num_stages in greedy_pipeline_degrees(job_ctx):
        pipeline = PipelineSpec.even(job_ctx.model.num_layers, num_stages)
        ctx = options_that_fit(job_ctx, pipeline)
        degrees = valid_sp_degrees(ctx.model, Topology.of(ctx.cluster, num_stages).stage_block_size)
        cap = max(1, math.ceil(longest / num_stages)) if num_stages > 1 else longest
        # the stage guessed from model states first; a higher one only when nothing fits at it
        for zero_ctx, sp_degree, full in itertools.product(zero_stage_contexts(ctx), degrees, (False, True)):
            plan, _ = assemble_plan(
                zero_ctx,
                strategy=strategy,
                pipeline=pipeline,
                drafts=greedy_drafts(zero_ctx, pipeline, sp_degree, cap, full),
                solver=SolverInfo(backend="greedy", status=status),
            )
            if fits_memory(plan, ctx.cluster):
                solver = SolverInfo(
                    backend="greedy",
                    status=status,
                    solve_s=time.perf_counter() - started,
                    message=reason
                    or f"P={num_stages}, uniform SP degree {sp_degree}, {'full' if full else 'no'} recompute",
                )
                return plan.model_copy(update={"solver": solver}).with_id()
        tried.append(f"P={num_stages} with SP degrees {degrees}")
    raise InfeasibleWorkload(
        f"the longest sequence ({longest} tokens) does not fit on any lane of {ctx.cluster.name} "
        f"({'; '.join(tried) or 'no valid pipeline degree'}; with and without recompute)",
        field="lengths",
    )
