"""`infinipipe` (InfiniPipe, arXiv 2509.21275): elastic pipeline with one SP degree.

P > 1 stages; every lane has the same SP degree s (DP replicas of one SP x PP layout); within each
lane, long sequences are sliced and short ones packed into cost-balanced chunks, and recompute is
chosen per (stage, chunk) by the recompute ILP. (P, s) candidates are ranked by the work model and
the best few are built and simulated, with several chunk counts each.
"""

from __future__ import annotations

import numpy as np

from planner_service.errors import InfeasibleWorkload
from planner_service.plan_assembly import PlanningContext, options_that_fit
from planner_service.strategies.dynamic_lanes import (
    Candidate,
    Deadline,
    Recipe,
    finalize,
    search_knobs,
    uniform_lanes,
    work_model,
)
from planner_service.strategies.elastic_pipeline import sequence_fits
from planner_service.strategies.lane_layout import valid_pipeline_degrees, valid_sp_degrees
from proto import PipelineSpec, Plan, SolverInfo

MAX_DYNAMIC_PIPELINE_DEGREE = 8
"""Pipeline degrees searched per batch (both papers evaluate P <= 8 for 7B-30B models)."""
CHUNKS_PER_STAGE = (4, 2, 8)
"""Chunks per pipeline stage tried per lane (first is the default): more chunks, smaller bubbles, more overhead."""
CANDIDATES_BUILT = 3
"""(P, s) layouts built and simulated, best-estimated first."""


def pipeline_candidates(ctx: PlanningContext, *, include_one: bool) -> list[int]:
    if ctx.num_stages:
        return [ctx.num_stages]
    return [
        p
        for p in valid_pipeline_degrees(ctx.cluster, ctx.model)
        if p & (p - 1) == 0 and p <= MAX_DYNAMIC_PIPELINE_DEGREE and (include_one or p > 1)
    ]


def estimate_uniform(ctx: PlanningContext, pipeline: PipelineSpec, sp_degree: int) -> float:
    """Work-model estimate of a uniform layout: the busier of average lane load and longest sequence,
    stretched by the 1F1B bubble with two chunks per stage."""
    model = work_model(ctx.cost, pipeline, sp_degree)
    work = model(np.array(ctx.batch.lengths, dtype=np.float64))
    lanes = ctx.cost.dp_size(pipeline) // sp_degree
    p = pipeline.num_stages
    return max(float(work.sum()) / lanes, float(work.max()) / p) * (1 + (p - 1) / (2 * p))


def infinipipe_candidates(ctx: PlanningContext, deadline: Deadline, *, strategy: str = "infinipipe") -> list[Candidate]:
    """Built candidates for the best-estimated uniform (P, s) layouts."""
    longest = max(ctx.batch.lengths)
    ranked: list[tuple[float, int, int]] = []
    for p in pipeline_candidates(ctx, include_one=False):
        pipeline = PipelineSpec.even(ctx.model.num_layers, p)
        p_ctx = options_that_fit(ctx, pipeline)
        for s in valid_sp_degrees(ctx.model, ctx.cost.dp_size(pipeline)):
            if sequence_fits(p_ctx.cost, pipeline, longest, s, sliced=True):
                ranked.append((estimate_uniform(p_ctx, pipeline, s), p, s))
    ranked.sort()
    out: list[Candidate] = []
    for i, (estimate, p, s) in enumerate(ranked[:CANDIDATES_BUILT]):
        if i > 0 and deadline.expired():
            break
        pipeline = PipelineSpec.even(ctx.model.num_layers, p)
        p_ctx = options_that_fit(ctx, pipeline)
        recipe = Recipe(
            ctx=p_ctx,
            pipeline=pipeline,
            lanes=tuple(uniform_lanes(p_ctx, pipeline, s, work_model(p_ctx.cost, pipeline, s))),
            strategy=strategy,
            chunks_per_stage=CHUNKS_PER_STAGE[0],
            sliced=True,
            recompute="adaptive",
            solver=SolverInfo(
                backend="enumeration",
                status="feasible",
                message=f"uniform SP {s} x P {p}; #{i + 1} of {len(ranked)} ranked layouts (estimate {estimate:.4f} s)",
            ),
        )
        candidate = search_knobs(recipe, CHUNKS_PER_STAGE, deadline)
        if candidate is not None:
            out.append(candidate)
    return out


def plan_infinipipe(ctx: PlanningContext) -> Plan:
    deadline = Deadline.for_search(ctx.time_limit_s)
    plan = finalize(infinipipe_candidates(ctx, deadline), deadline)
    if plan is None:
        raise InfeasibleWorkload(
            f"infinipipe: the longest sequence ({max(ctx.batch.lengths)} tokens) fits no uniform SP x PP layout",
            field="lengths",
        )
    return plan
