"""`flexsp` (FlexSP, ASPLOS'25): flexible Ulysses SP lanes of different sizes, no pipeline.

P = 1; the lane ILP on FlexSP's own cost model (compute and all-to-alls per sequence) chooses lane sizes and
the sequence assignment; each lane packs its sequences into as few micro-batches as memory allows (no
slicing) and uses one checkpointing policy for the whole lane (none, or every layer when none does not fit)
as FlexSP does. FlexSP shards model states with ZeRO-3 (its implementation builds on DeepSpeed ZeRO); without
a pipeline the job's ZeRO stage is raised to the smallest one whose model states fit (`options_that_fit`).
"""

from __future__ import annotations

from planner_service.context import PlanningContext
from planner_service.errors import InfeasibleWorkload
from planner_service.lower_bound import budgeted_lower_bound
from planner_service.proposals import single_stage_flexible_proposal
from planner_service.search import POLISH_SHARE, SearchSession, finalize
from proto import Plan


def plan_flexsp(ctx: PlanningContext) -> Plan:
    bound = budgeted_lower_bound(ctx, [1], ctx.budget)  # first: its time is inside the limit
    session = SearchSession(ctx, ctx.budget.child(1 - POLISH_SHARE))
    proposal = single_stage_flexible_proposal(session, strategy="flexsp", recompute="lane-uniform")
    candidates = session.build_proposals([proposal] if proposal else [], [])
    session.budget = ctx.budget
    plan = finalize(session, candidates, bound=bound, polish_all=False)
    if plan is None:
        raise InfeasibleWorkload(
            f"flexsp: the longest sequence ({max(ctx.batch.lengths)} tokens) fits no SP lane without a pipeline",
            field="lengths",
        )
    return plan
