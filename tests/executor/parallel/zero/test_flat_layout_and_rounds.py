"""Pure parts of the ZeRO machinery: the flat buffer's bucket cut and shard ownership, and the ZeRO-3 rounds
the lanes of a stage block share (no process group here)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executor.parallel.zero.block_rounds import (
    IdleOp,
    RoundsRefused,
    _check_acyclic,
    align_plan,
    block_placements,
    idle_rounds_pair,
    is_subsequence,
    merge_forward_first,
)
from executor.parallel.zero.flat_layout import plan_flat_layout
from proto.batch import Batch
from proto.plan import PipelineSpec
from tests.executor.executor_fixtures import cpu_cluster, make_pipeline_plan, tiny_model

pytestmark = pytest.mark.timeout(60)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=12),
    dp=st.sampled_from([1, 2, 4, 8]),
    bucket=st.integers(8, 4000),
)
def test_buckets_cover_the_buffer_and_shards_partition_it(sizes: list[int], dp: int, bucket: int) -> None:
    """Buckets tile [0, padded) in order, each a multiple of d elements, ceil(bytes / bucket bytes) of them
    (unless padding to d adds one), and the ranks' owned slices partition every bucket; every parameter's
    pieces tile its range."""
    layout = plan_flat_layout(sizes, elem_bytes=4, bucket_bytes=bucket * 4, dp_size=dp)
    assert layout.padded % dp == 0 and layout.padded >= sum(sizes)
    buckets = layout.buckets
    assert buckets[0][0] == 0 and buckets[-1][1] == layout.padded
    assert all(a[1] == b[0] for a, b in itertools.pairwise(buckets))
    assert all((hi - lo) % dp == 0 for lo, hi in buckets)
    assert len(buckets) in (math.ceil(layout.padded / layout.bucket_elems),)
    for b, (lo, hi) in enumerate(buckets):
        owned = [layout.owned(b, r) for r in range(dp)]
        assert owned[0][0] == lo and owned[-1][1] == hi
        assert all(x[1] == y[0] for x, y in itertools.pairwise(owned))
    shard_len = sum((hi - lo) // dp for lo, hi in buckets)
    assert shard_len == layout.shard_elems
    for i, n in enumerate(sizes):
        pieces = layout.param_pieces(i)
        assert pieces[0][1] == layout.offsets[i] and pieces[-1][2] == layout.offsets[i] + n
        assert sum(hi - lo for _, lo, hi in pieces) == n


def test_bucket_count_is_the_contracts() -> None:
    """A stage of G gradient bytes has ceil(G / bucket bytes) buckets (25 MiB default, as DDP)."""
    layout = plan_flat_layout([10_000_000, 3_000_000], elem_bytes=4, bucket_bytes=25 * 2**20, dp_size=8)
    assert len(layout.buckets) == math.ceil(13_000_000 * 4 / (25 * 2**20)) == 2


def test_nested_lanes_share_the_busiest_lanes_rounds() -> None:
    """1F1B lanes of 3 and 1 chunks: the block runs the 3-chunk lane's 6 rounds; the 1-chunk lane idles in the
    others, and each of its idle B rounds has an idle F before it."""
    kinds, placed = block_placements(["FFBFBB", "FB"])
    assert kinds == "FFBFBB" and placed == [[0, 1, 2, 3, 4, 5], [0, 2]]
    assert idle_rounds_pair(kinds, placed[1])


def test_lanes_that_do_not_nest_get_a_forward_first_supersequence() -> None:
    """All forwards then all backwards (4 chunks) beside an interleaved 6-chunk lane cannot idle on the busier
    lane's rounds (an idle B would come first), so the rounds grow; every lane still fits, in order, and every
    idle B has an idle F before it."""
    lanes = ["FFFFBBBB", "FFFBBFFBBFBB"]
    kinds, placed = block_placements(lanes)
    assert len(kinds) > 12 and kinds.count("F") == kinds.count("B")
    for seq, rounds in zip(lanes, placed, strict=True):
        assert "".join(kinds[r] for r in rounds) == seq and rounds == sorted(rounds)
        assert idle_rounds_pair(kinds, rounds)
    assert is_subsequence("FB", merge_forward_first(["FB", "FFBB"])[0])


def test_rounds_that_wait_on_each_other_are_refused() -> None:
    """Equal 1F1B lanes share their rounds with no idle op; and rounds whose pipeline dependencies form a cycle
    (stage 0's round 2 feeds stage 1's round 1, whose backward stage 0's round 1 waits for) are refused before
    any collective, instead of deadlocking."""
    cluster, model = cpu_cluster(2, 2), tiny_model(num_layers=2)
    pipeline = PipelineSpec(num_stages=2, layer_ranges=[(0, 1), (1, 2)])
    batch = Batch(seq_ids=[1, 2, 3, 4], lengths=[5, 6, 7, 8])
    lanes = [(0, 1, [[(1, 0, 5)], [(2, 0, 6)]]), (1, 1, [[(3, 0, 7)], [(4, 0, 8)]])]
    plan = make_pipeline_plan(batch, cluster, model, pipeline, lanes)
    rounds = align_plan(plan)
    assert all(not isinstance(r, IdleOp) for key in rounds for r in rounds[key])
    kinds = {0: "FFBB", 1: "FFBB"}
    crossing = {
        (0, 0): {("F", 0): 0, ("F", 1): 2, ("B", 0): 1, ("B", 1): 3},
        (0, 1): {("F", 0): 0, ("F", 1): 1, ("B", 0): 2, ("B", 1): 3},
        (1, 0): {("F", 0): 0, ("F", 1): 2, ("B", 0): 1, ("B", 1): 3},
        (1, 1): {("F", 0): 0, ("F", 1): 2, ("B", 0): 1, ("B", 1): 3},
    }
    with pytest.raises(RoundsRefused, match="deadlock"):
        _check_acyclic(plan, kinds, crossing)
    _check_acyclic(plan, kinds, {key: crossing[(1, 0)] for key in crossing})  # the same without the crossing
