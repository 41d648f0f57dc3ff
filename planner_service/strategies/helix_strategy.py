"""`helix`: 3D dynamic parallelism: flexible SP lanes x elastic pipeline x data parallelism.

Proposals come from three families, each with a work-model estimate: flexible lanes chosen by the lane
ILP for every candidate pipeline degree P (the job's fixed P, or a search; slicing when P > 1), the
uniform SP x PP layouts of `infinipipe`, and the flexible P = 1 lanes of `flexsp`. What `flexsp` and
`infinipipe` would build, and the best flexible layout, are always built and simulated; the remaining
proposals best-estimate first until the time limit. The greedy fallback plan competes too (while time is
left), and the winners' recompute is re-solved by the recompute ILP. So `helix` is never slower than flexsp,
infinipipe or greedy when the search finishes inside the limit (a tight limit on a busy machine can
cut the chunk-count refinement short).
"""

from __future__ import annotations

import contextlib

from planner_service.errors import InfeasibleWorkload, PlanningError
from planner_service.plan_assembly import PlanningContext, options_that_fit
from planner_service.strategies.dynamic_lanes import (
    Candidate,
    Deadline,
    Proposal,
    Recipe,
    build_proposals,
    finalize,
    pipelined_estimate_s,
)
from planner_service.strategies.flexible_lanes import flexible_lanes
from planner_service.strategies.flexsp_strategy import LANE_SOLVER_SHARE, flexsp_proposal
from planner_service.strategies.greedy import plan_greedy
from planner_service.strategies.infinipipe_strategy import (
    CANDIDATES_BUILT,
    CHUNKS_PER_STAGE,
    infinipipe_proposals,
    pipeline_candidates,
)
from proto import PipelineSpec, Plan


def flexible_proposals(ctx: PlanningContext, deadline: Deadline) -> list[Proposal]:
    """Lane-ILP layouts for every candidate P > 1 (P = 1 comes from `flexsp_proposal`)."""
    degrees = pipeline_candidates(ctx, include_one=False)
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
            strategy="helix",
            chunks_per_stage=CHUNKS_PER_STAGE[0],
            sliced=True,
            recompute="adaptive",
            solver=lanes.solver_info(extra=f"; P={p}"),
        )
        estimate = pipelined_estimate_s(lanes.solution.makespan_s, p, CHUNKS_PER_STAGE[0])
        out.append(Proposal(estimate, recipe, CHUNKS_PER_STAGE))
    return out


def plan_helix(ctx: PlanningContext) -> Plan:
    deadline = Deadline.for_search(ctx.time_limit_s)
    required: list[Proposal] = []  # what flexsp and infinipipe would build, plus the best flexible layout
    optional: list[Proposal] = []
    if not ctx.num_stages or ctx.num_stages == 1:
        flexsp = flexsp_proposal(ctx, deadline, strategy="helix", recompute="adaptive")
        if flexsp is not None:
            required.append(flexsp)
    if ctx.num_stages != 1:
        uniform = sorted(infinipipe_proposals(ctx, strategy="helix"), key=lambda p: p.estimate_s)
        flexible = sorted(flexible_proposals(ctx, deadline), key=lambda p: p.estimate_s)
        required += uniform[:CANDIDATES_BUILT] + flexible[:1]
        optional += uniform[CANDIDATES_BUILT:] + flexible[1:]
    candidates: list[Candidate] = build_proposals(required, optional, deadline)
    if not candidates or not deadline.expired():  # the fallback plan competes while time is left
        with contextlib.suppress(PlanningError):
            candidates.append(Candidate(plan_greedy(ctx, strategy="helix"), recipe=None))
    plan = finalize(candidates, deadline)
    if plan is None:
        raise InfeasibleWorkload(
            f"helix: no layout fits the longest sequence ({max(ctx.batch.lengths)} tokens) in memory", field="lengths"
        )
    return plan
