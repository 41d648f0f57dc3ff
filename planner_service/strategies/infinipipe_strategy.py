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
    Deadline,
    Proposal,
    Recipe,
    build_best_first,
    finalize,
    pipelined_estimate_s,
    uniform_lanes,
    work_model,
)
from planner_service.strategies.elastic_pipeline import sequence_fits
from proto import PipelineSpec, Plan, SolverInfo
from proto.topology import pipeline_degree_candidates, valid_sp_degrees

MAX_DYNAMIC_PIPELINE_DEGREE = 8
"""Pipeline degrees searched per batch (both papers evaluate P <= 8 for 7B-30B models)."""
CHUNKS_PER_STAGE = (4, 2, 8)
"""Chunks per pipeline stage tried per lane (first is the default): more chunks, smaller bubbles, more overhead."""
CANDIDATES_BUILT = 3
"""(P, s) layouts built and simulated, best-estimated first."""


def pipeline_candidates(ctx: PlanningContext, *, include_one: bool) -> list[int]:
    if ctx.num_stages:
        return [ctx.num_stages]
    degrees = pipeline_degree_candidates(
        ctx.cluster.num_devices, ctx.model.num_layers, max_degree=MAX_DYNAMIC_PIPELINE_DEGREE
    )
    return [p for p in degrees if include_one or p > 1]


def estimate_uniform(ctx: PlanningContext, pipeline: PipelineSpec, sp_degree: int) -> float:
    """Work-model estimate of a uniform layout: the busier of the average lane's per-stage work and the
    longest sequence's (it runs on every stage of its lane), stretched by the 1F1B fill and drain."""
    model = work_model(ctx.cost, pipeline, sp_degree)
    work = model(np.array(ctx.batch.lengths, dtype=np.float64))
    lanes = ctx.cost.dp_size(pipeline) // sp_degree
    per_stage = max(float(work.sum()) / lanes, float(work.max()))
    return pipelined_estimate_s(per_stage, pipeline.num_stages, CHUNKS_PER_STAGE[0])


def infinipipe_proposals(ctx: PlanningContext, *, strategy: str = "infinipipe") -> list[Proposal]:
    """Every uniform (P > 1, s) layout the longest sequence fits, with its estimate (cheap: no solver)."""
    longest = max(ctx.batch.lengths)
    out: list[Proposal] = []
    for p in pipeline_candidates(ctx, include_one=False):
        pipeline = PipelineSpec.even(ctx.model.num_layers, p)
        p_ctx = options_that_fit(ctx, pipeline)
        for s in valid_sp_degrees(ctx.model, ctx.cost.dp_size(pipeline)):
            if not sequence_fits(p_ctx.cost, pipeline, longest, s, sliced=True):
                continue
            estimate = estimate_uniform(p_ctx, pipeline, s)
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
                    message=f"uniform SP {s} x P {p} (estimate {estimate:.4f} s)",
                ),
            )
            out.append(Proposal(estimate, recipe, CHUNKS_PER_STAGE))
    return out


def plan_infinipipe(ctx: PlanningContext) -> Plan:
    deadline = Deadline.for_search(ctx.time_limit_s)
    proposals = sorted(infinipipe_proposals(ctx), key=lambda p: p.estimate_s)[:CANDIDATES_BUILT]
    plan = finalize(build_best_first(proposals, deadline, min_builds=CANDIDATES_BUILT), deadline)
    if plan is None:
        raise InfeasibleWorkload(
            f"infinipipe: the longest sequence ({max(ctx.batch.lengths)} tokens) fits no uniform SP x PP layout",
            field="lengths",
        )
    return plan
