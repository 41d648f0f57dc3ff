"""Schedules and chunking: the pieces every strategy shares.

Guards against schedules that deadlock or break the token-level slice order (a hang or a wrong
gradient in the executor) and against slicing that loses tokens.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner_service.layout.chunks import (
    equal_cost_cuts,
    pack_best_fit_decreasing,
    pack_next_fit,
    sequence_cost,
    slice_sequence,
)
from planner_service.schedules import backward_order, build_schedule
from proto import Chunk, CostProfile, Lane, Segment
from proto.validation import _check_deadlock, _check_schedule_order

PROFILE = CostProfile(
    attn_s_per_token2=1e-9,
    linear_s_per_token=1e-6,
    alltoall_bw_intra=1e11,
    alltoall_bw_inter=1e10,
    p2p_bw_intra=1e11,
    p2p_bw_inter=1e10,
    allreduce_bw_intra=1e11,
    allreduce_bw_inter=1e10,
    activation_bytes_per_token_layer=1e3,
    checkpoint_bytes_per_token_layer=1e2,
    kv_bytes_per_token_layer=1e2,
)


@st.composite
def lane_chunks(draw: st.DrawFn) -> list[Chunk]:
    """Chunks of a lane: some sequences sliced into consecutive chunks, some packed whole."""
    chunks: list[Chunk] = []
    seq = 0
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            pieces = draw(st.integers(2, 4))
            for k in range(pieces):
                chunks.append(Chunk(segments=[Segment(seq_id=seq, start=10 * k, end=10 * (k + 1))]))
            seq += 1
        else:
            count = draw(st.integers(1, 3))
            chunks.append(Chunk(segments=[Segment(seq_id=seq + i, start=0, end=5) for i in range(count)]))
            seq += count
    return chunks


@given(chunks=lane_chunks(), num_stages=st.integers(1, 4))
def test_schedule_respects_order_and_never_deadlocks(chunks: list[Chunk], num_stages: int) -> None:
    schedule = build_schedule(chunks, num_stages)
    lane = Lane(
        lane_id=0,
        sp_degree=1,
        ranks=[[p] for p in range(num_stages)],
        chunks=chunks,
        schedule=schedule,
        recompute=[[0] * len(chunks)] * num_stages,
    )
    from proto import PipelineSpec, Plan, Predicted

    plan = Plan(
        strategy="t",
        cluster_fingerprint="c",
        model_fingerprint="m",
        batch_fingerprint="b",
        pipeline=PipelineSpec.even(8, num_stages),
        lanes=[lane],
        predicted=Predicted(iteration_s=0, ideal_s=0),
    )
    assert _check_schedule_order(lane, plan) == []
    assert _check_deadlock(lane, num_stages) == []
    for ops in schedule:
        assert sorted((op.kind, op.chunk) for op in ops) == sorted((k, c) for c in range(len(chunks)) for k in "FB")


def test_one_f_one_b_shape_without_slices() -> None:
    chunks = [Chunk(segments=[Segment(seq_id=i, start=0, end=4)]) for i in range(4)]
    schedule = build_schedule(chunks, 2)
    assert [str(op) for op in schedule[0]] == ["F0", "F1", "B0", "F2", "B1", "F3", "B2", "B3"]
    assert [str(op) for op in schedule[1]] == ["F0", "B0", "F1", "B1", "F2", "B2", "F3", "B3"]


def test_backward_order_reverses_slice_chains_only() -> None:
    chunks = [
        Chunk(segments=[Segment(seq_id=9, start=0, end=4)]),
        Chunk(segments=[Segment(seq_id=0, start=0, end=10)]),
        Chunk(segments=[Segment(seq_id=0, start=10, end=20)]),
        Chunk(segments=[Segment(seq_id=0, start=20, end=30), Segment(seq_id=1, start=0, end=5)]),
    ]
    assert backward_order(chunks) == [0, 3, 2, 1]


def test_equal_cost_cuts_balance_cost_and_shrink_later_slices() -> None:
    cuts = equal_cost_cuts(PROFILE, 100_000, 4)
    assert cuts[0] == 0 and cuts[-1] == 100_000
    costs = [sequence_cost(PROFILE, b - a, context=a) for a, b in itertools.pairwise(cuts)]
    assert max(costs) / min(costs) < 1.001
    sizes = [b - a for a, b in itertools.pairwise(cuts)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]


@given(length=st.integers(1, 5000), pieces=st.integers(1, 9))
def test_slices_cover_the_sequence_exactly(length: int, pieces: int) -> None:
    segs = slice_sequence(PROFILE, 3, length, pieces)
    assert segs[0].start == 0 and segs[-1].end == length
    assert all(a.end == b.start for a, b in itertools.pairwise(segs))
    assert len(segs) == min(pieces, length)


@given(items=st.lists(st.integers(1, 50), min_size=1, max_size=40), cap=st.integers(50, 120))
def test_packers_respect_cap_and_keep_every_sequence(items: list[int], cap: int) -> None:
    pairs = list(enumerate(items))
    for chunks in (pack_best_fit_decreasing(pairs, cap), pack_next_fit(pairs, cap)):
        assert all(c.num_tokens <= cap for c in chunks)
        seen = sorted((s.seq_id, s.end) for c in chunks for s in c.segments)
        assert seen == sorted(pairs)


def test_best_fit_decreasing_beats_next_fit_on_adversarial_order() -> None:
    pairs = list(enumerate([60, 50, 40, 50, 60, 40]))
    assert len(pack_best_fit_decreasing(pairs, 100)) == 3
    assert len(pack_next_fit(pairs, 100)) == 4  # 60 | 50 40 | 50 | 60 40


def test_packing_rejects_oversized_sequence() -> None:
    with pytest.raises(AssertionError, match="exceeds the chunk cap"):
        pack_best_fit_decreasing([(0, 200)], 100)
