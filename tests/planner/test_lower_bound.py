"""The lower bound on simulated iteration time (what `gap` is measured against).

Guards against a gap that is not a gap: a "bound" above a plan some strategy builds (the gap would be negative,
or a plan would look optimal when it is not), checked for every strategy on random batches, clusters and models,
at the plan's own pipeline degree (the bound of a set of degrees is the smallest over them, so this is the
strongest form); and against a bound no tighter than `ideal_s` where a term applies (the all-to-alls memory forces
on long sequences, the LM head on the last stage and the exposed ZeRO-1 parameter all-gather).
"""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

from planner_service.budget import PlanningBudget
from planner_service.context import PlanningContext
from planner_service.cost_model import CostModel
from planner_service.errors import PlanningError
from planner_service.layout.layer_split import SplitChoice, job_split, searched_splits
from planner_service.lower_bound import degree_bound, forced_recompute_layers, gap_to, simulated_time_lower_bound
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.proposals import dynamic_pipeline_degrees
from planner_service.strategies.registry import STRATEGIES, get_strategy
from planner_service.strategies.static import MAX_STATIC_PIPELINE_DEGREE
from proto import Batch, PipelineSpec, Plan, PlanOptions, SpDegreeCost, ZeroStage

CASES = [  # (cluster, model): small and large clusters, MHA and GQA, 40 GB devices that force ZeRO and slicing
    ("a800-80g-4x8", "llama2-7b"),
    ("a100-40g-8x8", "gpt-13b"),
    ("h100-80g-8x8", "llama3-8b"),
    ("cpu-2x4", "small"),
    ("a100-40g-8x8", "gpt-30b"),
]


def context(
    batch: Batch, cluster: str = "a800-80g-4x8", model: str = "llama2-7b", **options: object
) -> PlanningContext:
    cluster_spec, model_spec = resolve_cluster(cluster), resolve_model(model)
    plan_options = PlanOptions(**options)  # type: ignore[arg-type]
    return PlanningContext(
        batch=batch,
        cluster=cluster_spec,
        model=model_spec,
        cost=CostModel.from_specs(cluster_spec, model_spec, options=plan_options),
        options=plan_options,
        budget=PlanningBudget(units=600.0, wall_end=1e18),
    )


def strategy_degrees(name: str, ctx: PlanningContext) -> list[int]:
    """The pipeline degrees a strategy may choose from (what its own bound, or a caller's, is taken over)."""
    if name == "flexsp":
        return [1]
    if name == "infinipipe":
        return dynamic_pipeline_degrees(ctx, include_one=False)
    if name in ("static", "megatron"):
        return ctx.pipeline_degrees(max_degree=MAX_STATIC_PIPELINE_DEGREE)
    return ctx.pipeline_degrees()


def own_split(plan: Plan) -> SplitChoice:
    """The plan's own layer split (at its P)."""
    return lambda ctx, num_stages: [plan.pipeline]


def strategy_splits(name: str) -> SplitChoice:
    """The layer splits a strategy builds: helix also the head-balanced one, the others the even one."""
    return searched_splits if name == "helix" else job_split


def random_lengths(rng: random.Random, longest: int) -> list[int]:
    count = rng.randint(1, 24)
    return [rng.choice((rng.randint(1, 2048), rng.randint(2048, longest))) for _ in range(count)]


@pytest.mark.parametrize("seed", range(20))
def test_bound_is_below_every_plan_of_every_strategy(seed: int) -> None:
    rng = random.Random(seed)
    cluster, model = CASES[seed % len(CASES)]
    longest = 16384 if cluster.startswith("cpu") else 131072
    batch = Batch.from_lengths(random_lengths(rng, longest))
    checked = 0
    for name in STRATEGIES:
        ctx = context(batch, cluster, model)
        try:
            plan = get_strategy(name)(ctx)
        except (PlanningError, ValueError):
            continue  # a strategy that cannot run this batch builds nothing to bound
        simulated = plan.predicted.iteration_s
        own_degree = simulated_time_lower_bound(ctx, [plan.pipeline.num_stages], own_split(plan))
        assert own_degree <= simulated * (1 + 1e-9), (name, plan.pipeline.num_stages, own_degree, simulated)
        assert simulated_time_lower_bound(ctx, strategy_degrees(name, ctx), strategy_splits(name)) <= own_degree
        if plan.solver.lower_bound_s is not None:
            assert plan.solver.lower_bound_s <= simulated * (1 + 1e-9), name
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("seed", range(5))
def test_bound_holds_under_measured_per_degree_costs(seed: int) -> None:
    """A measured profile prices lanes of each SP degree differently (`SpDegreeCost`): one degree computing for
    less than the formula (scale < 1), others for more plus a per-call overhead. The bound must use the cheapest."""
    rng = random.Random(100 + seed)
    cluster, model = CASES[seed % len(CASES)]
    longest = 16384 if cluster.startswith("cpu") else 131072
    batch = Batch.from_lengths(random_lengths(rng, longest))
    base = context(batch, cluster, model)
    costs = (
        SpDegreeCost(sp_degree=1, compute_scale=1.3, call_overhead_s=2e-4),
        SpDegreeCost(sp_degree=2, compute_scale=0.6, call_overhead_s=0.0),
        SpDegreeCost(sp_degree=8, compute_scale=1.1, call_overhead_s=1e-3),
    )
    profile = base.cost.profile.model_copy(update={"sp_degree_costs": costs})
    checked = 0
    for name in STRATEGIES:
        ctx = replace(base, cost=replace(base.cost, profile=profile))
        try:
            plan = get_strategy(name)(ctx)
        except (PlanningError, ValueError):
            continue
        bound = simulated_time_lower_bound(ctx, [plan.pipeline.num_stages], own_split(plan))
        assert bound <= plan.predicted.iteration_s * (1 + 1e-9), (name, plan.pipeline.num_stages, bound)
        checked += 1
    assert checked >= 3


def test_bound_holds_for_a_job_pinned_to_zero_3() -> None:
    """A job whose executor shards once per job at ZeRO-3: no after-step all-gather, per-chunk rounds instead."""
    rng = random.Random(7)
    batch = Batch.from_lengths(random_lengths(rng, 65536))
    for name in ("static", "greedy", "helix"):
        ctx = context(batch, zero_stage=ZeroStage.PARAMETERS, max_zero_stage=ZeroStage.PARAMETERS)
        plan = get_strategy(name)(ctx)
        bound = simulated_time_lower_bound(ctx, [plan.pipeline.num_stages], own_split(plan))
        assert bound <= plan.predicted.iteration_s, name


def test_long_sequences_forced_onto_big_lanes_raise_the_bound_above_ideal() -> None:
    """Without a pipeline a 384K-token sequence fits only a large SP group: its all-to-alls count."""
    batch = Batch.from_lengths([393216, 1000, 2000])
    ctx = context(batch)
    only_one_stage = simulated_time_lower_bound(ctx, [1])
    assert only_one_stage > ctx.cost.ideal_s(batch)
    assert simulated_time_lower_bound(ctx, [1, 2, 4]) <= only_one_stage  # more freedom, a lower bound


def test_pipeline_bound_counts_the_head_on_the_last_stage_and_the_exposed_all_gather() -> None:
    """At P = 4 the last stage's block carries the LM head of every token (4x its cluster-wide share), and a
    job pinned to ZeRO-1 pays the parameter all-gather after the step: each lifts the bound above ideal."""
    batch = Batch.from_lengths([4096] * 64)
    lengths = np.array(batch.lengths, dtype=np.float64)
    ctx = context(batch, zero_stage=ZeroStage.OPTIMIZER, max_zero_stage=ZeroStage.OPTIMIZER)
    ideal = ctx.cost.ideal_s(batch)
    pinned = degree_bound(ctx, 4, lengths)
    assert pinned > 1.01 * ideal
    no_sync = replace(ctx, cost=replace(ctx.cost, profile=ctx.cost.profile.model_copy(update={"param_bytes": 0.0})))
    head_only = degree_bound(no_sync, 4, lengths)
    assert ideal < head_only < pinned  # the head alone raises it; the all-gather raises it further
    assert simulated_time_lower_bound(ctx, [4]) == pytest.approx(pinned)
    assert simulated_time_lower_bound(ctx, [1, 4]) <= pinned


def test_memory_forces_recompute_on_long_unsliced_sequences() -> None:
    """Without a pipeline a long sequence on a small lane must recompute layers (the bound charges their forward);
    a larger lane needs fewer, and a short sequence none."""
    ctx = context(Batch.from_lengths([65536]), zero_stage=ZeroStage.PARAMETERS)  # model states fit one device
    cost, pipeline = ctx.cost, PipelineSpec.even(ctx.model.num_layers, 1)
    assert forced_recompute_layers(cost, pipeline, 1024, 1) == 0
    on_one = forced_recompute_layers(cost, pipeline, 65536, 1)
    on_four = forced_recompute_layers(cost, pipeline, 65536, 4)
    assert on_one is None or on_one > 0
    assert on_four is not None and (on_one is None or on_four <= on_one)


def test_gap_is_relative_to_the_simulated_time() -> None:
    assert gap_to(4.0, 3.0) == 0.25
    assert gap_to(4.0, None) is None
    assert gap_to(3.0, 3.5) == 0.0  # never negative


def test_the_full_bound_is_charged_to_the_budget_or_replaced_by_ideal_when_it_does_not_fit() -> None:
    """The bound's units come out of the call's budget (deterministic, inside the limit); when they exceed the
    share it may take, the cheap bound (ideal_s) stands in and the plan's message says so."""
    from planner_service.lower_bound import BOUND_SHARE, bound_units, budgeted_lower_bound

    batch = Batch.from_lengths(random_lengths(random.Random(3), 65536))
    ctx = context(batch)
    degrees = ctx.pipeline_degrees()
    units = bound_units(ctx, degrees)
    roomy = PlanningBudget(units=units / BOUND_SHARE * 2, wall_end=1e18)
    full = budgeted_lower_bound(ctx, degrees, roomy)
    assert full.full and full.value_s == simulated_time_lower_bound(ctx, degrees) and full.note == ""
    assert roomy.spent == pytest.approx(units)
    tight = PlanningBudget(units=units / BOUND_SHARE * 0.5, wall_end=1e18)
    cheap = budgeted_lower_bound(ctx, degrees, tight)
    assert not cheap.full and cheap.value_s == ctx.cost.ideal_s(batch) and tight.spent == 0.0
    assert cheap.value_s < full.value_s and "ideal_s only" in cheap.note

    starved = replace(ctx, budget=PlanningBudget(units=units / BOUND_SHARE * 0.5, wall_end=1e18))
    plan = get_strategy("helix")(starved)
    assert "gap against ideal_s only" in plan.solver.message
    assert plan.solver.lower_bound_s == ctx.cost.ideal_s(batch)
