"""How a layout's ZeRO stage is chosen (`context.options_that_fit`).

Guards against: raising the ZeRO stage dropping the job's other options (the gradient reduction dtype fell
back to its default), and a layout discarded at the stage guessed from model states alone although it fits
one stage higher; a plan raised above the job's `max_zero_stage` (the stage an executor shards for).
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from planner_service.context import PlanningContext, options_that_fit
from planner_service.cost_model import CostModel
from planner_service.errors import InfeasibleWorkload
from planner_service.planner import make_plan
from planner_service.presets import CLUSTERS, MODELS
from planner_service.strategies.greedy import plan_greedy
from proto import Batch, GradReduceDtype, ModelSpec, PipelineSpec, PlanOptions, ZeroStage


def context(options: PlanOptions) -> PlanningContext:
    cluster, model = CLUSTERS["a800-80g-4x8"], MODELS["llama2-7b"]
    return PlanningContext(
        batch=Batch.from_lengths([4096] * 8),
        cluster=cluster,
        model=model,
        cost=CostModel.from_specs(cluster, model, options=options),
        options=options,
    )


def test_raising_the_zero_stage_keeps_the_reduce_dtype() -> None:
    """llama2-7b without a pipeline needs 16 B x 6.7e9 = 108 GB of model states at ZeRO-0 on an 80 GiB device,
    so the stage is raised; the job's bf16 gradient reduction must survive that."""
    ctx = context(PlanOptions(grad_reduce_dtype=GradReduceDtype.MODEL))
    raised = options_that_fit(ctx, PipelineSpec.even(32, 1))
    assert raised.options.zero_stage > ZeroStage.NONE
    assert raised.options.grad_reduce_dtype is GradReduceDtype.MODEL
    assert raised.cost.options == raised.options


def test_a_layout_that_fits_only_at_zero1_is_raised_not_discarded() -> None:
    """One 2048-token sequence of a 2-layer, 91M-parameter model (vocabulary 32,000; one attention head, so no SP
    degree above 1) on 2 devices, no pipeline. The device is sized between two bounds: ZeRO-0's model states
    (16 B per parameter) pass the model-state test of `options_that_fit` (at most 3/4 of the usable memory) but do
    not fit with the sequence's activations, not even with every layer recomputed; ZeRO-1's (4 + 12/2 = 10 B per
    parameter) fit with all activations kept. The greedy plan must raise the ZeRO stage rather than give the
    layout up (it found nothing at P = 1)."""
    model = ModelSpec(
        name="small",
        num_layers=2,
        hidden_size=1024,
        num_heads=1,
        num_kv_heads=1,
        ffn_hidden_size=2816,
        vocab_size=32_000,
    )
    pipeline = PipelineSpec.even(2, 1)
    probe = CostModel.from_specs(CLUSTERS["cpu-1x2"], model)
    n = model.total_params

    def peak(recompute: int) -> float:
        held = probe.chunk_activation_bytes(
            2048, sp_degree=1, num_layers=2, recompute_layers=recompute, is_last_stage=True
        )
        return held + probe.transient_bytes(2048, sp_degree=1, is_last_stage=True)

    low = max(10 * n + peak(0), 16 * n / 0.75)  # ZeRO-1 fits without recompute; ZeRO-0 passes the states test
    high = 16 * n + peak(2)  # ZeRO-0 does not fit even with full recompute
    assert low < high
    usable = (low + high) / 2
    cluster = CLUSTERS["cpu-1x2"].model_copy(update={"device_memory_bytes": usable / 0.9})  # reserve: 10 %
    cost = CostModel.from_specs(cluster, model)
    assert cost.usable_memory_bytes == pytest.approx(usable)
    ctx = PlanningContext(
        batch=Batch.from_lengths([2048]), cluster=cluster, model=model, cost=cost, options=PlanOptions(), num_stages=1
    )
    assert options_that_fit(ctx, pipeline).options.zero_stage == ZeroStage.NONE  # the first guess
    plan = plan_greedy(ctx)
    assert plan.options.zero_stage == ZeroStage.OPTIMIZER
    assert not any(r for lane in plan.lanes for stage in lane.recompute for r in stage)
    assert max(plan.predicted.peak_memory_bytes) <= cluster.device_memory_bytes


def test_max_zero_stage_caps_every_raise() -> None:
    """An executor that shards its model states once per job (`helix train --zero 0`) sends max_zero_stage = 0.
    llama2-7b's 108 GB of states at P = 1 stay at ZeRO-0 in `options_that_fit` (without the cap: raised). gpt-13b
    at P = 4 on 40 GiB devices needs 52 GB per device at ZeRO-0: every strategy raises it to ZeRO-1 without the
    cap and refuses with it, saying why; at P = 8 it fits at ZeRO-0 either way."""
    pinned = PlanOptions(max_zero_stage=ZeroStage.NONE)
    assert options_that_fit(context(pinned), PipelineSpec.even(32, 1)).options.zero_stage == ZeroStage.NONE
    assert options_that_fit(context(PlanOptions()), PipelineSpec.even(32, 1)).options.zero_stage > ZeroStage.NONE
    cluster, model = CLUSTERS["a100-40g-8x8"], MODELS["gpt-13b"]
    batch = Batch.from_lengths([4096] * 8 + [30_000])
    for strategy in ("greedy", "static", "helix"):
        common = {"batch": batch, "cluster": cluster, "model": model, "strategy": strategy, "time_limit_s": 1.0}
        assert make_plan(**common, num_stages=4).options.zero_stage > ZeroStage.NONE, strategy
        with pytest.raises(InfeasibleWorkload, match="at most at ZeRO-0, the job's max_zero_stage"):
            make_plan(**common, options=pinned, num_stages=4)
        assert make_plan(**common, options=pinned, num_stages=8).options.zero_stage == ZeroStage.NONE, strategy


def test_max_zero_stage_below_zero_stage_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="max_zero_stage=0 is below zero_stage=2"):
        PlanOptions(zero_stage=ZeroStage.GRADIENTS, max_zero_stage=ZeroStage.NONE)
