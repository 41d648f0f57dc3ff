"""`infinipipe` (InfiniPipe, arXiv 2509.21275): elastic pipeline with one SP degree.

P > 1 stages; every lane has the same SP degree s (DP replicas of one SP x PP layout); within each
lane, long sequences are sliced and short ones packed into cost-balanced chunks, and recompute is
chosen per (stage, chunk) by the recompute ILP. (P, s) candidates are ranked by the work model and
the best few are built and simulated, with several chunk counts each.
"""

from __future__ import annotations

from planner_service.context import PlanningContext
from planner_service.errors import InfeasibleWorkload
from planner_service.proposals import uniform_proposals
from planner_service.search import CANDIDATES_BUILT, Deadline, build_best_first, finalize
from proto import Plan


def plan_infinipipe(ctx: PlanningContext) -> Plan:
    deadline = Deadline.for_search(ctx.time_limit_s)
    proposals = sorted(uniform_proposals(ctx, strategy="infinipipe"), key=lambda p: p.estimate_s)[:CANDIDATES_BUILT]
    plan = finalize(build_best_first(proposals, deadline, min_builds=CANDIDATES_BUILT), deadline)
    if plan is None:
        raise InfeasibleWorkload(
            f"infinipipe: the longest sequence ({max(ctx.batch.lengths)} tokens) fits no uniform SP x PP layout",
            field="lengths",
        )
    return plan
