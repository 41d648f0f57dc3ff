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

from planner_service.context import PlanningContext
from planner_service.errors import InfeasibleWorkload, PlanningError
from planner_service.proposals import flexible_proposals, single_stage_flexible_proposal, uniform_proposals
from planner_service.search import CANDIDATES_BUILT, Candidate, Deadline, Proposal, build_proposals, finalize
from planner_service.strategies.greedy import plan_greedy
from proto import Plan


def plan_helix(ctx: PlanningContext) -> Plan:
    deadline = Deadline.for_search(ctx.time_limit_s)
    required: list[Proposal] = []  # what flexsp and infinipipe would build, plus the best flexible layout
    optional: list[Proposal] = []
    if not ctx.num_stages or ctx.num_stages == 1:
        flexsp = single_stage_flexible_proposal(ctx, deadline, strategy="helix", recompute="adaptive")
        if flexsp is not None:
            required.append(flexsp)
    if ctx.num_stages != 1:
        uniform = sorted(uniform_proposals(ctx, strategy="helix"), key=lambda p: p.estimate_s)
        flexible = sorted(flexible_proposals(ctx, deadline, strategy="helix"), key=lambda p: p.estimate_s)
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
