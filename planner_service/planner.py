"""The planner facade: one call from a batch, a cluster and a model to a validated plan.

Used in-process by the CLI, the tests, the service and the executor's offline fallback.
A strategy that crashes (a solver bug, a timeout) never stops training: the greedy plan is
returned instead, marked `fallback` with the reason. Every plan is checked against the target executor's
published capabilities (`proto.capabilities`): a plan it could not run is an error, never returned.
"""

from __future__ import annotations

import logging

from planner_service.context import PlanningContext
from planner_service.cost_model import CostModel
from planner_service.errors import InfeasibleWorkload, PlanningError
from planner_service.strategies.greedy import plan_greedy
from planner_service.strategies.registry import get_strategy
from proto import Batch, ClusterSpec, CostProfile, ModelSpec, Plan, PlanOptions, SolverStatus, validate_plan
from proto.capabilities import TORCH_EXECUTOR, ExecutorCapabilities

log = logging.getLogger(__name__)


def check_workload(batch: Batch, cluster: ClusterSpec, model: ModelSpec) -> None:
    """Reject workloads that cannot run on any layout, with the cause in one line."""
    if cluster.num_devices < 1:
        raise InfeasibleWorkload("the cluster has no devices", field="cluster")
    if not batch.lengths:
        raise InfeasibleWorkload("the batch is empty", field="lengths")


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
    step: int | None = None,
    job_id: str | None = None,
    executor: ExecutorCapabilities = TORCH_EXECUTOR,
) -> Plan:
    """Plan one batch with `strategy`; the result passed `validate_plan` and fits `executor`'s capabilities."""
    check_workload(batch, cluster, model)
    options = options or PlanOptions()
    ctx = PlanningContext(
        batch=batch,
        cluster=cluster,
        model=model,
        cost=CostModel.from_specs(cluster, model, profile=profile, options=options),
        options=options,
        time_limit_s=time_limit_s,
        solver=solver,
        num_stages=num_stages,
    )
    strategy_fn = get_strategy(strategy)
    try:
        plan = strategy_fn(ctx)
        validate_plan(plan, batch, cluster, model)
    except PlanningError:
        raise
    except Exception as exc:  # a broken or timed-out strategy must not stop training
        log.warning("strategy %s failed (%s); returning the greedy fallback plan", strategy, exc)
        plan = plan_greedy(ctx, strategy=strategy, status=SolverStatus.FALLBACK, reason=f"{type(exc).__name__}: {exc}")
        validate_plan(plan, batch, cluster, model)
    problem = executor.plan_problem(plan, model)
    if problem is not None:
        raise InfeasibleWorkload(f"no plan this executor can run: {problem}", field="options")
    if step is not None or job_id is not None:
        plan = plan.model_copy(update={"step": step, "job_id": job_id}).with_id()
    return plan
