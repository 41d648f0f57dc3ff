"""helix's choice of deferred weight gradients (`Plan.defer_weight_grads`): taken when the simulator finds the plan
faster and it still fits memory, never otherwise; never for an executor that cannot run it; and the lower bound
still holds for the deferred plans.

Guards against a plan that defers where its deferred output gradients overflow the device, a planner that hands
an executor a feature it lacks, and a gap computed against a bound that deferral can beat.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner_service.budget import PlanningBudget
from planner_service.context import PlanningContext
from planner_service.cost_model import CostModel
from planner_service.lower_bound import simulated_time_lower_bound
from planner_service.planner import make_plan
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.search import Candidate, SearchSession
from planner_service.simulator import simulate
from planner_service.simulator.weight_grad_placement import place_weight_grads, without_weight_grad_ops
from planner_service.workloads.sampling import load_workload
from proto import Batch, Op, Plan, PlanOptions, ZeroStage
from proto.capabilities import TORCH_EXECUTOR

pytestmark = pytest.mark.timeout(180)

CLUSTER = resolve_cluster("a100-40g-8x8")
MODEL = resolve_model("llama2-7b")


def _batch() -> Batch:
    return load_workload(lengths_path=None, dataset="commoncrawl", batch_size=128, seed=2, max_len=32768)


def test_helix_defers_when_faster_and_the_flag_pays_off() -> None:
    """Short sequences at P = 8: the pipeline drains through every stage's backward, so sending before the
    weight gradients shortens the step, and running them in the gaps shortens it again. The plan has W ops, is
    faster than the same layout without deferral and with the weight gradients right after each send, and fits."""
    batch = _batch()
    plan = make_plan(batch=batch, cluster=CLUSTER, model=MODEL, strategy="helix", num_stages=8, budget=_units())
    assert plan.defer_weight_grads
    assert "weight gradients in the gaps" in plan.solver.message
    assert any(op.kind == "W" for lane in plan.lanes for ops in lane.schedule for op in ops)
    cost = CostModel.from_specs(CLUSTER, MODEL, options=plan.options)
    bare = [without_weight_grad_ops(lane) for lane in plan.lanes]
    unsplit = plan.model_copy(update={"defer_weight_grads": False, "lanes": bare})
    without = simulate(unsplit, batch, cost).predicted
    flagged = unsplit.model_copy(update={"defer_weight_grads": True})
    inline = simulate(place_weight_grads(flagged, batch, cost, queue=False), batch, cost).predicted
    assert plan.predicted.iteration_s < inline.iteration_s < without.iteration_s
    assert max(plan.predicted.peak_memory_bytes) <= CLUSTER.device_memory_bytes
    # the bound on every plan helix can build holds for the deferred one
    bound = simulated_time_lower_bound(_ctx(batch), [8])
    assert bound <= plan.predicted.iteration_s


def test_helix_groups_w_ops_at_the_end_where_the_gradient_reduction_is_exposed() -> None:
    """Code-length sequences at P = 2 on a800 (16 ranks a stage reduce 3.5B parameters' gradients): one B op
    cannot hide the reduction. helix ends the stages' orders with groups of W ops that it hides behind
    (`weight_grad_tail`), and the plan is faster than the same layout with W ops only after the sends, only in
    the gaps, or none, and fits memory."""
    cluster = resolve_cluster("a800-80g-4x8")
    batch = load_workload(lengths_path=None, dataset="github", batch_size=128, seed=2, max_len=32768)
    plan = make_plan(batch=batch, cluster=cluster, model=MODEL, strategy="helix", num_stages=2, budget=_units())
    assert "grouped at the end" in plan.solver.message
    for p in range(2):
        groups = [len(ops) - 1 - max(i for i, op in enumerate(ops) if op.kind == "B") for ops in _schedules(plan, p)]
        assert max(groups) >= 2
    cost = CostModel.from_specs(cluster, MODEL, options=plan.options)
    bare = plan.model_copy(update={"lanes": [without_weight_grad_ops(lane) for lane in plan.lanes]})
    others = [place_weight_grads(bare, batch, cost, queue=q) for q in (False, True)]
    others.append(bare.model_copy(update={"defer_weight_grads": False}))
    assert all(plan.predicted.iteration_s < simulate(o, batch, cost).predicted.iteration_s for o in others)
    assert max(plan.predicted.peak_memory_bytes) <= cluster.device_memory_bytes


def _schedules(plan: Plan, stage: int) -> list[list[Op]]:
    return [lane.schedule[stage] for lane in plan.lanes if lane.chunks]


def test_chunks_whose_deferred_gradients_do_not_fit_are_not_split() -> None:
    """The same winner when deferred output gradients cost 10 MB per token and layer: splitting every chunk would
    overflow the device, so only the chunks that fit are split (the plan fits and has fewer W ops); at 1 GB per
    token and layer no chunk fits and the winner is kept without deferral."""
    batch = _batch()
    ctx = _ctx(batch)
    plan = make_plan(batch=batch, cluster=CLUSTER, model=MODEL, strategy="helix", num_stages=8, budget=_units())
    bare = [without_weight_grad_ops(lane) for lane in plan.lanes]
    plain = plan.model_copy(update={"defer_weight_grads": False, "lanes": bare})
    flagged = plain.model_copy(update={"defer_weight_grads": True})
    every = place_weight_grads(flagged, batch, ctx.cost, queue=False)  # every chunk split at the preset's bytes

    def w_ops(p: Plan) -> int:
        return sum(op.kind == "W" for lane in p.lanes for ops in lane.schedule for op in ops)

    for per_token, splits_some in ((1e7, True), (1e9, False)):
        heavy = ctx.cost.profile.model_copy(update={"deferred_grad_bytes_per_token_layer": per_token})
        costly = replace(ctx, cost=replace(ctx.cost, profile=heavy))
        assert max(simulate(every, batch, costly.cost).predicted.peak_memory_bytes) > CLUSTER.device_memory_bytes
        priced = plain.model_copy(update={"predicted": simulate(plain, batch, costly.cost).predicted})
        kept = SearchSession(costly, costly.budget).with_deferred_weight_grads(Candidate(priced, None)).plan
        assert kept.defer_weight_grads is splits_some
        assert max(kept.predicted.peak_memory_bytes) <= CLUSTER.device_memory_bytes
        assert w_ops(kept) < w_ops(every)
        if splits_some:
            assert w_ops(kept) > 0 and kept.predicted.iteration_s < priced.predicted.iteration_s


@pytest.mark.parametrize("zero", [ZeroStage.GRADIENTS, ZeroStage.PARAMETERS])
def test_no_deferral_under_zero_2_or_3(zero: ZeroStage) -> None:
    options = PlanOptions(zero_stage=zero, max_zero_stage=zero)
    plan = make_plan(
        batch=_batch(), cluster=CLUSTER, model=MODEL, strategy="helix", options=options, num_stages=8, budget=_units()
    )
    assert not plan.defer_weight_grads


def test_an_executor_without_deferral_never_gets_it() -> None:
    batch = _batch()
    plain_executor = TORCH_EXECUTOR.model_copy(update={"name": "an executor", "deferred_weight_grads": False})
    plan = make_plan(batch=batch, cluster=CLUSTER, model=MODEL, num_stages=8, executor=plain_executor, budget=_units())
    assert not plan.defer_weight_grads
    deferred = plan.model_copy(update={"defer_weight_grads": True})
    assert plain_executor.plan_problem(deferred, MODEL) == (
        "the plan defers weight gradients (defer_weight_grads) and an executor cannot"
    )
    assert TORCH_EXECUTOR.plan_problem(deferred, MODEL) is None


def _units() -> PlanningBudget:
    return PlanningBudget.units_only(1.0)


def _ctx(batch: Batch) -> PlanningContext:
    return PlanningContext.of(batch=batch, cluster=CLUSTER, model=MODEL, options=PlanOptions(), budget=_units())
