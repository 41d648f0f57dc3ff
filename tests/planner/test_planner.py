"""The planner facade `make_plan`: a strategy that crashes, times out or returns an invalid plan never stops
training; the greedy plan is returned instead, marked with the reason.

Guards against a solver failure surfacing as an exception in the training loop, and a timed-out solve
reported as optimal."""

from __future__ import annotations

from dataclasses import replace

import pytest

import planner_service.planner as planner_module
from planner_service.context import PlanningContext
from planner_service.planner import make_plan
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.solvers import lane_assignment_milp
from planner_service.solvers.integer_program import Solution
from planner_service.strategies.registry import StrategyFn
from proto import Batch, Plan, validate_plan

CLUSTER = resolve_cluster("a800-80g-4x8")
MODEL = resolve_model("llama2-7b")


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
