"""Where a plan's time over ideal goes: each part is what making it free saves in the simulator."""

from __future__ import annotations

import numpy as np
import pytest

from planner_service.cost_model import CostModel
from planner_service.planner import make_plan
from planner_service.presets import CLUSTERS, MODELS
from planner_service.simulator.time_over_ideal import time_over_ideal
from planner_service.workloads import sample_synthetic
from proto import Batch, Chunk, Lane, ModelSpec, PipelineSpec, Segment
from tests.cost_model.hand_specs import hand_cluster, hand_plan, hand_profile, ops

MODEL = ModelSpec(
    name="t", num_layers=2, hidden_size=64, num_heads=8, num_kv_heads=8, ffn_hidden_size=128, vocab_size=256
)


@pytest.mark.parametrize("strategy", ["static", "flexsp", "infinipipe", "helix"])
def test_parts_are_what_making_them_free_saves(strategy: str) -> None:
    cluster, model = CLUSTERS["a800-80g-4x8"], MODELS["llama2-7b"]
    batch = Batch.from_lengths([min(n, 32768) for n in sample_synthetic("github", 64, np.random.default_rng(3))])
    plan = make_plan(batch=batch, cluster=cluster, model=model, strategy=strategy, time_limit_s=1.0)
    parts = time_over_ideal(plan, batch, CostModel.from_specs(cluster, model, options=plan.options))
    assert parts.iteration_s == pytest.approx(plan.predicted.iteration_s, rel=1e-12)
    assert parts.ideal_s == pytest.approx(plan.predicted.ideal_s, rel=1e-12)
    # fixed schedules: a shorter op never makes the plan slower, and the preset's overheads cost something
    for part in (parts.communication_s, parts.collectives_s, parts.overhead_s):
        assert 0.0 <= part < parts.iteration_s
    assert parts.overhead_s > 0.0
    # with every part free the plan still does at least the ideal's compute (ideal_s is a lower bound)
    assert parts.ideal_s * (1 - 1e-9) <= parts.structure_s <= parts.iteration_s
    assert parts.shares()["x_ideal"] == pytest.approx(plan.predicted.iteration_s / plan.predicted.ideal_s)


def one_stage_plan(sp_degree: int) -> tuple[Batch, object]:
    """Two 1000-token sequences on 2 devices: two SP-1 lanes, or one SP-2 lane with both in one chunk."""
    batch = Batch.from_lengths([1000, 1000])
    seqs = [Chunk(segments=[Segment(seq_id=i, start=0, end=1000)]) for i in range(2)]
    if sp_degree == 1:
        lanes = [
            Lane(lane_id=i, sp_degree=1, ranks=[[i]], chunks=[seqs[i]], schedule=[ops("F0 B0")], recompute=[[0]])
            for i in range(2)
        ]
    else:
        both = Chunk(segments=[s for c in seqs for s in c.segments])
        lanes = [Lane(lane_id=0, sp_degree=2, ranks=[[0, 1]], chunks=[both], schedule=[ops("F0 B0")], recompute=[[0]])]
    return batch, hand_plan(hand_cluster(1, 2), MODEL, batch, PipelineSpec.even(2, 1), lanes)


@pytest.mark.parametrize("sp_degree", [1, 2])
def test_a_hand_plan_pays_communication_only_with_sequence_parallelism(sp_degree: int) -> None:
    batch, plan = one_stage_plan(sp_degree)
    cost = CostModel(cluster=hand_cluster(1, 2), model=MODEL, profile=hand_profile())
    parts = time_over_ideal(plan, batch, cost)
    assert parts.overhead_s == 0.0  # the hand profile has no per-call or per-op overhead
    assert parts.collectives_s > 0.0  # two data-parallel replicas reduce their gradients
    if sp_degree == 1:
        assert parts.communication_s == 0.0  # no all-to-alls and, at P = 1, no sends
    else:
        assert parts.communication_s > 0.0
