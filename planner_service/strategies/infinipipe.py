"""`infinipipe` (InfiniPipe, arXiv 2509.21275): elastic pipeline with one SP degree.

P > 1 stages; every lane has the same SP degree s (DP replicas of one SP x PP layout); within each
lane, long sequences are sliced and short ones packed into cost-balanced chunks, and recompute is
chosen per (stage, chunk) by the recompute ILP. (P, s) candidates are ranked by their estimate and
the best few are built and simulated, with several chunk counts each.
"""

from __future__ import annotations

from planner_service.context import PlanningContext
from planner_service.errors import InfeasibleWorkload
from planner_service.lower_bound import budgeted_lower_bound
from planner_service.proposals import dynamic_pipeline_degrees, infinipipe_proposals
from planner_service.search import CANDIDATES_BUILT, POLISH_SHARE, SearchSession, finalize
from proto import Plan


def plan_infinipipe(ctx: PlanningContext) -> Plan:
    degrees = dynamic_pipeline_degrees(ctx, include_one=False)
    bound = budgeted_lower_bound(ctx, degrees, ctx.budget)  # first: its time is inside the limit
    session = SearchSession(ctx, ctx.budget.child(1 - POLISH_SHARE))
    candidates = session.build_proposals(infinipipe_proposals(ctx, strategy="infinipipe"), [], refine=CANDIDATES_BUILT)
    session.budget = ctx.budget
    plan = finalize(session, candidates, bound=bound, polish_all=True)
    if plan is None:
        raise InfeasibleWorkload(
            f"infinipipe: the longest sequence ({max(ctx.batch.lengths)} tokens) fits no uniform SP x PP layout",
            field="lengths",
        )
    return plan
