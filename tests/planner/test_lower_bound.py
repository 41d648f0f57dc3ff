"""The lower bound on simulated iteration time (what `gap` is measured against).

Guards against a gap that is not a gap: a "bound" above a plan the planner builds (the gap would be negative,
or a plan would look optimal when it is not), and a bound that ignores the all-to-alls memory forces on long
sequences (it would be no tighter than `ideal_s`).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner_service.budget import PlanningBudget
from planner_service.context import PlanningContext
from planner_service.cost_model import CostModel
from planner_service.lower_bound import gap_to, simulated_time_lower_bound
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.strategies.registry import get_strategy
from proto import Batch

CLUSTER = resolve_cluster("a800-80g-4x8")
MODEL = resolve_model("llama2-7b")


def context(batch: Batch) -> PlanningContext:
    return PlanningContext(
        batch=batch,
        cluster=CLUSTER,
        model=MODEL,
        cost=CostModel.from_specs(CLUSTER, MODEL),
        budget=PlanningBudget(units=2_000.0, wall_end=1e18),
    )


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.one_of(st.integers(1, 2048), st.integers(2048, 131072)), min_size=1, max_size=24))
def test_bound_is_below_every_plan_the_planner_builds(lengths: list[int]) -> None:
    batch = Batch.from_lengths(lengths)
    ctx = context(batch)
    bound = simulated_time_lower_bound(ctx, ctx.pipeline_degrees())
    assert bound >= ctx.cost.ideal_s(batch)
    for name in ("static", "flexsp", "infinipipe", "greedy", "helix"):
        try:
            plan = get_strategy(name)(context(batch))
        except ValueError:
            continue  # a strategy that cannot run this batch builds nothing to bound
        assert bound <= plan.predicted.iteration_s * (1 + 1e-12), name


def test_long_sequences_forced_onto_big_lanes_raise_the_bound_above_ideal() -> None:
    """Without a pipeline a 384K-token sequence fits only a large SP group: its all-to-alls count."""
    batch = Batch.from_lengths([393216, 1000, 2000])
    ctx = context(batch)
    only_one_stage = simulated_time_lower_bound(ctx, [1])
    assert only_one_stage > ctx.cost.ideal_s(batch)
    assert simulated_time_lower_bound(ctx, [1, 2, 4]) <= only_one_stage  # more freedom, a lower bound


def test_gap_is_relative_to_the_simulated_time() -> None:
    assert gap_to(4.0, 3.0) == 0.25
    assert gap_to(4.0, None) is None
    assert gap_to(3.0, 3.5) == 0.0  # never negative
