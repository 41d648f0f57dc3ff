"""The memory timeline's shortcut for lanes of whole sequences gives, to the bit, what one cost-model call per
chunk gives."""

from __future__ import annotations

import numpy as np
import pytest

from planner_service.assembly import LaneDraft, lane_of_draft
from planner_service.cost_model import CostModel
from planner_service.layout.recompute import uniform_recompute
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.simulator.memory_timeline import stage_memory
from proto import Chunk, PipelineSpec, Segment
from proto.topology import Topology


@pytest.mark.parametrize(
    ("model_name", "sp_degree", "stages"), [("llama2-7b", 1, 1), ("llama3-8b", 4, 2), ("gpt-13b", 8, 4)]
)
def test_whole_sequence_lanes_match_per_chunk_cost_calls(model_name: str, sp_degree: int, stages: int) -> None:
    cluster, model = resolve_cluster("a800-80g-4x8"), resolve_model(model_name)
    cost = CostModel.from_specs(cluster, model)
    pipeline = PipelineSpec.even(model.num_layers, stages)
    rng = np.random.default_rng(sp_degree)
    lengths = [int(n) for n in rng.integers(1, 40000, size=12)]
    chunks = [Chunk(segments=[Segment(seq_id=i, start=0, end=n)]) for i, n in enumerate(lengths[:8])]
    chunks.append(Chunk(segments=[Segment(seq_id=8 + i, start=0, end=n) for i, n in enumerate(lengths[8:])]))
    draft = LaneDraft(
        sp_degree=sp_degree, offset=0, chunks=tuple(chunks), recompute=uniform_recompute(pipeline, len(chunks), False)
    )
    lane = lane_of_draft(Topology.of(cluster, stages), draft)
    tokens = [c.num_tokens for c in chunks]
    for p in range(stages):
        layers, last = pipeline.layers_of(p), p == stages - 1
        memory = stage_memory(lane, pipeline, p, cost, dict(enumerate(lengths)), tokens)

        def held(c: int, r: int, layers: int = layers, last: bool = last) -> float:
            return cost.chunk_activation_bytes(
                chunks[c], sp_degree=sp_degree, num_layers=layers, recompute_layers=r, is_last_stage=last
            )

        assert memory.base == tuple(held(c, 0) for c in range(len(chunks)))
        assert memory.per_layer == tuple(held(c, 1) - held(c, 0) for c in range(len(chunks)))
        working = [cost.transient_bytes(chunk, sp_degree=sp_degree, is_last_stage=last) for chunk in chunks]
        assert memory.op_constant == tuple(working[op.chunk] for op in lane.schedule[p])


@pytest.mark.parametrize("seed", range(12))
def test_saved_tensor_peak_is_the_peak_without_op_transients(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """`simulate(..., saved_tensor_peaks=True)` leaves out exactly the ops' working memory and keeps everything
    held (activations, checkpoints, K/V of earlier slices, dK/dV accumulators): it equals the full peak of the same
    plan under a cost model whose transient working memory is zero. Random plans cover slices and recompute (no W
    ops, whose queued operands the saved-tensor peak also leaves out, as the CPU probe does)."""
    from planner_service.simulator import simulate
    from tests.simulator.test_simulator import random_plan

    plan, batch, _, _, cost = random_plan(seed)
    result = simulate(plan, batch, cost, record_events=False, saved_tensor_peaks=True)
    assert simulate(plan, batch, cost, record_events=False).saved_tensor_peak_bytes == ()
    monkeypatch.setattr(CostModel, "transient_bytes", lambda self, *args, **kwargs: 0.0)
    without = simulate(plan, batch, cost, record_events=False).predicted.peak_memory_bytes
    assert list(result.saved_tensor_peak_bytes) == pytest.approx(without, rel=1e-12)
    assert all(s <= p for s, p in zip(result.saved_tensor_peak_bytes, result.predicted.peak_memory_bytes, strict=True))


def test_saved_tensor_peak_leaves_out_working_memory_and_w_operands() -> None:
    """By hand: F0 B0 W0, 100 bytes of activations, 10 of working memory per F/B, a deferring B0 holding 5 bytes
    per kept layer of output gradients, 7 per kept layer queued for W0 after it. The full peak is B0's
    100 + 10 + 2 x 5 = 120; what the CPU probe sees is the activations alone, 100."""
    from planner_service.simulator.memory_timeline import StageMemory

    memory = StageMemory(
        num_layers=2,
        base=(100.0,),
        per_layer=(-40.0,),
        op_chunks=(0, 0, 0),
        op_is_forward=(True, False, False),
        op_constant=(10.0, 10.0, 0.0),
        deferred=(5.0,),
        weight_grads_held=(7.0,),
        op_is_weight_grads=(False, False, True),
        op_transient=(10.0, 10.0, 0.0),
    )
    assert memory.peak([0]) == 120.0
    assert memory.peak([0], transients=False) == 100.0
    assert memory.peak([1], transients=False) == 60.0  # one recomputed layer: 100 - 40
