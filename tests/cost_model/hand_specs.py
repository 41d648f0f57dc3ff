"""Hand-made clusters, profiles and plans for cost-model and simulator tests whose numbers are worked out by hand.

Every test states the coefficients its arithmetic uses (as overrides); what it leaves at these defaults plays no
part in it: latencies 0, bandwidths 1 GB/s, one byte per token for every memory coefficient.
"""

from __future__ import annotations

from proto import Batch, ClusterSpec, CostProfile, Lane, ModelSpec, Op, PipelineSpec, Plan, PlanOptions, Predicted
from proto.fingerprint import fingerprint


def hand_cluster(num_nodes: int, devices_per_node: int, **overrides: object) -> ClusterSpec:
    fields: dict[str, object] = {
        "name": f"t-{num_nodes}x{devices_per_node}",
        "num_nodes": num_nodes,
        "devices_per_node": devices_per_node,
        "device_memory_bytes": 2**34,
        "peak_flops": 1e12,
        "intra_node_bandwidth": 1e10,
        "inter_node_bandwidth": 1e9,
    }
    fields.update(overrides)
    return ClusterSpec(**fields)  # type: ignore[arg-type]


def hand_profile(**overrides: object) -> CostProfile:
    fields: dict[str, object] = {
        "attn_s_per_token2": 0.0,
        "linear_s_per_token": 1e-6,
        "alltoall_bw_intra": 1e9,
        "alltoall_bw_inter": 1e9,
        "alltoall_latency_intra_s": 0.0,
        "alltoall_latency_inter_s": 0.0,
        "p2p_bw_intra": 1e9,
        "p2p_bw_inter": 1e9,
        "p2p_latency_s": 0.0,
        "allreduce_bw_intra": 1e9,
        "allreduce_bw_inter": 1e9,
        "activation_bytes_per_token_layer": 1.0,
        "checkpoint_bytes_per_token_layer": 1.0,
        "kv_bytes_per_token_layer": 1.0,
    }
    fields.update(overrides)
    return CostProfile(**fields)  # type: ignore[arg-type]


def hand_plan(
    cluster: ClusterSpec,
    model: ModelSpec,
    batch: Batch,
    pipeline: PipelineSpec,
    lanes: list[Lane],
    options: PlanOptions | None = None,
) -> Plan:
    """A plan of `lanes` with no predictions yet (what `simulate` fills in)."""
    return Plan(
        strategy="test",
        cluster_fingerprint=fingerprint(cluster),
        model_fingerprint=fingerprint(model),
        batch_fingerprint=batch.fingerprint,
        options=options or PlanOptions(),
        pipeline=pipeline,
        lanes=lanes,
        predicted=Predicted(iteration_s=0, ideal_s=0),
    )


def ops(text: str) -> list[Op]:
    """ "F0 B0 F1 B1" -> the ops."""
    return [Op(kind=t[0], chunk=int(t[1:])) for t in text.split()]
