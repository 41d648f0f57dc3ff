"""The memory timeline's shortcut for lanes of whole sequences gives, to the bit, what one cost-model call per
chunk gives."""

from __future__ import annotations

from dataclasses import replace

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


def test_saved_tensor_peak_leaves_out_working_memory_but_counts_w_operands() -> None:
    """By hand: F0 F1 B0 B1 W0 W1 over two layers, 100 bytes of activations per chunk, 10 of working memory per F/B,
    a deferring B peaking 5 bytes per kept layer above its start (operands outweighing the activations they
    replace), 30 per kept layer of operands kept from each B to its W.

    Full: B0 runs with both chunks held (200), 10 of working memory and 2 x 5 of rise: 220; then B1 with chunk 1
    (100), B0's operands (60), 10 and 10: 180. The CPU probe sees no working memory but does see the operands: 210
    at B0, and after B1 the two chunks' operands (120) wait for the W ops. One recomputed layer of chunk 0 (-40)
    and its 1 kept layer: B0 at 160 + 10 + 5 = 175."""
    from planner_service.simulator.memory_timeline import StageMemory

    memory = StageMemory(
        num_layers=2,
        base=(100.0, 100.0),
        per_layer=(-40.0, -40.0),
        op_chunks=(0, 1, 0, 1, 0, 1),
        op_is_forward=(True, True, False, False, False, False),
        op_constant=(10.0, 10.0, 10.0, 10.0, 0.0, 0.0),
        deferred=(5.0, 5.0),
        weight_grads_held=(30.0, 30.0),
        op_is_weight_grads=(False, False, False, False, True, True),
        op_transient=(10.0, 10.0, 10.0, 10.0, 0.0, 0.0),
    )
    assert memory.peak([0, 0]) == 220.0
    assert memory.peak([0, 0], transients=False) == 210.0
    assert memory.peak([1, 0], transients=False) == 175.0 - 10.0
    heavy = replace(memory, weight_grads_held=(200.0, 200.0))  # after B1 both chunks' operands wait: 2 x 2 x 200
    assert heavy.peak([0, 0], transients=False) == 800.0
    assert replace(heavy, deferred=(0.0, 0.0)).peak([0, 0]) == 800.0  # the full peak: no working memory at W0
