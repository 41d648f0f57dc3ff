"""`Topology`: the one place that says where ranks sit. Pure checks with hand-computed layouts."""

from __future__ import annotations

import pytest

from proto import ClusterSpec, ModelSpec
from proto.topology import Topology, pipeline_degree_candidates, sp_degree_problem, valid_sp_degrees


def _cluster(nodes: int, per_node: int) -> ClusterSpec:
    return ClusterSpec(
        num_nodes=nodes,
        devices_per_node=per_node,
        device_memory_bytes=1e9,
        peak_flops=1e12,
        intra_node_bandwidth=1e10,
        inter_node_bandwidth=1e9,
    )


def test_stage_blocks_and_stage_of_every_rank() -> None:
    """16 ranks as P = 4: blocks of 4 consecutive ranks; rank r sits on stage r // 4."""
    topo = Topology.of(_cluster(2, 8), 4)
    assert topo.stage_block_size == 4
    assert [topo.stage_block(p) for p in range(4)] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11), (12, 13, 14, 15)]
    assert [topo.stage_of(r) for r in range(16)] == [r // 4 for r in range(16)]
    # stage 1 = ranks 4..7 sit in node 0; stage 2 = ranks 8..11 in node 1; P = 1's block spans both nodes
    assert topo.nodes_of_stage(1) == 1 and topo.nodes_of_stage(2) == 1
    assert Topology.of(_cluster(2, 8), 1).nodes_of_stage(0) == 2


def test_lane_ranks_repeat_the_offset_in_every_stage_block() -> None:
    topo = Topology(num_devices=8, devices_per_node=4, num_stages=2)
    assert topo.lane_ranks(offset=2, sp_degree=2) == [[2, 3], [6, 7]]
    assert topo.lane_ranks(offset=0, sp_degree=4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(AssertionError, match="not aligned"):
        topo.lane_ranks(offset=1, sp_degree=2)  # offset not a multiple of the SP degree
    with pytest.raises(AssertionError, match="not aligned"):
        topo.lane_ranks(offset=4, sp_degree=2)  # past the block of 4


def test_aligned_groups_and_the_alignment_check_agree() -> None:
    """Every group `aligned_sp_groups` lists passes `is_aligned_group`; shifted or odd-sized runs do not."""
    topo = Topology(num_devices=8, devices_per_node=4, num_stages=1)
    groups = topo.aligned_sp_groups(0)
    assert len(groups) == 8 + 4 + 2 + 1
    assert all(topo.is_aligned_group(0, g) for g in groups)
    assert not topo.is_aligned_group(0, [1, 2])  # size 2 at odd offset
    assert not topo.is_aligned_group(0, [0, 1, 2])  # not a power of two
    assert not topo.is_aligned_group(0, [0, 2])  # not consecutive
    two = Topology(num_devices=8, devices_per_node=4, num_stages=2)
    assert not two.is_aligned_group(1, [2, 3])  # inside stage 0's block, not stage 1's
    assert two.is_aligned_group(1, [6, 7])


def test_invalid_degrees_name_the_numbers() -> None:
    with pytest.raises(ValueError, match=r"pipeline degree P \(3\) must be at least 1 and divide the 8 devices"):
        Topology(num_devices=8, devices_per_node=4, num_stages=3)
    with pytest.raises(ValueError, match=r"num_devices \(0\)"):
        Topology(num_devices=0, devices_per_node=4, num_stages=1)


def test_pipeline_degree_candidates() -> None:
    # 24 devices, 32 layers: divisors 1, 2, 3, 4, 6, 8, 12, 24; powers of two 1, 2, 4, 8
    assert pipeline_degree_candidates(24, 32) == [1, 2, 4, 8]
    assert pipeline_degree_candidates(24, 32, powers_of_two=False) == [1, 2, 3, 4, 6, 8, 12, 24]
    assert pipeline_degree_candidates(64, 32, max_degree=16) == [1, 2, 4, 8, 16]
    assert pipeline_degree_candidates(64, 6) == [1, 2, 4]  # never more stages than layers


def test_sp_degrees_follow_the_heads() -> None:
    gqa = ModelSpec(num_layers=2, hidden_size=64, num_heads=8, num_kv_heads=2, ffn_hidden_size=128, vocab_size=32)
    # 8 query heads: s must divide 8; 2 KV heads: s = 1, 2 divide them and s = 4, 8 are multiples of them
    assert valid_sp_degrees(gqa, 64) == [1, 2, 4, 8]
    assert sp_degree_problem(16, gqa) == "SP degree 16 does not divide num_heads (8)"
    assert sp_degree_problem(3, gqa) == "SP degree 3 is not a power of two"
    odd_kv = ModelSpec(num_layers=2, hidden_size=48, num_heads=12, num_kv_heads=3, ffn_hidden_size=96, vocab_size=32)
    assert valid_sp_degrees(odd_kv, 8) == [1]  # 2 and 4 divide 12 heads but not 3 KV heads, nor the reverse
