"""The job-level choice of one fixed layout (for `megatron`), once per job, from a sample of batches.

A Megatron-LM / DeepSpeed user picks SP x PP x DP, the micro-batch size (seq-length) and the checkpointing
policy once, by trying configurations on a few batches of their data, and trains every batch with it. That is
what `tune_fixed_layout` does with the static grid of `strategies.static`: the grid is ranked and simulated on
the first sample batch (within the work budget), the best `FINALISTS` layouts are simulated on every sample,
and the layout with the least total time over the samples wins (one that does not fit some sample is out).
Micro-batches hold at least the longest sequence of the whole sample, as a user sets seq-length to the data's
maximum.

How the layout travels: it is a `PlanOptions.fixed_layout` (the job's options, sent with every planning
request and recorded in every plan). A job chooses it where it chooses P: `choose_pipeline_degree` plans the
sample at each candidate P, and for `megatron` the winning plan's `options.fixed_layout` is that sample's
tuned layout (`PipelineDegreeChoice.fixed_layout`); callers store it in the job's options. A `megatron`
request without one tunes on the batch it is given (the plan's solver message says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from planner_service.budget import PlanningBudget
from planner_service.context import PlanningContext
from planner_service.errors import InfeasibleWorkload
from planner_service.strategies.static import build_static, static_layouts, static_search
from proto import Batch, ClusterSpec, CostProfile, FixedLayout, ModelSpec, Plan, PlanOptions

FINALISTS = 6
"""Layouts of the first sample's ranking simulated on every other sample."""


def tune_layout(ctx: PlanningContext, samples: Sequence[Batch], budget: PlanningBudget) -> FixedLayout:
    """The static layout with the least total simulated time over `samples` (planned in `ctx`'s job)."""
    return tuned_layout_and_plan(ctx, samples, budget)[0]


def tuned_layout_and_plan(
    ctx: PlanningContext, samples: Sequence[Batch], budget: PlanningBudget
) -> tuple[FixedLayout, Plan]:
    """`tune_layout`, and the winner's plan of the first sample as the tuning built it (a caller planning that
    very batch need not build it again)."""
    longest = max(max(batch.lengths) for batch in samples)
    first = replace(ctx, batch=samples[0])
    layouts = static_layouts(first, longest=longest)
    result = static_search(first, budget, layouts=layouts)
    finalists = [layout for _, layout in result.plans[:FINALISTS]]
    if not finalists:
        raise InfeasibleWorkload(
            f"megatron: no static layout of {ctx.cluster.name} fits the sample (longest sequence {longest} tokens)",
            field="lengths",
        )
    first_plans = {layout: plan for plan, layout in result.plans[:FINALISTS]}
    totals = {layout: plan.predicted.iteration_s for layout, plan in first_plans.items()}
    for batch in samples[1:]:
        other = replace(ctx, batch=batch)
        for layout in list(totals):
            plan = build_static(other, layout, strategy="megatron", budget=budget)
            if max(plan.predicted.peak_memory_bytes) > ctx.cluster.device_memory_bytes:
                del totals[layout]
            else:
                totals[layout] += plan.predicted.iteration_s
    if not totals:
        raise InfeasibleWorkload(
            f"megatron: no static layout of {ctx.cluster.name} fits every sample batch", field="lengths"
        )
    best = min(totals, key=lambda layout: (totals[layout], finalists.index(layout)))
    return best, first_plans[best]


def tune_fixed_layout(
    *,
    cluster: ClusterSpec,
    model: ModelSpec,
    samples: Sequence[Batch],
    options: PlanOptions | None = None,
    profile: CostProfile | None = None,
    num_stages: int | None = None,
    time_limit_s: float = 10.0,
    budget: PlanningBudget | None = None,
) -> FixedLayout:
    """The job's fixed layout, tuned on `samples` (a few batches of the job's data) within `time_limit_s` (or
    `budget`)."""
    ctx = PlanningContext.of(
        batch=samples[0],
        cluster=cluster,
        model=model,
        options=options or PlanOptions(),
        profile=profile,
        time_limit_s=time_limit_s,
        num_stages=num_stages,
        budget=budget,
    )
    return tune_layout(ctx, samples, ctx.budget)
