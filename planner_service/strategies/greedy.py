"""`greedy`: a plan that is always valid when the batch can run at all (the fallback and warm start).

Uniform lanes of the smallest SP degree on which the longest sequence fits; sequences dealt
longest-first to the least-loaded lane by estimated cost (LPT); per lane, sequences longer than
the chunk cap are sliced at equal-cost cut points when P > 1 (token-level pipelining), the rest
packed best-fit decreasing under the cap. Recompute is off when memory allows and on for every
layer otherwise. No solver, no search beyond that: it must be fast and never fail on a feasible
batch, so memory is checked on each lane's memory timeline before the one plan kept is simulated.
"""

from __future__ import annotations

import itertools
import math
import time

from planner_service.assembly import LaneDraft, finish_plan, fits_memory, lanes_of_drafts, simulate_lanes
from planner_service.context import PlanningContext, options_that_fit, zero_stage_contexts
from planner_service.errors import InfeasibleWorkload
from planner_service.layout.chunks import capped_chunks
from planner_service.layout.lanes import uniform_lanes
from planner_service.layout.memory_fit import sequence_fits
from planner_service.layout.recompute import no_recompute_bound, uniform_recompute
from planner_service.layout.work_model import work_model
from planner_service.simulator.memory_timeline import stage_memory
from proto import Chunk, Lane, PipelineSpec, Plan, SolverInfo, SolverStatus
from proto.topology import Topology, valid_sp_degrees


def greedy_chunks(ctx: PlanningContext, pipeline: PipelineSpec, sp_degree: int, cap: int) -> list[tuple[Chunk, ...]]:
    """Per uniform lane of size s (LPT-dealt), its chunks: slices over `cap` tokens when P > 1, the rest packed."""
    lanes = uniform_lanes(ctx, pipeline, sp_degree, work_model(ctx.cost, pipeline, sp_degree))
    slicing = pipeline.num_stages > 1
    return [tuple(capped_chunks(ctx.cost.profile, spec.items, token_cap=cap, allow_slicing=slicing)) for spec in lanes]


def greedy_drafts(
    pipeline: PipelineSpec, sp_degree: int, lane_chunks: list[tuple[Chunk, ...]], full: bool
) -> list[LaneDraft]:
    return [
        LaneDraft(
            sp_degree=sp_degree,
            offset=lane * sp_degree,
            chunks=chunks,
            recompute=uniform_recompute(pipeline, len(chunks), full),
        )
        for lane, chunks in enumerate(lane_chunks)
    ]


def lanes_fit(
    ctx: PlanningContext, pipeline: PipelineSpec, lanes: list[Lane], lengths: dict[int, int] | None = None
) -> bool:
    """Whether every lane's peak (the simulator's memory timeline) fits next to each stage's model states
    (`lengths`: the batch's `length_of()`, when the caller checks many lanes). A stage without recompute whose
    chunks fit even all held at once (`no_recompute_bound`) needs no walk of its timeline."""
    cost = ctx.cost
    dp = cost.dp_size(pipeline)
    budgets = [cost.usable_memory_bytes - cost.model_state_bytes(p, pipeline, dp) for p in range(pipeline.num_stages)]
    lengths = lengths or ctx.batch.length_of()
    for lane in lanes:
        tokens = [c.num_tokens for c in lane.chunks]
        for p in range(pipeline.num_stages):
            free = not any(lane.recompute[p])
            if free and no_recompute_bound(cost, pipeline, p, lane.sp_degree, lane.chunks) <= budgets[p]:
                continue
            if stage_memory(lane, pipeline, p, cost, lengths, tokens).peak(lane.recompute[p]) > budgets[p]:
                return False
    return True


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
    for num_stages in job_ctx.pipeline_degrees():  # increasing: model states shrink with P
        pipeline = job_ctx.split_for(num_stages)
        ctx = options_that_fit(job_ctx, pipeline)
        degrees = valid_sp_degrees(ctx.model, Topology.of(ctx.cluster, num_stages).stage_block_size)
        cap = max(1, math.ceil(longest / num_stages)) if num_stages > 1 else longest
        chunked: dict[int, list[tuple[Chunk, ...]]] = {}  # per SP degree: the same at every ZeRO stage
        # the stage guessed from model states first; a higher one only when nothing fits at it
        for zero_ctx, sp_degree, full in itertools.product(zero_stage_contexts(ctx), degrees, (False, True)):
            if not sequence_fits(zero_ctx.cost, pipeline, longest, sp_degree, sliced=num_stages > 1):
                continue
            if sp_degree not in chunked:
                chunked[sp_degree] = greedy_chunks(zero_ctx, pipeline, sp_degree, cap)
            lanes = lanes_of_drafts(zero_ctx, pipeline, greedy_drafts(pipeline, sp_degree, chunked[sp_degree], full))
            if not lanes_fit(zero_ctx, pipeline, lanes):
                continue
            plan = simulate_lanes(
                zero_ctx,
                strategy=strategy,
                pipeline=pipeline,
                lanes=lanes,
                solver=SolverInfo(backend="greedy", status=status),
            )
            if fits_memory(plan, ctx.cluster):  # the timeline check above is the simulator's; keep both
                return finish_plan(
                    plan,
                    SolverInfo(
                        backend="greedy",
                        status=status,
                        solve_s=time.perf_counter() - started,
                        message=reason
                        or f"P={num_stages}, uniform SP degree {sp_degree}, {'full' if full else 'no'} recompute",
                    ),
                )
        tried.append(f"P={num_stages} with SP degrees {degrees}")
    raise InfeasibleWorkload(
        f"the longest sequence ({longest} tokens) does not fit on any lane of {ctx.cluster.name} "
        f"({'; '.join(tried) or 'no valid pipeline degree'}; with and without recompute)",
        field="lengths",
    )
