"""`megatron`: one fixed SP x PP x DP layout for the whole job, as a Megatron-LM / DeepSpeed user runs it.

The job's `PlanOptions.fixed_layout` (P, Ulysses SP degree, micro-batch tokens, full recompute or none) was
tuned once on a sample of the job's batches (`planner_service.job_layout`); every batch is packed in data
order into micro-batches of that many tokens, dealt round-robin to the DP x SP lanes, with that checkpointing.
A batch with a sequence longer than the micro-batch gets micro-batches of the next power of two that holds it
(a user's seq-length is the data's maximum), and a batch that would run out of memory with the job's policy
is run with full recompute (what a user does after an OOM); one that still does not fit is infeasible for
this layout. Without a job layout the batch at hand is the sample (the message says so): that is `static`
restricted to one layout for the job, which is why a job should pass its layout.

This is the baseline users actually run; per-batch `static` is the oracle no job has.
"""

from __future__ import annotations

import time
from dataclasses import replace

from planner_service.assembly import finish_plan, fits_memory, heuristic_record
from planner_service.context import PlanningContext
from planner_service.errors import InfeasibleWorkload, PlanningError
from planner_service.job_layout import tuned_layout_and_plan
from planner_service.strategies.static import build_static, describe_layout, next_power_of_two
from proto import FixedLayout, Plan


def plan_megatron(ctx: PlanningContext) -> Plan:
    started = time.perf_counter()
    given = ctx.options.fixed_layout
    if given is not None and ctx.num_stages and given.num_stages != ctx.num_stages:
        raise PlanningError(
            f"options.fixed_layout has P={given.num_stages} but the job fixes num_stages={ctx.num_stages}",
            field="options.fixed_layout",
        )
    tuned: Plan | None = None
    if given is None:
        layout, tuned = tuned_layout_and_plan(ctx, [ctx.batch], ctx.budget)
    else:
        layout = given
    source = "the job's fixed layout" if given else "a layout tuned on this batch (no job layout given)"
    job_ctx = replace(ctx, options=ctx.options.model_copy(update={"fixed_layout": layout}))
    for attempt in batch_layouts(layout, max(ctx.batch.lengths)):
        if tuned is not None and attempt == layout:  # the tuning built this batch with this layout already
            plan = relabelled(tuned, layout)
        else:
            plan = build_static(job_ctx, attempt, strategy="megatron", budget=ctx.budget)
        if fits_memory(plan, ctx.cluster):
            note = "" if attempt == layout else f" (this batch: {describe_layout(attempt)})"
            message = f"{source}: {describe_layout(layout)}{note}"
            return finish_plan(plan, heuristic_record("fixed-layout", started, message))
    raise InfeasibleWorkload(
        f"megatron: this batch (longest sequence {max(ctx.batch.lengths)} tokens) does not fit the job's layout "
        f"{describe_layout(layout)}, even with full recompute",
        field="lengths",
    )


def relabelled(plan: Plan, layout: FixedLayout) -> Plan:
    """A plan the static search built, as `megatron` with the job's `layout` builds it: the same lanes and
    prices under the strategy's name and the options that carry the layout."""
    return plan.model_copy(
        update={"strategy": "megatron", "options": plan.options.model_copy(update={"fixed_layout": layout})}
    )


def batch_layouts(layout: FixedLayout, longest: int) -> list[FixedLayout]:
    """The job's layout for a batch: micro-batches that hold its longest sequence, then full recompute."""
    fitted = layout.model_copy(
        update={"micro_batch_tokens": max(layout.micro_batch_tokens, next_power_of_two(longest))}
    )
    out = [fitted]
    if not fitted.full_recompute:
        out.append(fitted.model_copy(update={"full_recompute": True}))
    return out
