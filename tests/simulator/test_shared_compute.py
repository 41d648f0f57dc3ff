"""Devices that time-share a compute unit (`CostProfile.devices_per_compute_unit`, CPU ranks pinned k to a core).

Guards against a simulator that prices an unbalanced set of SP-1 lanes on a shared core at its longest lane (what
the profile's all-busy timings say) instead of processor sharing, a job spanning two units that runs faster than
its slower unit, an unshared profile (k = 1) whose plans change, and a lower bound that sharing lets a plan beat.
"""

from __future__ import annotations

import random

import pytest

from planner_service.context import PlanningContext
from planner_service.cost_model import CostModel
from planner_service.lower_bound import simulated_time_lower_bound
from planner_service.simulator import simulate
from planner_service.simulator.shared_compute import shared_unit_maps
from proto import Batch, Chunk, Lane, ModelSpec, PipelineSpec, Segment
from tests.cost_model.hand_specs import hand_cluster, hand_plan, ops
from tests.simulator.test_simulator import FLAT, MODEL


def test_two_jobs_on_one_unit_finish_at_their_mean() -> None:
    """k = 2, jobs of 1 s and 3 s on the two ranks of one unit: both run at the profiled rate for 1 s, then the
    second alone twice as fast: its remaining 2 s take 1 s, so it ends at 2 s (the unit's 4 s of work / 2)."""
    short, long = shared_unit_maps([(1.0, [0]), (3.0, [1])], 2)
    assert short(1.0) == pytest.approx(1.0)
    assert long(0.5) == pytest.approx(0.5)
    assert long(2.0) == pytest.approx(1.5)
    assert long(3.0) == pytest.approx(2.0)


def test_a_job_across_units_runs_at_its_slower_units_rate() -> None:
    """Ranks {0, 1} share unit 0, {2, 3} unit 1. Jobs: rank 0 (1 s), ranks 1+2 (3 s, an SP-2 group over both
    units), rank 3 (4 s). After 1 s unit 0 has one busy rank but unit 1 still two: the SP-2 job stays at rate 1
    and ends at 3 s; then rank 3 is alone on unit 1: its last 1 s takes 0.5 s."""
    first, spanning, last = shared_unit_maps([(1.0, [0]), (3.0, [1, 2]), (4.0, [3])], 2)
    assert (first(1.0), spanning(3.0), last(4.0)) == pytest.approx((1.0, 3.0, 3.5))


def test_unshared_units_and_idle_jobs_keep_simulated_time() -> None:
    maps = shared_unit_maps([(2.0, [0]), (0.0, [1]), (5.0, [2, 3])], 2)
    assert maps[0](2.0) == pytest.approx(1.0)  # rank 1's job has no work: rank 0 runs alone all along
    assert maps[1](0.0) == 0.0
    assert maps[2](5.0) == pytest.approx(5.0)  # both ranks of unit 1 are its own
    assert [m(3.0) for m in shared_unit_maps([(2.0, [0]), (3.0, [1])], 1)] == [3.0, 3.0]
    with pytest.raises(ValueError, match="at least 1"):
        shared_unit_maps([(1.0, [0])], 0)


ONE_HEAD = MODEL.model_copy(update={"num_heads": 1, "num_kv_heads": 1})
"""A model no SP degree above 1 can split (Ulysses splits heads): every plan's lanes are SP-1."""


def _sp1_lanes(lengths: list[int], devices_per_unit: int, model: ModelSpec = MODEL) -> tuple:
    """Four SP-1 lanes, one sequence each, P = 1, on a 1x4 cluster whose profile shares units of k devices."""
    cluster = hand_cluster(1, 4)
    batch = Batch.from_lengths(lengths)
    lanes = [
        Lane(
            lane_id=i,
            sp_degree=1,
            ranks=[[i]],
            chunks=[Chunk(segments=[Segment(seq_id=i, start=0, end=n)])],
            schedule=[ops("F0 B0")],
            recompute=[[0]],
        )
        for i, n in enumerate(lengths)
    ]
    plan = hand_plan(cluster, model, batch, PipelineSpec.even(model.num_layers, 1), lanes)
    profile = FLAT.model_copy(update={"devices_per_compute_unit": devices_per_unit, "allreduce_bw_intra": 1e15})
    return plan, batch, CostModel.from_specs(cluster, model, profile)


def test_simulated_lanes_on_shared_cores_by_hand() -> None:
    """Unshared, each lane ends at its own work; with two ranks per core, the longer lane of each core ends at the
    mean of its core's two lanes (processor sharing), the shorter one where it did."""
    lengths = [4000, 1000, 2000, 2000]
    plan, batch, flat = _sp1_lanes(lengths, 1)
    alone = simulate(plan, batch, flat).predicted.lane_s
    assert alone[0] == pytest.approx(4 * alone[1])
    plan, batch, shared = _sp1_lanes(lengths, 2)
    result = simulate(plan, batch, shared)
    expected = [(alone[0] + alone[1]) / 2, alone[1], alone[2], alone[3]]
    assert result.predicted.lane_s == pytest.approx(expected, rel=1e-9)
    assert result.predicted.iteration_s < simulate(plan, batch, flat).predicted.iteration_s
    lane0_end = max(e.end_s for e in result.events if e.lane_id == 0 and e.kind in ("F", "B"))
    assert lane0_end == pytest.approx(expected[0], rel=1e-9)  # the Gantt bars moved with the lane


@pytest.mark.parametrize("seed", range(6))
def test_sharing_never_beats_the_lower_bound(seed: int) -> None:
    """The bound divides its per-device terms by k and keeps the ideal. With one attention head every lane is
    SP-1, so the lane of the longest sequence bounds an unshared plan; on a shared core that lane runs up to twice
    as fast once its core-mate is done, so the undivided bound would exceed the simulated time."""
    rng = random.Random(seed)
    lengths = [4000, 100, 100, 100] if seed == 0 else [rng.randint(100, 4000) for _ in range(4)]
    plan, batch, cost = _sp1_lanes(lengths, 2, ONE_HEAD)
    ctx = PlanningContext(batch=batch, cluster=cost.cluster, model=ONE_HEAD, cost=cost)
    simulated = simulate(plan, batch, cost).predicted.iteration_s
    assert simulated >= simulated_time_lower_bound(ctx, [1]) * (1 - 1e-9)
    if seed == 0:  # the same plan priced as unshared has a bound above this plan's shared time
        unshared = _sp1_lanes(lengths, 1, ONE_HEAD)[2]
        ctx = PlanningContext(batch=batch, cluster=cost.cluster, model=ONE_HEAD, cost=unshared)
        assert simulated_time_lower_bound(ctx, [1]) > simulated
