"""Layer splits: the even split, and the one that takes layers off the LM head's stage when the head is costly."""

from __future__ import annotations

import numpy as np
import pytest

from planner_service.budget import PlanningBudget
from planner_service.context import PlanningContext
from planner_service.cost_model import CostModel
from planner_service.layout.layer_split import (
    candidate_splits,
    head_balanced_split,
    job_split,
    layer_and_head_work_s,
    searched_splits,
    split_with_last,
    stage_loads,
)
from planner_service.planner import make_plan
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.workloads import sample_synthetic
from proto import Batch, PipelineSpec, Plan, PlanOptions, validate_plan

SHORT = Batch.from_lengths([2048] * 64)
"""Short sequences: a layer is mostly GEMMs, so the LM head weighs its full share (llama3-8b: ~2.4 layers)."""


def cost_of(model: str, cluster: str = "h100-80g-8x8") -> CostModel:
    return CostModel.from_specs(resolve_cluster(cluster), resolve_model(model))


def test_split_with_last_puts_the_remainder_next_to_the_last_stage() -> None:
    split = split_with_last(32, 8, 2)
    assert [split.layers_of(p) for p in range(8)] == [4, 4, 4, 4, 4, 5, 5, 2]
    assert split.layer_ranges[0] == (0, 4) and split.layer_ranges[-1] == (30, 32)
    assert split_with_last(32, 1, 32) == PipelineSpec.even(32, 1)
    with pytest.raises(ValueError, match="no layer"):
        split_with_last(8, 4, 6)


def test_a_costly_head_moves_layers_off_the_last_stage() -> None:
    cost = cost_of("llama3-8b")
    layer_s, head_s = layer_and_head_work_s(cost, SHORT)
    assert 2.0 < head_s / layer_s < 3.0  # 128K vocabulary, 4096 hidden, short sequences
    even = PipelineSpec.even(32, 8)
    balanced = head_balanced_split(cost, SHORT, 8)
    assert balanced.layers_of(7) < even.layers_of(7)
    assert max(stage_loads(balanced, layer_s, head_s)) < 0.85 * max(stage_loads(even, layer_s, head_s))
    # no integer split does better: the busiest stage holds ceil of the rest, or the last stage with its head
    best = min(max(stage_loads(split_with_last(32, 8, k), layer_s, head_s)) for k in range(1, 26))
    assert max(stage_loads(balanced, layer_s, head_s)) == pytest.approx(best)
    assert candidate_splits(cost, SHORT, 8) == [even, balanced]


def test_the_even_split_stays_when_moving_layers_cannot_help() -> None:
    # llama2-7b's head is ~0.65 layers: a 4-layer last stage with the head is lighter than any 5-layer stage
    cost = cost_of("llama2-7b")
    assert head_balanced_split(cost, SHORT, 8) == PipelineSpec.even(32, 8)
    assert candidate_splits(cost, SHORT, 8) == [PipelineSpec.even(32, 8)]
    assert head_balanced_split(cost_of("llama3-8b"), SHORT, 1) == PipelineSpec.even(32, 1)


def test_long_sequences_make_the_head_relatively_cheaper() -> None:
    """The head is linear in tokens and attention quadratic: fewer layers move for long sequences."""
    cost = cost_of("llama3-8b")
    long = Batch.from_lengths([131072] * 4)
    assert head_balanced_split(cost, long, 4).layers_of(3) >= head_balanced_split(cost, SHORT, 4).layers_of(3)


def context(batch: Batch, model: str, *, split: PipelineSpec | None = None) -> PlanningContext:
    cluster, spec = resolve_cluster("h100-80g-8x8"), resolve_model(model)
    return PlanningContext(
        batch=batch,
        cluster=cluster,
        model=spec,
        cost=CostModel.from_specs(cluster, spec),
        budget=PlanningBudget(units=600.0, wall_end=1e18),
        num_stages=split.num_stages if split else None,
        layer_split=split,
    )


def test_a_job_split_is_the_only_split() -> None:
    """A job's executors build their stage modules once, from the job's split: every strategy plans on it."""
    free = context(SHORT, "llama3-8b")
    assert len(searched_splits(free, 8)) == 2
    assert job_split(free, 8) == [PipelineSpec.even(32, 8)]
    mine = split_with_last(32, 8, 3)
    pinned = context(SHORT, "llama3-8b", split=mine)
    assert searched_splits(pinned, 8) == job_split(pinned, 8) == [mine]
    with pytest.raises(ValueError, match="not a split"):
        context(SHORT, "llama2-7b", split=split_with_last(16, 4, 1))


def test_helix_plans_the_split_and_is_faster_for_it() -> None:
    cluster, model = resolve_cluster("h100-80g-8x8"), resolve_model("llama3-8b")
    lengths = sample_synthetic("commoncrawl", 128, np.random.default_rng(2))
    batch = Batch.from_lengths([min(n, 131072) for n in lengths])
    helix = make_plan(batch=batch, cluster=cluster, model=model, strategy="helix", time_limit_s=2.0)
    even = PipelineSpec.even(32, 8)
    pinned = make_plan(
        batch=batch,
        cluster=cluster,
        model=model,
        strategy="helix",
        time_limit_s=2.0,
        num_stages=8,
        layer_ranges=even.layer_ranges,
    )
    validate_plan(helix, batch, cluster, model)
    assert pinned.pipeline == even
    assert helix.pipeline != PipelineSpec.even(32, helix.pipeline.num_stages)
    assert helix.predicted.iteration_s < 0.9 * pinned.predicted.iteration_s
    assert "layers " in helix.solver.message
    assert helix.solver.lower_bound_s is not None and helix.solver.lower_bound_s <= helix.predicted.iteration_s


JOB_SPLIT = split_with_last(32, 4, 5)
"""An uneven split of llama3-8b's 32 layers into 4 stages (9/9/9/5), as a job might fix it."""


def plan_on_job_split(strategy: str, time_limit_s: float) -> Plan:
    """48 sequences of 3-7.6K tokens on h100-80g-8x8, llama3-8b, P = 4 at `JOB_SPLIT`."""
    return make_plan(
        batch=Batch.from_lengths([3000 + 97 * i for i in range(48)]),
        cluster=resolve_cluster("h100-80g-8x8"),
        model=resolve_model("llama3-8b"),
        strategy=strategy,
        time_limit_s=time_limit_s,
        num_stages=4,
        layer_ranges=JOB_SPLIT.layer_ranges,
    )


@pytest.mark.parametrize("strategy", ["static", "megatron", "dcp", "infinipipe", "helix", "greedy"])
def test_every_strategy_plans_on_the_job_split(strategy: str) -> None:
    assert plan_on_job_split(strategy, 1.0).pipeline == JOB_SPLIT


@pytest.mark.parametrize(
    ("stages", "ranges", "says"),
    [
        (4, [(0, 16), (16, 32)], "2 stages but num_stages is 4"),
        (None, [(0, 32)], "num_stages is None"),
        (2, [(0, 10), (12, 32)], "not a split"),
        (2, [(0, 10), (10, 30)], "covers 30 layers"),
    ],
)
def test_a_bad_job_split_is_refused_naming_the_field(stages: int | None, ranges: list, says: str) -> None:
    from planner_service.errors import PlanningError

    cluster, model = resolve_cluster("h100-80g-8x8"), resolve_model("llama3-8b")
    with pytest.raises(PlanningError, match=says) as caught:
        make_plan(batch=SHORT, cluster=cluster, model=model, strategy="greedy", num_stages=stages, layer_ranges=ranges)
    assert caught.value.field == "layer_ranges"


def test_helix_on_a_job_split_still_contains_infinipipes_plans() -> None:
    """On a job's own (uneven) split, InfiniPipe's candidates are built at that split, so helix is never slower."""
    plans = {strategy: plan_on_job_split(strategy, 2.0) for strategy in ("infinipipe", "helix")}
    assert plans["helix"].predicted.iteration_s <= plans["infinipipe"].predicted.iteration_s * (1 + 1e-9)


def test_infinipipes_candidates_are_required_at_the_job_split() -> None:
    from planner_service.search import CANDIDATES_BUILT, SearchSession
    from planner_service.strategies.helix import proposals

    cluster, model = resolve_cluster("h100-80g-8x8"), resolve_model("llama3-8b")
    mine = split_with_last(32, 4, 5)
    ctx = PlanningContext.of(
        batch=Batch.from_lengths([3000 + 97 * i for i in range(48)]),
        cluster=cluster,
        model=model,
        options=PlanOptions(),
        num_stages=4,
        layer_split=mine,
        budget=PlanningBudget(units=600.0, wall_end=1e18),
    )
    required, optional = proposals(SearchSession(ctx, ctx.budget), None)
    uniform = [p for p in required + optional if p.key[0] == "uniform"]
    assert uniform and all(p.key[-1] == tuple(mine.layer_ranges) for p in uniform)
    assert sum(p.key[0] == "uniform" for p in required) == min(CANDIDATES_BUILT, len(uniform))
