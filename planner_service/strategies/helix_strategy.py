"""`helix`: 3D dynamic parallelism: flexible SP lanes x elastic pipeline x data parallelism.

For each candidate pipeline degree (the job's fixed P, or a search over P), the lane ILP picks lane
sizes and the sequence assignment with slicing allowed, each lane is cut into cost-balanced chunks,
and the plan is simulated for a few chunk counts. The `flexsp` and `infinipipe` candidates compete
too, so `helix` is never slower than either when the solvers converge within the time limit, and so
does the greedy fallback plan. The winner's recompute is then re-solved exactly by the recompute ILP.
"""

from __future__ import annotations

from planner_service.errors import InfeasibleWorkload, PlanningError
from planner_service.plan_assembly import PlanningContext, options_that_fit
from planner_service.strategies.dynamic_lanes import Candidate, Deadline, Recipe, finalize, search_knobs
from planner_service.strategies.flexible_lanes import flexible_lanes
from planner_service.strategies.flexsp_strategy import LANE_SOLVER_SHARE, flexsp_candidate
from planner_service.strategies.greedy import plan_greedy
from planner_service.strategies.infinipipe_strategy import (
    CHUNKS_PER_STAGE,
    infinipipe_candidates,
    pipeline_candidates,
)
from proto import PipelineSpec, Plan

BASELINE_SHARE = 0.25
"""Share of the time limit given to each of the flexsp and infinipipe candidate searches."""


def helix_candidates(ctx: PlanningContext, deadline: Deadline) -> list[Candidate]:
    """Flexible-lane candidates for every candidate P (P = 1 without slicing)."""
    candidates = pipeline_candidates(ctx, include_one=True)
    out: list[Candidate] = []
    for i, p in enumerate(candidates):
        if i > 0 and deadline.expired():
            break
        pipeline = PipelineSpec.even(ctx.model.num_layers, p)
        p_ctx = options_that_fit(ctx, pipeline)
        share = deadline.share(LANE_SOLVER_SHARE) / max(1, len(candidates) - i)
        lanes = flexible_lanes(p_ctx, pipeline, sliced=p > 1, time_limit_s=max(share, 0.05))
        if lanes is None:
            continue
        recipe = Recipe(
            ctx=p_ctx,
            pipeline=pipeline,
            lanes=tuple(lanes.lanes),
            strategy="helix",
            chunks_per_stage=CHUNKS_PER_STAGE[0] if p > 1 else 1,
            sliced=p > 1,
            recompute="adaptive",
            solver=lanes.solver_info(extra=f"; P={p}"),
        )
        candidate = search_knobs(recipe, CHUNKS_PER_STAGE if p > 1 else (1,), deadline)
        if candidate is not None:
            out.append(candidate)
    return out


def plan_helix(ctx: PlanningContext) -> Plan:
    deadline = Deadline.for_search(ctx.time_limit_s)
    candidates: list[Candidate | None] = []
    if not ctx.num_stages or ctx.num_stages == 1:
        candidates.append(flexsp_candidate(ctx, Deadline(deadline.share(BASELINE_SHARE)), strategy="helix"))
    if ctx.num_stages != 1:
        candidates += infinipipe_candidates(ctx, Deadline(deadline.share(BASELINE_SHARE / 0.75)), strategy="helix")
    candidates += helix_candidates(ctx, deadline)
    try:  # the fallback plan competes too: it costs little and helix must never lose to it
        greedy = plan_greedy(ctx, strategy="helix")
        candidates.append(Candidate(greedy, recipe=None))
    except PlanningError:
        pass
    plan = finalize(candidates, deadline)
    if plan is None:
        raise InfeasibleWorkload(
            f"helix: no layout fits the longest sequence ({max(ctx.batch.lengths)} tokens) in memory", field="lengths"
        )
    return plan
