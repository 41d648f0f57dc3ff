"""Planning budgets: deterministic work units decide, the wall clock is only a safety net.

Guards against a planner that returns a different plan on a loaded machine (units, not seconds, must stop a
search), one that overruns its caller's limit (the safety net must stop even required steps once a plan
exists), and phases that spend more than their share. Clocks are simulated: no wall-clock thresholds here
(`bench/planner_latency.py` measures real overruns).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from planner_service.budget import PlanningBudget
from planner_service.context import PlanningContext
from planner_service.cost_model import CostModel
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.strategies.registry import get_strategy
from proto import Batch, Plan, SolverStatus, validate_plan

CLUSTER = resolve_cluster("a800-80g-4x8")
MODEL = resolve_model("llama2-7b")
BATCH = Batch.from_lengths([30000, 12000, 5000, 900, 800, 300, 200, 100, 7000, 2500] * 3)


class SteppingClock:
    """A clock that advances `step` seconds on every read: a machine `step`-times slower per read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def plan_with(name: str, budget: PlanningBudget, batch: Batch = BATCH) -> Plan:
    ctx = PlanningContext(
        batch=batch, cluster=CLUSTER, model=MODEL, cost=CostModel.from_specs(CLUSTER, MODEL), budget=budget
    )
    plan = get_strategy(name)(ctx)
    validate_plan(plan, batch, CLUSTER, MODEL)
    return plan


def test_children_charge_their_parent_and_never_exceed_it() -> None:
    clock = SteppingClock(0.0)
    root = PlanningBudget(units=100.0, wall_end=10.0, clock=clock)
    phase = root.child(0.5)
    assert phase.units == 50.0
    phase.charge(30.0)
    assert (root.spent, phase.units_left(), root.units_left()) == (30.0, 20.0, 70.0)
    root.charge(60.0)  # another phase spent the parent down: the child may only use what is left
    assert phase.units_left() == pytest.approx(10.0) and phase.out_of_units() is False
    root.charge(15.0)
    assert phase.out_of_units() and root.out_of_units()


def test_the_safety_net_trips_on_the_clock_and_is_recorded_upward() -> None:
    clock = SteppingClock(0.0)
    root = PlanningBudget.for_limit(2.0, clock=clock)
    phase = root.child(0.5)
    assert not phase.exhausted() and not root.tripped()
    clock.now = root.wall_end + 1e-9
    assert phase.exhausted() and phase.out_of_time()
    assert root.tripped() and phase.tripped()


def test_for_limit_turns_the_limit_into_units_and_keeps_time_for_validation() -> None:
    clock = SteppingClock(0.0)
    small = PlanningBudget.for_limit(2.0, num_sequences=0, clock=clock)
    big = PlanningBudget.for_limit(2.0, num_sequences=16384, clock=clock)
    assert small.units == big.units > 0  # units depend on the limit only
    assert big.wall_end < small.wall_end < 2.0  # a bigger batch keeps more time to validate its plan


@pytest.mark.parametrize("strategy", ["static", "helix"])
def test_a_slow_machine_gets_the_same_plan_while_units_decide(strategy: str) -> None:
    """Same units, a clock 1000x slower per read but a safety net it never reaches: the same plan, so the
    clock took no decision."""
    fast = PlanningBudget(units=300.0, wall_end=1e12, clock=SteppingClock(1e-6))
    slow = PlanningBudget(units=300.0, wall_end=1e12, clock=SteppingClock(1e-3))
    first, second = plan_with(strategy, fast), plan_with(strategy, slow)
    assert not fast.tripped() and not slow.tripped()
    assert first.plan_id == second.plan_id


def test_static_stops_at_the_safety_net_after_one_feasible_layout() -> None:
    """The clock is past the net from the start: static still returns a valid plan (one layout), marked as
    not proven optimal, instead of simulating its whole grid."""
    clock = SteppingClock(0.0)
    budget = PlanningBudget(units=1e9, wall_end=-1.0, clock=clock)
    plan = plan_with("static", budget)
    assert plan.solver.status == SolverStatus.FEASIBLE
    assert "the 1 best-estimated of" in plan.solver.message


def test_helix_stops_at_the_safety_net_with_a_valid_plan() -> None:
    budget = PlanningBudget(units=1e9, wall_end=-1.0, clock=SteppingClock(0.0))
    plan = plan_with("helix", budget)
    assert "wall-clock safety net" in plan.solver.message
    assert plan.solver.status != SolverStatus.OPTIMAL
    assert budget.spent < 1e9


@contextlib.contextmanager
def cpu_burners(count: int = 2) -> Iterator[None]:
    """Busy processes: the machine loaded by others while the planner runs."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_same_plan_id_on_a_loaded_machine() -> None:
    """The issue's check: a helix plan limited by work units has the same id when two other processes burn
    the CPU (the units stopped both searches, not the clock)."""
    idle_budget = PlanningBudget(units=150.0, wall_end=PlanningBudget.for_limit(3600.0).wall_end)
    idle = plan_with("helix", idle_budget)
    loaded_budget = PlanningBudget(units=150.0, wall_end=PlanningBudget.for_limit(3600.0).wall_end)
    with cpu_burners():
        loaded = plan_with("helix", loaded_budget)
    for budget in (idle_budget, loaded_budget):
        assert budget.stopped_by_units() and not budget.tripped()
    assert loaded.plan_id == idle.plan_id


def test_make_plan_takes_a_callers_budget() -> None:
    """A caller's budget replaces the limit's: `units_only` (no wall-clock net) never trips, so it gives the
    reference machine's plan on any machine, the same twice."""
    from planner_service.planner import make_plan

    plans = []
    for _ in range(2):
        budget = PlanningBudget.units_only(0.3)
        plans.append(make_plan(batch=BATCH, cluster=CLUSTER, model=MODEL, strategy="helix", budget=budget))
        assert not budget.tripped() and budget.stopped_by_units()
    assert plans[0].plan_id == plans[1].plan_id
