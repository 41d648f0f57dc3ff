"""`flexsp` (FlexSP, ASPLOS'25): flexible Ulysses SP lanes of different sizes, no pipeline.

P = 1; the lane ILP chooses lane sizes and the sequence assignment; each lane packs its sequences
into as few micro-batches as memory allows (no slicing) and uses one checkpointing policy for the
whole lane (none, or every layer when none does not fit) as FlexSP does. FlexSP shards model
states with ZeRO-3 (its implementation builds on DeepSpeed ZeRO); without a pipeline the job's
ZeRO stage is raised to the smallest one whose model states fit (`options_that_fit`).
"""

from __future__ import annotations

from planner_service.errors import InfeasibleWorkload
from planner_service.plan_assembly import PlanningContext, options_that_fit
from planner_service.strategies.dynamic_lanes import (
    Deadline,
    Proposal,
    Recipe,
    RecomputeMode,
    build_best_first,
    finalize,
)
from planner_service.strategies.flexible_lanes import flexible_lanes
from proto import PipelineSpec, Plan

LANE_SOLVER_SHARE = 0.6
"""Share of the time left given to the lane ILP (the rest builds and simulates plans)."""


def flexsp_proposal(
    ctx: PlanningContext, deadline: Deadline, *, strategy: str = "flexsp", recompute: RecomputeMode = "lane-uniform"
) -> Proposal | None:
    """Flexible lanes without a pipeline; None when some sequence fits no lane."""
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


def plan_flexsp(ctx: PlanningContext) -> Plan:
    deadline = Deadline.for_search(ctx.time_limit_s)
    proposal = flexsp_proposal(ctx, deadline)
    plan = finalize(build_best_first([proposal] if proposal else [], deadline), deadline)
    if plan is None:
        raise InfeasibleWorkload(
            f"flexsp: the longest sequence ({max(ctx.batch.lengths)} tokens) fits no SP lane without a pipeline",
            field="lengths",
        )
    return plan
