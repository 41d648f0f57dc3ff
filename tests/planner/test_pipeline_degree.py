"""The job-level pipeline-degree decision (`choose_pipeline_degree`), with a scripted planner per P.

Guards the decision rule jobs depend on: the fastest feasible P, ties to the smaller P; the synthetic
sample retried at shorter truncations; a fixed P checked and kept without solving; a strategy that plans
another P counted as infeasible; and one-line errors naming the field when nothing fits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from planner_service.errors import InfeasibleWorkload, PlanningError
from planner_service.pipeline_degree import (
    DEFAULT_SAMPLE_MAX_LENS,
    DegreeTrial,
    SyntheticSample,
    choose_pipeline_degree,
)
from planner_service.planner import make_plan
from planner_service.presets import CLUSTERS, MODELS
from proto import Batch, PipelineSpec, Plan

CLUSTER = CLUSTERS["a800-80g-4x8"]  # 32 devices: candidates P = 1, 2, 4, 8, 16, 32 for a 32-layer model
MODEL = MODELS["llama2-7b"]
LENGTHS = [9000, 4000, 1200, 800, 300, 120]
BASE_PLAN = make_plan(
    batch=Batch.from_lengths(LENGTHS), cluster=CLUSTERS["cpu-2x2"], model=MODELS["tiny"], strategy="greedy"
)


def plan_with(num_stages: int, iteration_s: float) -> Plan:
    """A plan that reports P and a predicted time (the decision reads nothing else)."""
    return BASE_PLAN.model_copy(
        update={
            "pipeline": PipelineSpec.even(MODEL.num_layers, num_stages),
            "predicted": BASE_PLAN.predicted.model_copy(update={"iteration_s": iteration_s}),
        }
    )


def scripted(times: dict[int, float | str], seen: list[tuple[int, Batch]]) -> Callable[[Batch, int], Plan]:
    """A planner at P: the scripted time, or a PlanningError with the scripted message."""

    def plan_at(batch: Batch, num_stages: int) -> Plan:
        seen.append((num_stages, batch))
        outcome = times[num_stages]
        if isinstance(outcome, str):
            raise PlanningError(outcome)
        return plan_with(num_stages, outcome)

    return plan_at


def test_fastest_feasible_wins_and_every_candidate_is_reported() -> None:
    seen: list[tuple[int, Batch]] = []
    times: dict[int, float | str] = {1: "too long", 2: 3.0, 4: 1.5, 8: 2.0, 16: 1.7, 32: "too deep"}
    choice = choose_pipeline_degree(
        cluster=CLUSTER, model=MODEL, strategy="helix", plan_at=scripted(times, seen), sample_lengths=LENGTHS
    )
    assert (choice.num_stages, choice.sample_source, choice.sample_size) == (4, "sample_lengths", len(LENGTHS))
    assert choice.layer_ranges == PipelineSpec.even(32, 4).layer_ranges
    assert [t.num_stages for t in choice.trials] == [1, 2, 4, 8, 16, 32]
    assert [t.feasible for t in choice.trials] == [False, True, True, True, True, False]
    assert choice.trials[0].message == "too long" and choice.trials[0].iteration_s is None
    assert choice.trials[2].iteration_s == 1.5 and choice.trials[2].solver_status == BASE_PLAN.solver.status.value
    assert all(batch.lengths == LENGTHS for _, batch in seen)


def test_a_tie_goes_to_the_smaller_pipeline_degree() -> None:
    times: dict[int, float | str] = {1: 2.0, 2: 1.0, 4: 3.0, 8: 1.0, 16: 1.0, 32: 4.0}
    choice = choose_pipeline_degree(
        cluster=CLUSTER, model=MODEL, strategy="helix", plan_at=scripted(times, []), sample_lengths=LENGTHS
    )
    assert choice.num_stages == 2


def test_a_strategy_that_plans_another_degree_is_infeasible_at_the_asked_one() -> None:
    def flexsp_like(batch: Batch, num_stages: int) -> Plan:
        return plan_with(1, 5.0)  # always P = 1, like a strategy without a pipeline

    choice = choose_pipeline_degree(
        cluster=CLUSTER, model=MODEL, strategy="flexsp", plan_at=flexsp_like, sample_lengths=LENGTHS
    )
    assert choice.num_stages == 1
    assert [t.feasible for t in choice.trials] == [True] + [False] * 5
    assert choice.trials[1].message == "strategy flexsp planned P=1 instead"


def test_synthetic_sample_is_retried_at_shorter_truncations() -> None:
    """Nothing runs a sequence over 8192 tokens: the 32768-token sample fails at every P, the 8192 one wins."""
    seen: list[tuple[int, Batch]] = []

    def plan_at(batch: Batch, num_stages: int) -> Plan:
        seen.append((num_stages, batch))
        if max(batch.lengths) > 8192:
            raise InfeasibleWorkload(f"{max(batch.lengths)} tokens do not fit")
        return plan_with(num_stages, 10.0 / num_stages)

    choice = choose_pipeline_degree(
        cluster=CLUSTER, model=MODEL, strategy="helix", plan_at=plan_at, synthetic=SyntheticSample(size=64)
    )
    assert (choice.num_stages, choice.sample_source, choice.sample_size) == (32, "synthetic", 64)
    caps = sorted({max(batch.lengths) for _, batch in seen}, reverse=True)
    assert caps[0] > 8192 and caps[1] <= DEFAULT_SAMPLE_MAX_LENS[1]
    assert len(seen) == 2 * 6  # the 2048 truncation was never needed


def test_nothing_fits_names_the_sample_and_every_degree() -> None:
    times: dict[int, float | str] = dict.fromkeys([1, 2, 4, 8, 16, 32], "no lane fits")
    with pytest.raises(InfeasibleWorkload) as info:
        choose_pipeline_degree(
            cluster=CLUSTER, model=MODEL, strategy="helix", plan_at=scripted(times, []), sample_lengths=LENGTHS
        )
    assert info.value.field == "sample_lengths"
    assert str(info.value).startswith("no pipeline degree of [1, 2, 4, 8, 16, 32] can run the sample batch (P=1: ")
    assert "\n" not in str(info.value)
    seen: list[tuple[int, Batch]] = []
    with pytest.raises(InfeasibleWorkload) as info:
        choose_pipeline_degree(cluster=CLUSTER, model=MODEL, strategy="helix", plan_at=scripted(times, seen))
    assert info.value.field == "cluster"  # the synthetic sample: the cluster is what is too small
    assert len(seen) == len(DEFAULT_SAMPLE_MAX_LENS) * 6


def test_a_fixed_degree_is_checked_and_kept_without_solving() -> None:
    seen: list[tuple[int, Batch]] = []
    choice = choose_pipeline_degree(
        cluster=CLUSTER, model=MODEL, strategy="helix", plan_at=scripted({}, seen), num_stages=8
    )
    assert (choice.num_stages, choice.sample_source, choice.sample_size, choice.trials) == (8, "fixed", 0, ())
    assert choice.layer_ranges == PipelineSpec.even(32, 8).layer_ranges and seen == []
    for bad in (3, 64):
        with pytest.raises(PlanningError, match=rf"num_stages \({bad}\) must divide the 32 devices") as info:
            choose_pipeline_degree(
                cluster=CLUSTER, model=MODEL, strategy="helix", plan_at=scripted({}, seen), num_stages=bad
            )
        assert info.value.field == "num_stages"


def test_the_map_function_runs_every_degree_once_in_order() -> None:
    calls: list[list[int]] = []

    def recording_map(fn: Callable[[int], DegreeTrial], degrees: Sequence[int]) -> list[DegreeTrial]:
        calls.append(list(degrees))
        return [fn(p) for p in degrees]

    times: dict[int, float | str] = {1: 2.0, 2: 1.0, 4: 3.0, 8: 1.0, 16: 1.0, 32: 4.0}
    choice = choose_pipeline_degree(
        cluster=CLUSTER,
        model=MODEL,
        strategy="helix",
        plan_at=scripted(times, []),
        sample_lengths=LENGTHS,
        map_fn=recording_map,
    )
    assert calls == [[1, 2, 4, 8, 16, 32]] and choice.num_stages == 2


def test_real_planner_on_a_small_cluster() -> None:
    """End to end with `make_plan`: the choice is a candidate P whose plan was feasible, and it is the fastest."""
    cluster, model = CLUSTERS["cpu-2x2"], MODELS["tiny"]

    def plan_at(batch: Batch, num_stages: int) -> Plan:
        return make_plan(batch=batch, cluster=cluster, model=model, strategy="greedy", num_stages=num_stages)

    choice = choose_pipeline_degree(
        cluster=cluster, model=model, strategy="greedy", plan_at=plan_at, sample_lengths=LENGTHS
    )
    feasible = [t for t in choice.trials if t.feasible]
    assert [t.num_stages for t in choice.trials] == [1, 2] and feasible
    assert choice.num_stages == min(feasible, key=lambda t: (t.iteration_s or 0.0, t.num_stages)).num_stages
