"""The planner never returns a plan outside the target executor's published capabilities: for every strategy,
ZeRO option, tying and pipeline degree it plans, the plan fits `TORCH_EXECUTOR`; an executor declaring less
(ZeRO <= 1, tied embeddings only at P = 1) gets a one-line error instead of a plan it cannot run."""

from __future__ import annotations

import pytest

from planner_service.errors import InfeasibleWorkload
from planner_service.planner import make_plan
from planner_service.presets import resolve_cluster, resolve_model
from proto import Batch, PlanOptions, RecomputeScope, ZeroStage
from proto.capabilities import TORCH_EXECUTOR

pytestmark = pytest.mark.timeout(120)

BATCH = Batch.from_lengths([300, 60, 50, 40, 30, 8, 3, 2, 1])
LIMITED = TORCH_EXECUTOR.model_copy(
    update={
        "name": "a ZeRO-1 executor",
        "zero_stages": (ZeroStage(0), ZeroStage(1)),
        "tied_embeddings_across_stages": False,
        "mlp_only_recompute": False,
    }
)


@pytest.mark.parametrize("strategy", ["static", "helix"])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("stages", [1, 2])
def test_every_plan_fits_the_torch_executor(strategy: str, tied: bool, stages: int) -> None:
    cluster = resolve_cluster("cpu-2x2")
    model = resolve_model("tiny").model_copy(update={"tie_embeddings": tied})
    for zero in ZeroStage:
        plan = make_plan(
            batch=BATCH,
            cluster=cluster,
            model=model,
            strategy=strategy,
            options=PlanOptions(zero_stage=zero),
            num_stages=stages,
            time_limit_s=0.5,
        )
        assert plan.options.zero_stage >= zero
        assert TORCH_EXECUTOR.plan_problem(plan, model) is None


def test_a_smaller_executor_gets_an_error_not_a_plan() -> None:
    cluster, model = resolve_cluster("cpu-2x2"), resolve_model("tiny")
    with pytest.raises(InfeasibleWorkload, match=r"options\.zero_stage=3 is not one of a ZeRO-1 executor's"):
        make_plan(
            batch=BATCH, cluster=cluster, model=model, options=PlanOptions(zero_stage=ZeroStage(3)), executor=LIMITED
        )
    tied = model.model_copy(update={"tie_embeddings": True})
    with pytest.raises(InfeasibleWorkload, match="ties its embeddings and the plan has 2 stages"):
        make_plan(batch=BATCH, cluster=cluster, model=tied, num_stages=2, executor=LIMITED)
    assert make_plan(batch=BATCH, cluster=cluster, model=tied, num_stages=1, executor=LIMITED).pipeline.num_stages == 1
    mlp = PlanOptions(recompute_scope=RecomputeScope.MLP)
    assert not LIMITED.mlp_only_recompute
    with pytest.raises(InfeasibleWorkload, match=r"recompute_scope='mlp'\) and a ZeRO-1 executor cannot"):
        make_plan(batch=BATCH, cluster=cluster, model=model, options=mlp, executor=LIMITED)
    assert TORCH_EXECUTOR.mlp_only_recompute
    assert (
        make_plan(batch=BATCH, cluster=cluster, model=model, options=mlp).options.recompute_scope is RecomputeScope.MLP
    )
