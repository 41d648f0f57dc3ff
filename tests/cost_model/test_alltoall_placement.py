"""Ulysses all-to-all over a group that spans nodes: only the bytes for peers outside the node use the network.

Guards against the review's finding that a spanning group paid all (s − 1)/s of its bytes at the per-device
network rate although the NVLink part runs in parallel (overcharge x1.88 for s = 16 on 2 nodes of 8, x1.29 for
s = 32 on 4 nodes).
"""

from __future__ import annotations

import pytest

from planner_service.cost_model import CostModel, comm_model
from proto import ModelSpec
from tests.cost_model.hand_specs import hand_cluster, hand_profile

# MHA so no K/V head is replicated: every all-to-all moves hidden = 256 elements per token (q, k, v, out: 4 x 256)
MODEL = ModelSpec(
    name="mha", num_layers=2, hidden_size=256, num_heads=32, num_kv_heads=32, ffn_hidden_size=512, vocab_size=64
)
CLUSTER = hand_cluster(4, 8, intra_node_bandwidth=1e11)
PROFILE = hand_profile(alltoall_bw_intra=1e11, alltoall_bw_inter=1e9)  # latencies 0: times are bytes / bandwidth
COST = CostModel.from_specs(CLUSTER, MODEL, PROFILE)
MIB = 2**20


def test_sixteen_on_two_nodes_pays_the_network_for_half_of_its_shard() -> None:
    """s = 16, 1024 tokens per device: a device's shard is 1024 x 1024 elements x 2 bytes = 2 MiB over the 4
    all-to-alls of a layer. It keeps 1/16 and sends 1/16 to each of 15 peers: 7 in its node (7/16 x 2 MiB over
    NVLink at 1e11 B/s: 9.2 us) and 8 outside (8/16 x 2 MiB = 1 MiB over the network at 1e9 B/s: 1.049 ms).
    The two run in parallel, so the layer's all-to-alls take 1 MiB / 1e9 s; the old charge was 15/16 x 2 MiB / 1e9."""
    new = COST.alltoall_layer_s(16 * 1024, 16, spans_nodes=True)
    assert new == pytest.approx(1 * MIB / 1e9)
    old = 15 / 16 * 2 * MIB / 1e9
    assert old / new == pytest.approx(1.875)
    links = COST.alltoall_layer_links(16 * 1024, 16, spans_nodes=True)
    assert links.intra_s == pytest.approx(7 / 16 * 2 * MIB / 1e11)
    assert links.inter_s == pytest.approx(1 * MIB / 1e9)


def test_thirty_two_on_four_nodes() -> None:
    """s = 32, 1024 tokens per device (2 MiB shard): 7 peers in the node, 24 outside: 24/32 x 2 MiB = 1.5 MiB
    over the network, against the old 31/32 x 2 MiB: the old charge was 31/24 = 1.29x too high."""
    new = COST.alltoall_layer_s(32 * 1024, 32, spans_nodes=True)
    assert new == pytest.approx(1.5 * MIB / 1e9)
    assert (31 / 32 * 2 * MIB / 1e9) / new == pytest.approx(31 / 24)


def test_node_local_group_is_all_nvlink_and_latency_follows_the_placement() -> None:
    """s = 8 in one node: 7/8 of the 2 MiB shard over NVLink, no network part. With latencies, a spanning group
    pays the inter-node latency once per all-to-all call (2 per layer, as the executor issues them), a node-local
    one the intra-node latency."""
    links = COST.alltoall_layer_links(8 * 1024, 8, spans_nodes=False)
    assert (links.intra_s, links.inter_s) == (pytest.approx(7 / 8 * 2 * MIB / 1e11), 0.0)
    lat = CostModel.from_specs(
        CLUSTER,
        MODEL,
        PROFILE.model_copy(update={"alltoall_latency_intra_s": 1e-5, "alltoall_latency_inter_s": 1e-4}),
    )
    assert lat.alltoall_layer_s(8 * 1024, 8, spans_nodes=False) == pytest.approx(7 / 8 * 2 * MIB / 1e11 + 2e-5)
    assert lat.alltoall_layer_s(16 * 1024, 16, spans_nodes=True) == pytest.approx(MIB / 1e9 + 2e-4)


def test_devices_per_node_of_a_group() -> None:
    assert comm_model.group_devices_per_node(4, 8, spans_nodes=False) == 4
    assert comm_model.group_devices_per_node(32, 8, spans_nodes=True) == 8
    # an unaligned group (never planned) is priced the old way: every peer outside the node
    assert comm_model.group_devices_per_node(4, 8, spans_nodes=True) == 1
