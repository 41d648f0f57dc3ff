"""The three families of layouts the dynamic strategies propose, each with a work-model estimate.

- `uniform_proposals`: every uniform SP x PP layout (P > 1) the longest sequence fits (InfiniPipe's space).
- `flexible_proposals`: lanes of different sizes chosen by the lane ILP for every candidate P > 1.
- `single_stage_flexible_proposal`: flexible lanes without a pipeline (FlexSP's space).

Strategies pick and combine families (`helix` takes all three); the building and search are in `search`.
"""

from __future__ import annotations

import numpy as np

from planner_service.context import PlanningContext, options_that_fit
from planner_service.layout.flexible_lanes import flexible_lanes
from planner_service.layout.lanes import uniform_lanes
from planner_service.layout.memory_fit import sequence_fits
from planner_service.layout.recompute import RecomputeMode
from planner_service.layout.work_model import pipelined_estimate_s, work_model
from planner_service.search import (
    CHUNKS_PER_STAGE,
    LANE_SOLVER_SHARE,
    MAX_DYNAMIC_PIPELINE_DEGREE,
    Deadline,
    Proposal,
    Recipe,
)
from proto import PipelineSpec, SolverInfo, SolverStatus
from proto.topology import valid_sp_degrees


def dynamic_pipeline_degrees(ctx: PlanningContext) -> list[int]:
    """The job's fixed P, else the candidate P > 1 up to `MAX_DYNAMIC_PIPELINE_DEGREE`."""
    if ctx.num_stages:
        return [ctx.num_stages]
    return [p for p in ctx.pipeline_degrees(max_degree=MAX_DYNAMIC_PIPELINE_DEGREE) if p > 1]


def estimate_uniform(ctx: PlanningContext, pipeline: PipelineSpec, sp_degree: int) -> float:
    """Work-model estimate of a uniform layout: the busier of the average lane's per-stage work and the
    longest sequence's (it runs on every stage of its lane), stretched by the 1F1B fill and drain."""
    model = work_model(ctx.cost, pipeline, sp_degree)
    work = model(np.array(ctx.batch.lengths, dtype=np.float64))
    lanes = ctx.cost.dp_size(pipeline) // sp_degree
    per_stage = max(float(work.sum()) / lanes, float(work.max()))
    return pipelined_estimate_s(per_stage, pipeline.num_stages, CHUNKS_PER_STAGE[0])


def uniform_proposals(ctx: PlanningContext, *, strategy: str) -> list[Proposal]:
    """Every uniform (P > 1, s) layout the longest sequence fits, with its estimate (cheap: no solver)."""
    longest = max(ctx.batch.lengths)
    out: list[Proposal] = []
    for p in dynamic_pipeline_degrees(ctx):
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
                    status=SolverStatus.FEASIBLE,
                    message=f"uniform SP {s} x P {p} (estimate {estimate:.4f} s)",
                ),
            )
            out.append(Proposal(estimate, recipe, CHUNKS_PER_STAGE))
    return out


def flexible_proposals(ctx: PlanningContext, deadline: Deadline, *, strategy: str) -> list[Proposal]:
    """Lane-ILP layouts for every candidate P > 1 (P = 1 is `single_stage_flexible_proposal`)."""
    degrees = dynamic_pipeline_degrees(ctx)
    out: list[Proposal] = []
    for i, p in enumerate(degrees):
        pipeline = PipelineSpec.even(ctx.model.num_layers, p)
        p_ctx = options_that_fit(ctx, pipeline)
        share = deadline.share(LANE_SOLVER_SHARE) / max(1, len(degrees) - i)
        lanes = flexible_lanes(p_ctx, pipeline, sliced=True, time_limit_s=max(share, 0.02))
        if lanes is None:
            continue
        recipe = Recipe(
            ctx=p_ctx,
            pipeline=pipeline,
            lanes=tuple(lanes.lanes),
            strategy=strategy,
            chunks_per_stage=CHUNKS_PER_STAGE[0],
            sliced=True,
            recompute="adaptive",
            solver=lanes.solver_info(extra=f"; P={p}"),
        )
        estimate = pipelined_estimate_s(lanes.solution.makespan_s, p, CHUNKS_PER_STAGE[0])
        out.append(Proposal(estimate, recipe, CHUNKS_PER_STAGE))
    return out


def single_stage_flexible_proposal(
    ctx: PlanningContext, deadline: Deadline, *, strategy: str, recompute: RecomputeMode
) -> Proposal | None:
    """Flexible lanes without a pipeline, unsliced; None when some sequence fits no lane."""
    pipeline = PipelineSpec.even(ctx.model.num_layers, 1)
    ctx = options_that_fit(ctx, pipeline)
    lanes = flexible_lanes(ctx, pipeline, sliced=False, time_limit_s=max(deadline.share(LANE_SOLVER_SHARE), 0.05))
    if lanes is None:
        return None
    recipe = Recipe(
        ctx=ctx,
        pipeline=pipeline,
        lanes=tuple(lanes.lanes),
        strategy=strategy,
        chunks_per_stage=1,
        sliced=False,
        recompute=recompute,
        solver=lanes.solver_info(extra="; P=1"),
    )
    return Proposal(lanes.solution.makespan_s, recipe, (1,))
