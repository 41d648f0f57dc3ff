"""How a layout's ZeRO stage is chosen (`plan_assembly.options_that_fit`).

Guards against: raising the ZeRO stage dropping the job's other options (the gradient reduction dtype fell
back to its default).
"""

from __future__ import annotations

from planner_service.cost_model import CostModel
from planner_service.plan_assembly import PlanningContext, options_that_fit
from planner_service.presets import CLUSTERS, MODELS
from proto import Batch, GradReduceDtype, PipelineSpec, PlanOptions, ZeroStage


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
