"""Every strategy returns a valid plan; helix is never slower than flexsp or infinipipe; failures and
timeouts fall back to a valid greedy plan instead of stopping training."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import planner_service.planner as planner_module
from planner_service.context import PlanningContext
from planner_service.planner import make_plan
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.solvers import lane_assignment_milp
from planner_service.solvers.integer_program import Solution
from planner_service.strategies.registry import STRATEGIES, StrategyFn
from proto import Batch, Plan, validate_plan

CLUSTER = resolve_cluster("a800-80g-4x8")
MODEL = resolve_model("llama2-7b")

batches = st.lists(st.one_of(st.integers(64, 4096), st.integers(4096, 65536)), min_size=4, max_size=40).map(
    Batch.from_lengths
)


@pytest.mark.slow
@settings(max_examples=6)
@given(batch=batches)
def test_every_strategy_plans_validly(batch: Batch) -> None:
    for name in STRATEGIES:
        plan = make_plan(batch=batch, cluster=CLUSTER, model=MODEL, strategy=name, time_limit_s=5.0)
        validate_plan(plan, batch, CLUSTER, MODEL)  # make_plan validated too; a plan must survive a second look
        assert plan.strategy == name
        assert plan.solver.status != "fallback", plan.solver.message
        assert plan.predicted.iteration_s >= plan.predicted.ideal_s


@pytest.mark.slow
@settings(max_examples=6)
@given(batch=batches)
def test_helix_never_slower_than_flexsp_or_infinipipe(batch: Batch) -> None:
    times = {
        name: make_plan(
            batch=batch, cluster=CLUSTER, model=MODEL, strategy=name, time_limit_s=20.0
        ).predicted.iteration_s
        for name in ("flexsp", "infinipipe", "helix")
    }
    assert times["helix"] <= min(times["flexsp"], times["infinipipe"]) * (1 + 1e-9), times


def test_same_input_same_plan() -> None:
    """Deterministic: fixed solver seeds, one worker, a fixed probe sequence (converged within the limit)."""
    batch = Batch.from_lengths([30000, 12000, 5000, 900, 800, 300, 200, 100, 7000, 2500])
    first = make_plan(batch=batch, cluster=CLUSTER, model=MODEL, strategy="helix", time_limit_s=20.0)
    second = make_plan(batch=batch, cluster=CLUSTER, model=MODEL, strategy="helix", time_limit_s=20.0)
    assert first.plan_id == second.plan_id


def test_solver_crash_falls_back_to_greedy(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(lane_assignment_milp, "solve", broken)
    batch = Batch.from_lengths([20000, 3000, 1500, 700, 300])
    plan = make_plan(batch=batch, cluster=CLUSTER, model=MODEL, strategy="flexsp", time_limit_s=2.0)
    validate_plan(plan, batch, CLUSTER, MODEL)
    assert plan.strategy == "flexsp"
    assert plan.solver.status == "fallback"
    assert "solver exploded" in plan.solver.message


def test_solver_timeout_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ILP probe times out without an answer: the plan is the warm start, marked timeout-fallback."""

    def timed_out(*args: object, **kwargs: object) -> Solution:
        return Solution("unknown", (), None, None, 0.0, "cpsat")

    monkeypatch.setattr(lane_assignment_milp, "solve", timed_out)
    batch = Batch.from_lengths([20000, 3000, 1500, 700, 300])
    plan = make_plan(batch=batch, cluster=CLUSTER, model=MODEL, strategy="flexsp", time_limit_s=2.0)
    validate_plan(plan, batch, CLUSTER, MODEL)
    assert plan.solver.status == "timeout-fallback"


def test_invalid_strategy_output_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A strategy that returns an invalid plan (here: for another batch) is replaced by the greedy plan."""
    other = Batch.from_lengths([100, 200])
    real_get = planner_module.get_strategy

    def wrong_batch_strategy(name: str) -> StrategyFn:
        fn = real_get("greedy")

        def plan(ctx: PlanningContext) -> Plan:
            return fn(replace(ctx, batch=other))

        return plan

    monkeypatch.setattr(planner_module, "get_strategy", wrong_batch_strategy)
    batch = Batch.from_lengths([5000, 300, 100])
    plan = make_plan(batch=batch, cluster=CLUSTER, model=MODEL, strategy="helix", time_limit_s=2.0)
    validate_plan(plan, batch, CLUSTER, MODEL)
    assert plan.solver.status == "fallback"
    assert "another batch" in plan.solver.message


def test_fixed_pipeline_degree_is_respected() -> None:
    batch = Batch.from_lengths([40000, 9000, 3000, 800, 600, 120])
    for name in ("static", "infinipipe", "helix", "greedy"):
        plan = make_plan(batch=batch, cluster=CLUSTER, model=MODEL, strategy=name, num_stages=4, time_limit_s=5.0)
        assert plan.pipeline.num_stages == 4, name
