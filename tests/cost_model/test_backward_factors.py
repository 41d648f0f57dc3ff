"""Backward time with separate backward/forward factors for attention (k_attn) and GEMMs (k_lin).

Guards against the review's finding that one factor of 2 for the whole layer underpriced attention-heavy (long)
chunks: flash attention's backward is ~2.5x its forward. The factors must reach every place backward is priced:
op costs, the simulator, recompute and `ideal_s`.
"""

from __future__ import annotations

import pytest

from planner_service.cost_model import ChunkShape, CostModel
from planner_service.simulator import simulate
from proto import Batch, Chunk, Lane, ModelSpec, PipelineSpec, Segment
from tests.cost_model.hand_specs import hand_cluster, hand_plan, hand_profile, ops

CLUSTER = hand_cluster(1, 2)
MODEL = ModelSpec(
    name="t", num_layers=4, hidden_size=64, num_heads=8, num_kv_heads=8, ffn_hidden_size=128, vocab_size=256
)
PROFILE = hand_profile(
    attn_s_per_token2=1e-9,
    linear_s_per_token=1e-6,
    layer_overhead_s=1e-5,
    linear_backward_to_forward=2.0,
    attention_backward_to_forward=2.5,
    head_s_per_token=2e-6,
    alltoall_bw_intra=1e9,
)
COST = CostModel.from_specs(CLUSTER, MODEL, PROFILE)
# a whole short sequence (C = 0, L = 100) and a slice (C = 100, L = 50): 150 tokens, pairs 100^2 + 150^2 - 100^2
CHUNK = Chunk(segments=[Segment(seq_id=0, start=0, end=100), Segment(seq_id=1, start=100, end=150)])


def test_backward_of_a_chunk_by_hand() -> None:
    """s = 2, one layer: attention forward 22,500 x 1e-9 / 2 = 11.25 us, GEMMs 150 x 1e-6 / 2 = 75 us, b = 10 us.
    Backward = 2.5 x 11.25 + 2 x (75 + 10) = 198.125 us (one factor of 2 gave 192.5 us). LM head forward
    2e-6 x 150 / 2 = 150 us, backward 300 us. A last stage of 2 layers, 1 recomputed: backward compute
    2 x 198.125 + 300 = 696.25 us; recompute = one layer's forward 96.25 us + its all-to-alls. All-to-alls: 75
    tokens per device x 4 widths of 64 (q, k, v, out; MHA) x 2 bytes x 1/2 sent = 19,200 bytes at 1e9 B/s."""
    a2a = 19_200 / 1e9
    assert COST.alltoall_layer_s(150, 2, spans_nodes=False) == pytest.approx(a2a)
    terms = COST.layer_terms(CHUNK, sp_degree=2, spans_nodes=False)
    assert terms.forward_s == pytest.approx(96.25e-6)
    assert terms.backward_s == pytest.approx(198.125e-6)
    assert terms.head_backward_s == pytest.approx(300e-6)
    bwd = COST.stage_backward_s(
        CHUNK, sp_degree=2, num_layers=2, spans_nodes=False, is_last_stage=True, recompute_layers=1
    )
    assert bwd.compute_s == pytest.approx(696.25e-6)
    assert bwd.recompute_s == pytest.approx(96.25e-6 + a2a)
    assert bwd.comm_s == pytest.approx(2 * a2a)


def test_a_long_chunk_gains_more_than_a_short_one() -> None:
    """One layer, s = 1, no overhead: forward + backward of a 10,000-token sequence is 3.5 x a2 x 1e8 + 3 x a1 x
    1e4 = 0.35 + 0.03 = 0.38 s (one factor of 2: 0.33 s, +15 %); of a 100-token one 3.5e-5 + 3e-4 = 3.35e-4 s
    (3.3e-4 s, +1.5 %). The chunk balance of slicing depends on exactly this ratio."""
    flat = CostModel.from_specs(CLUSTER, MODEL, PROFILE.model_copy(update={"layer_overhead_s": 0.0}))
    long = flat.chunk_cost_s(ChunkShape.from_segments([(0, 10_000)]), sp_degree=1, num_layers=1)
    short = flat.chunk_cost_s(ChunkShape.from_segments([(0, 100)]), sp_degree=1, num_layers=1)
    assert long == pytest.approx(0.38)
    assert short == pytest.approx(3.35e-4)


def test_ideal_uses_both_factors() -> None:
    """Batch [100, 200], 4 layers: attention (1 + 2.5) x 1e-9 x (100^2 + 200^2) = 1.75e-4 per layer, GEMMs
    (1 + 2) x 1e-6 x 300 = 9e-4 per layer, head (1 + 2) x 2e-6 x 300 = 1.8e-3: (4 x 1.075e-3 + 1.8e-3) / 2 devices."""
    assert COST.ideal_s(Batch.from_lengths([100, 200])) == pytest.approx((4 * 1.075e-3 + 1.8e-3) / 2)


def test_simulated_backward_op_uses_the_split_factors() -> None:
    """A 1000-token sequence alone on one device, all 4 layers, F then B: the simulator's B event lasts
    4 x (2.5 x 1e-9 x 1e6 + 2 x (1e-6 x 1000 + 1e-5)) + 2 x 2e-6 x 1000 = 4 x 4.52e-3 + 4e-3 = 22.08 ms."""
    batch = Batch.from_lengths([1000])
    lane = Lane(
        lane_id=0,
        sp_degree=1,
        ranks=[[0]],
        chunks=[Chunk(segments=[Segment(seq_id=0, start=0, end=1000)])],
        schedule=[ops("F0 B0")],
        recompute=[[0]],
    )
    idle = Lane(lane_id=1, sp_degree=1, ranks=[[1]], chunks=[], schedule=[[]], recompute=[[]])
    plan = hand_plan(CLUSTER, MODEL, batch, PipelineSpec.even(4, 1), [lane, idle])
    events = simulate(plan, batch, COST).events
    (b,) = [e for e in events if e.kind == "B"]
    assert b.duration_s == pytest.approx(22.08e-3)
