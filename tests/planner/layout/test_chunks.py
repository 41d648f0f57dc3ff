"""Chunking: the slicer, the packers and the two chunking policies every strategy builds chunks with.

Guards against slicing that loses or duplicates tokens, packers that break their caps, a best fit that is
not the tightest fit, and chunk lists that put two long sequences' slices together or slices out of order.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner_service.cost_model import preset_profile
from planner_service.layout.chunks import (
    OpenChunk,
    best_fit_decreasing,
    capped_chunks,
    cost_balanced_chunks,
    equal_cost_cuts,
    pack_best_fit_decreasing,
    pack_next_fit,
    sequence_cost,
    slice_sequence,
)
from planner_service.presets import CLUSTERS, MODELS
from proto import Chunk, Segment

PROFILE = preset_profile(CLUSTERS["cpu-2x2"], MODELS["tiny"]).model_copy(
    update={"attn_s_per_token2": 1e-9, "linear_s_per_token": 1e-6}
)
"""Chunking reads only the two compute coefficients: attention per token pair and linear per token."""


def assert_covers_exactly(chunks: list[Chunk], items: list[tuple[int, int]]) -> None:
    """Every token of every sequence in exactly one segment, and a sequence's slices in token order."""
    pieces: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for chunk in chunks:
        for seg in chunk.segments:
            pieces[seg.seq_id].append((seg.start, seg.end))
    assert sorted(pieces) == sorted(seq_id for seq_id, _ in items)
    for seq_id, length in items:
        spans = pieces[seq_id]
        assert spans == sorted(spans), f"sequence {seq_id}: slices out of order {spans}"
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), spans


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


def test_best_fit_goes_to_the_tightest_open_chunk_within_both_caps() -> None:
    """Cost cap 10, token cap 100. Open chunks: A (cost 5, 10 tokens), B (cost 7, 10 tokens), C (cost 2,
    95 tokens). Item 1 (cost 3, 10 tokens): fits A (room 5) and B (room 3) but not C (tokens): B, the
    tightest. Item 2 (cost 3): A (room 5) is the only chunk with room. Item 3 (cost 6): no room anywhere
    (A has 2 left): a new chunk. Item 4 (cost 4): the new chunk (room 4) and nowhere else."""
    open_chunks = [
        OpenChunk(segments=[Segment(seq_id=90, start=40, end=50)], cost=5.0, tokens=10),
        OpenChunk(segments=[Segment(seq_id=91, start=40, end=50)], cost=7.0, tokens=10),
        OpenChunk(segments=[Segment(seq_id=92, start=5, end=100)], cost=2.0, tokens=95),
    ]
    items = [(1, 10, 3.0), (2, 10, 3.0), (3, 10, 6.0), (4, 10, 4.0)]
    chunks = best_fit_decreasing(items, cost_cap=10.0, token_cap=100, open_chunks=open_chunks)
    assert [[s.seq_id for s in c.segments] for c in chunks] == [[90, 2], [91, 1], [92], [3, 4]]
    assert chunks[:3] == open_chunks  # filled in place
    assert (chunks[3].cost, chunks[3].tokens) == (10.0, 20)


sequences = st.lists(st.integers(1, 30_000), min_size=1, max_size=30).map(lambda ls: list(enumerate(ls)))


@given(items=sequences, target=st.integers(1, 16), cap=st.integers(512, 20_000), slicing=st.booleans())
def test_cost_balanced_chunks_cover_every_token_with_one_long_sequence_per_chunk(
    items: list[tuple[int, int]], target: int, cap: int, slicing: bool
) -> None:
    chunks = cost_balanced_chunks(PROFILE, items, target_chunks=target, token_cap=cap, allow_slicing=slicing)
    assert_covers_exactly(chunks, items)
    for chunk in chunks:
        partial = {s.seq_id for s in chunk.segments if (s.start, s.end) != (0, dict(items)[s.seq_id])}
        assert len(partial) <= 1, f"slices of two sequences share a chunk: {chunk}"
        if len(chunk.segments) > 1:  # a packed chunk: shorts (and maybe one tail slice) under the token cap
            assert chunk.num_tokens <= cap
    if not slicing:
        assert all(len({s.seq_id for s in c.segments}) == len(c.segments) for c in chunks)
        assert all(s.start == 0 for c in chunks for s in c.segments)


@given(items=sequences, cap=st.integers(512, 20_000), slicing=st.booleans())
def test_capped_chunks_slice_only_over_the_cap_and_pack_the_rest_under_it(
    items: list[tuple[int, int]], cap: int, slicing: bool
) -> None:
    chunks = capped_chunks(PROFILE, items, token_cap=cap, allow_slicing=slicing)
    assert_covers_exactly(chunks, items)
    longest_kept = max((n for _, n in items if not (slicing and n > cap)), default=1)
    for chunk in chunks:
        if any(s.start > 0 or s.end < dict(items)[s.seq_id] for s in chunk.segments):
            assert len(chunk.segments) == 1  # a slice is a chunk of its own
        else:
            assert chunk.num_tokens <= max(cap, longest_kept)


def test_a_profile_without_compute_cost_slices_into_equal_token_counts() -> None:
    """A user profile may set both compute coefficients to 0 (the schema allows it): the slicer divided by zero,
    and as the greedy fallback itself slices, a job registration crashed its worker (found by schemathesis)."""
    free = preset_profile(CLUSTERS["cpu-1x2"], MODELS["tiny"]).model_copy(
        update={"linear_s_per_token": 0.0, "attn_s_per_token2": 0.0}
    )
    assert equal_cost_cuts(free, 100, 4) == [0, 25, 50, 75, 100]
