"""`flexsp` (FlexSP, ASPLOS'25): flexible Ulysses SP lanes of different sizes, no pipeline.

P = 1; the lane ILP chooses lane sizes and the sequence assignment; each lane packs its sequences
into as few micro-batches as memory allows (no slicing) and uses one checkpointing policy for the
whole lane (none, or every layer when none does not fit) as FlexSP does. FlexSP shards model
states with ZeRO-3 (its implementation builds on DeepSpeed ZeRO); without a pipeline the job's
ZeRO stage is raised to the smallest one whose model states fit (`options_that_fit`).
"""

from __future__ import annotations

from planner_service.context import PlanningContext
from planner_service.errors import InfeasibleWorkload
from planner_service.proposals import single_stage_flexible_proposal
from planner_service.search import Deadline, build_best_first, finalize
from proto import Plan


def plan_flexsp(ctx: PlanningContext) -> Plan:
    deadline = Deadline.for_search(ctx.time_limit_s)
    proposal = single_stage_flexible_proposal(ctx, deadline, strategy="flexsp", recompute="lane-uniform")
    plan = finalize(build_best_first([proposal] if proposal else [], deadline), deadline)
    if plan is None:
        raise InfeasibleWorkload(
            f"flexsp: the longest sequence ({max(ctx.batch.lengths)} tokens) fits no SP lane without a pipeline",
            field="lengths",
        )
    return plan
