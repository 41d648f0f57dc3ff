"""A trailing group of W ops on each stage, long enough to hide the stage's gradient reduction.

Under ZeRO-0/1 a stage block reduces its gradients in buckets, each as soon as it is final, during the rank's
last backward op (`cost_model.data_parallel`). Without deferral that window is one B op: a step of many small
chunks, or of a large model over many data-parallel ranks, leaves most of the reduction after it (up to 0.2 of
`ideal_s` on the plan_quality grid). The W ops that end a stage's order run with its last B op as one group,
layer by layer over their chunks (the executor's `runtime._TrailingGroup`, `WeightGradStore.flush_weights`): a
layer's weight gradients are final once that layer is done for every chunk of the group, so the buckets become
final evenly over the group and the reduction runs beside it. On the first stage, which sends nothing, the
group runs inside the last B op (each layer flushed as the B passes it), so the window also spans that B. The
simulator models exactly that (`pipeline_simulator`).

`with_weight_grad_tail` moves the W ops of a stage's last chunks (in backward order) to the end of its order,
and adds W ops for chunks that had none, until the group's weight-gradient seconds reach the stage's reduction
seconds times `share` (1: the whole reduction can hide behind the group). The chunks' B ops then defer their
kept layers' weight gradients, and their operands are held to the end of the step: memory is what limits the
group, which the caller checks by simulating (`share` < 1 asks for a shorter group). Works at any P, stage 0 and
P = 1 included: the gain is the reduction, not an earlier send. The first stage's target is not reduced by its
last B op, although its window includes that B: a longer group costs only memory, and the shorter one lost the
gain where memory was tight (a800 llama2-7b github b128 P = 2: 5.217 s against 5.029 s with the longer group).
"""

from __future__ import annotations

from dataclasses import replace

from planner_service.cost_model import CostModel
from planner_service.schedules.pipeline_schedule import op_of
from planner_service.simulator.pipeline_simulator import lane_op_costs
from proto import Op, Plan


def with_weight_grad_tail(plan: Plan, cost: CostModel, *, share: float = 1.0) -> Plan:
    """`plan` (with `defer_weight_grads`) whose every stage ends with W ops of its last chunks worth `share` of
    the stage's ZeRO-0/1 gradient reduction (see the module docstring); stages with no reduction are unchanged."""
    if not plan.defer_weight_grads:
        raise ValueError("a W-op tail needs a plan with defer_weight_grads")
    if share <= 0:
        raise ValueError(f"share must be positive, got {share}")
    if cost.options != plan.options:
        cost = replace(cost, options=plan.options)
    pipeline = plan.pipeline
    collectives = [cost.collective_times(p, pipeline) for p in range(pipeline.num_stages)]
    targets = [share * times.step_sync.duration_s for times in collectives]
    if not any(t > 0 for t in targets):
        return plan
    lanes = []
    for lane in plan.lanes:
        weight_grads = lane_op_costs(lane, plan, cost, collectives).weight_grads
        schedule = [
            tail_schedule(ops, weight_grads[p], targets[p], first_stage=p == 0) if targets[p] > 0 else list(ops)
            for p, ops in enumerate(lane.schedule)
        ]
        lanes.append(lane.model_copy(update={"schedule": schedule}))
    return plan.model_copy(update={"lanes": lanes})


def tail_schedule(ops: list[Op], weight_grad_s: list[float], target_s: float, *, first_stage: bool) -> list[Op]:
    """`ops` with the W ops of its last chunks by backward order (those with weight gradients to defer) moved,
    or added, to its end in that order, until their seconds reach `target_s` or every chunk is in. On the first
    stage the group runs inside the last B op, so that op's own chunk is left whole: deferring it gains nothing."""
    picked: list[int] = []
    total = 0.0
    last_b = next((op.chunk for op in reversed(ops) if op.kind == "B"), None)
    for op in reversed(ops):
        if total >= target_s:
            break
        if op.kind == "B" and weight_grad_s[op.chunk] > 0 and not (first_stage and op.chunk == last_b):
            picked.append(op.chunk)
            total += weight_grad_s[op.chunk]
    if not picked:
        return list(ops)
    group = set(picked)
    kept = [op for op in ops if not (op.kind == "W" and (op.chunk in group or (first_stage and op.chunk == last_b)))]
    return kept + [op_of("W", c) for c in reversed(picked)]
