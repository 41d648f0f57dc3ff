"""The planner facade: one call from a batch, a cluster and a model to a validated plan.

Used in-process by the CLI, the tests, the service and the executor's offline fallback.
A strategy that crashes (a solver bug) never stops training: the greedy plan is returned instead, marked
`fallback` with the reason; one that could build nothing within the time limit returns it marked
`timeout-fallback`. The time limit bounds the whole call (`PlanningContext.budget`). Every plan is checked
against the target executor's published capabilities (`proto.capabilities`): a plan it could not run is an
error, never returned.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from planner_service.budget import PlanningBudget
from planner_service.context import PlanningContext
from planner_service.errors import InfeasibleWorkload, PlanningError
from planner_service.gc_pause import collector_paused
from planner_service.search import NothingBuiltInTime
from planner_service.strategies.greedy import plan_greedy
from planner_service.strategies.registry import get_strategy
from proto import (
    Batch,
    ClusterSpec,
    CostProfile,
    ModelSpec,
    PipelineSpec,
    Plan,
    PlanOptions,
    RecomputeScope,
    SolverStatus,
    ZeroStage,
    validate_plan,
)
from proto.capabilities import TORCH_EXECUTOR, ExecutorCapabilities

log = logging.getLogger(__name__)


def check_workload(batch: Batch, cluster: ClusterSpec, model: ModelSpec) -> None:
    """Reject workloads that cannot run on any layout, with the cause in one line."""
    if cluster.num_devices < 1:
        raise InfeasibleWorkload("the cluster has no devices", field="cluster")
    if not batch.lengths:
        raise InfeasibleWorkload("the batch is empty", field="lengths")


def job_layer_split(
    model: ModelSpec, num_stages: int | None, layer_ranges: Sequence[tuple[int, int]] | None
) -> PipelineSpec | None:
    """The job's layer split from `layer_ranges` (None: none fixed); a `PlanningError` naming the field when it is
    not a split of the model's layers into `num_stages` stages."""
    if layer_ranges is None:
        return None
    if num_stages is None or len(layer_ranges) != num_stages:
        raise PlanningError(
            f"layer_ranges has {len(layer_ranges)} stages but num_stages is {num_stages}", field="layer_ranges"
        )
    try:
        split = PipelineSpec(num_stages=num_stages, layer_ranges=[tuple(r) for r in layer_ranges])
    except ValueError as exc:
        raise PlanningError(f"layer_ranges is not a split of the layers: {exc}", field="layer_ranges") from None
    if split.num_layers != model.num_layers:
        raise PlanningError(
            f"layer_ranges covers {split.num_layers} layers, the model has {model.num_layers}", field="layer_ranges"
        )
    return split


@collector_paused()
def make_plan(
    *,
    batch: Batch,
    cluster: ClusterSpec,
    model: ModelSpec,
    strategy: str = "static",
    options: PlanOptions | None = None,
    profile: CostProfile | None = None,
    time_limit_s: float = 2.0,
    solver: str = "cpsat",
    num_stages: int | None = None,
    layer_ranges: Sequence[tuple[int, int]] | None = None,
    step: int | None = None,
    job_id: str | None = None,
    executor: ExecutorCapabilities = TORCH_EXECUTOR,
    budget: PlanningBudget | None = None,
) -> Plan:
    """Plan one batch with `strategy`; the result passed `validate_plan` and fits `executor`'s capabilities.

    `time_limit_s` bounds the call (its work units and the wall-clock safety net); a caller may bring its own
    `budget` instead (e.g. `PlanningBudget.units_only` to measure plan quality independent of the load). The
    cyclic garbage collector is paused for the call (`gc_pause`). `layer_ranges` (with `num_stages`) is the
    job's layer split, which every strategy then plans on (a job's executors build their stage modules once)."""
    check_workload(batch, cluster, model)
    layer_split = job_layer_split(model, num_stages, layer_ranges)
    options = options or PlanOptions()
    ctx = PlanningContext.of(
        batch=batch,
        cluster=cluster,
        model=model,
        options=options,
        profile=profile,
        time_limit_s=time_limit_s,
        solver=solver,
        num_stages=num_stages,
        layer_split=layer_split,
        budget=budget,
        defer_weight_grads=executor.deferred_weight_grads,
    )
    unpriced = ctx.cost.profile.mlp_recompute_freed_bytes_per_token_layer <= 0
    if options.recompute_scope is RecomputeScope.MLP and unpriced:
        raise InfeasibleWorkload(
            "options.recompute_scope='mlp' needs a profile that prices it: profile "
            f"{ctx.cost.profile.name!r} has mlp_recompute_freed_bytes_per_token_layer = 0",
            field="options",
        )
    strategy_fn = get_strategy(strategy)
    try:
        plan = strategy_fn(ctx)
        validate_plan(plan, batch, cluster, model)
    except InfeasibleWorkload as exc:
        if options.max_zero_stage < ZeroStage.PARAMETERS:
            raise InfeasibleWorkload(
                f"{exc} (model states at most at ZeRO-{int(options.max_zero_stage)}, the job's max_zero_stage; "
                "a higher ZeRO stage leaves more memory)",
                field=exc.field,
            ) from None
        raise
    except PlanningError:
        raise
    except NothingBuiltInTime as exc:  # the limit is too short for this strategy at this scale
        plan = plan_greedy(ctx, strategy=strategy, status=SolverStatus.TIMEOUT_FALLBACK, reason=str(exc))
        validate_plan(plan, batch, cluster, model)
    except Exception as exc:  # a broken strategy must not stop training
        log.warning("strategy %s failed (%s); returning the greedy fallback plan", strategy, exc)
        plan = plan_greedy(ctx, strategy=strategy, status=SolverStatus.FALLBACK, reason=f"{type(exc).__name__}: {exc}")
        validate_plan(plan, batch, cluster, model)
    problem = executor.plan_problem(plan, model)
    if problem is not None:
        raise InfeasibleWorkload(f"no plan this executor can run: {problem}", field="options")
    if step is not None or job_id is not None:
        plan = plan.model_copy(update={"step": step, "job_id": job_id}).with_id()
    return plan
