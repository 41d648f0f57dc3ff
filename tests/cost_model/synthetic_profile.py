"""Synthetic `helix profile` measurements: the timings the cost model itself predicts under a known profile.

Shared by the fit tests (which must get the profile back) and the service tests (which need a profile document).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from planner_service.cost_model import comm_model, compute_model, preset_profile
from planner_service.cost_model.op_overhead_probe import OpProbe
from planner_service.cost_model.profile_document import ProfileDocument
from planner_service.cost_model.profile_fit import fit_profile
from planner_service.cost_model.profile_measurements import (
    CollectiveTiming,
    HeadTiming,
    LaneLayerTiming,
    LayerTiming,
    MemorySample,
    OpProbeTiming,
    ProfileMeasurements,
    StateBytes,
)
from planner_service.presets import resolve_cluster, resolve_model
from proto import ClusterSpec, CostProfile, ModelSpec, SpDegreeCost

CLUSTER = resolve_cluster("cpu-2x4")
MODEL = resolve_model("tiny")
TRUE = preset_profile(CLUSTER, MODEL).model_copy(
    update={
        "attn_s_per_token2": 3.1e-9,
        "linear_s_per_token": 7.3e-6,
        "layer_overhead_s": 4.2e-4,
        "attention_backward_to_forward": 3.4,
        "linear_backward_to_forward": 1.7,
        "head_s_per_token": 2.2e-6,
        "alltoall_bw_intra": 0.8e9,
        "alltoall_latency_intra_s": 9e-5,
        "alltoall_bw_inter": 0.3e9,
        "alltoall_latency_inter_s": 2e-4,
        "p2p_bw_intra": 1.5e9,
        "p2p_bw_inter": 0.6e9,
        "p2p_latency_s": 6e-5,
        "allreduce_bw_intra": 1.1e9,
        "allreduce_bw_inter": 0.4e9,
        "allreduce_latency_intra_s": 3e-4,
        "allreduce_latency_inter_s": 7e-4,
        "op_overhead_s": 3.7e-3,
        "weight_grad_share": 0.62,
        "deferred_layer_overhead_s": 2.5e-4,
        "sp_degree_costs": (
            SpDegreeCost(sp_degree=1, compute_scale=0.9, call_overhead_s=0.0),
            SpDegreeCost(sp_degree=2, compute_scale=1.1, call_overhead_s=2e-4),
            SpDegreeCost(sp_degree=4, compute_scale=1.3, call_overhead_s=5e-4),
            SpDegreeCost(sp_degree=8, compute_scale=1.6, call_overhead_s=1e-3),
        ),
    }
)
LANES = ((1, 1, 1), (2, 2, 1), (4, 4, 1), (8, 4, 2))
"""(SP degree, devices per node, nodes) of the lanes the synthetic profile times."""
FITTED_FIELDS = (
    "attn_s_per_token2",
    "linear_s_per_token",
    "layer_overhead_s",
    "attention_backward_to_forward",
    "linear_backward_to_forward",
    "head_s_per_token",
    "alltoall_bw_intra",
    "alltoall_latency_intra_s",
    "alltoall_bw_inter",
    "alltoall_latency_inter_s",
    "p2p_bw_intra",
    "p2p_bw_inter",
    "p2p_latency_s",
    "allreduce_bw_intra",
    "allreduce_bw_inter",
    "allreduce_latency_intra_s",
    "allreduce_latency_inter_s",
    "op_overhead_s",
    "weight_grad_share",
    "deferred_layer_overhead_s",
    "sp_degree_costs",
)


def synthetic_measurements(true: CostProfile, noise: float = 0.0, seed: int = 0) -> ProfileMeasurements:
    """Timings the cost model predicts under `true`, each times (1 + U(-noise, noise))."""
    rng = np.random.default_rng(seed)

    def jitter(x: float) -> float:
        return float(x * (1.0 + rng.uniform(-noise, noise)))

    formula = true.model_copy(update={"sp_degree_costs": ()})  # the grid's rows: one device, the plain formula
    layer = []
    for tokens in (256, 512, 1024, 2048):
        for seq_len in (tokens, tokens // 4, 64):
            for context in (0, tokens):
                segs = [(context, seq_len)] * (tokens // seq_len)
                pairs = compute_model.attention_pairs(segs)
                f = compute_model.layer_forward_s(formula, attn_pairs=pairs, num_tokens=tokens, sp_degree=1)
                b = compute_model.layer_backward_s(formula, attn_pairs=pairs, num_tokens=tokens, sp_degree=1)
                w = compute_model.layer_weight_grad_s(formula, num_tokens=tokens, sp_degree=1)
                overhead = formula.deferred_layer_overhead_s
                layer.append(
                    LayerTiming(
                        num_tokens=tokens,
                        seq_len=seq_len,
                        context=context,
                        attn_pairs=pairs,
                        forward_s=jitter(f),
                        backward_s=jitter(b),
                        recompute_backward_s=jitter(f + b),
                        deferred_forward_s=jitter(f),
                        deferred_backward_s=jitter(b - w + overhead),
                        weight_grad_s=jitter(w),
                    )
                )
    head = [
        HeadTiming(
            num_tokens=t,
            forward_s=jitter(true.head_s_per_token * t),
            backward_s=jitter(true.linear_backward_to_forward * true.head_s_per_token * t),
        )
        for t in (256, 1024, 4096)
    ]
    collectives = []
    for s, k, nodes in ((2, 2, 1), (4, 4, 1), (8, 4, 2)):
        for tokens in (256, 1024, 4096):
            secs = comm_model.ulysses_layer_comm_s(true, MODEL, num_tokens=tokens, sp_degree=s, per_node=k)
            nbytes = sum(comm_model.ulysses_layer_bytes(MODEL, num_tokens=tokens, sp_degree=s))
            collectives.append(
                CollectiveTiming(
                    kind="ulysses_layer",
                    group_size=s,
                    per_node=k,
                    nodes=nodes,
                    num_tokens=tokens,
                    num_bytes=nbytes,
                    seconds=jitter(secs),
                )
            )
    for nodes, bw in ((1, true.p2p_bw_intra), (2, true.p2p_bw_inter)):
        for nbytes in (1e4, 1e5, 1e6):
            collectives.append(
                CollectiveTiming(
                    kind="p2p", group_size=2, per_node=1 if nodes == 2 else 2, nodes=nodes, num_bytes=nbytes,
                    seconds=jitter(nbytes / bw + true.p2p_latency_s),
                )
            )  # fmt: skip
    for kind, phases in (("all_reduce", 2), ("reduce_scatter", 1)):
        for d, k, nodes in ((2, 2, 1), (4, 4, 1), (8, 4, 2)):
            for nbytes in (1e5, 1e6, 8e6):
                one = comm_model.hierarchical_phase_links(
                    nbytes,
                    per_node=k,
                    nodes=nodes,
                    intra_bw=true.allreduce_bw_intra,
                    inter_bw=true.allreduce_bw_inter,
                    intra_latency_s=true.allreduce_latency_intra_s or CLUSTER.intra_node_latency_s,
                    inter_latency_s=true.allreduce_latency_inter_s or CLUSTER.inter_node_latency_s,
                )
                collectives.append(
                    CollectiveTiming(
                        kind=kind, group_size=d, per_node=k, nodes=nodes, num_bytes=nbytes,
                        seconds=jitter(phases * one.duration_s),
                    )
                )  # fmt: skip
    lanes = []
    for s, k, nodes in LANES:
        for tokens in (1024, 2048, 4096):
            pairs = compute_model.attention_pairs([(0, tokens)])
            comm = comm_model.ulysses_layer_comm_s(true, MODEL, num_tokens=tokens, sp_degree=s, per_node=k)
            f = compute_model.layer_forward_s(true, attn_pairs=pairs, num_tokens=tokens, sp_degree=s) + comm
            b = compute_model.layer_backward_s(true, attn_pairs=pairs, num_tokens=tokens, sp_degree=s) + comm
            lanes.append(
                LaneLayerTiming(
                    sp_degree=s, per_node=k, nodes=nodes, num_tokens=tokens, forward_s=jitter(f), backward_s=jitter(b)
                )
            )
    memory = (
        [MemorySample(kind="layer", num_tokens=t, saved_bytes=1234.0 * t + 512) for t in (256, 1024)]
        + [MemorySample(kind="checkpointed_layer", num_tokens=t, saved_bytes=256.0 * t) for t in (256, 1024)]
        + [MemorySample(kind="mlp_checkpointed_layer", num_tokens=t, saved_bytes=600.0 * t + 512) for t in (256, 1024)]
    )
    return ProfileMeasurements(
        device="synthetic",
        backend="gloo",
        attention_backend="sdpa",
        dtype="float32",
        attention_saves_prefix_kv=False,
        attention_saves_output=False,
        world_size=CLUSTER.num_devices,
        threads_per_rank=1,
        warmup=0,
        repeats=1,
        layer=layer,
        head=head,
        lanes=lanes,
        collectives=collectives,
        memory=memory,
        op_probe=synthetic_op_probe(true, jitter),
        states=StateBytes(param_bytes=4, grad_bytes=4, optimizer_bytes=8),
    )


def synthetic_op_probe(true: CostProfile, jitter: Callable[[float], float]) -> OpProbeTiming:
    """The probe's packed and split steps as the simulator prices them under `true` (op overhead included)."""
    probe = OpProbe.of(CLUSTER, MODEL)
    packed, split = (probe.plan(CLUSTER, true, split=s).predicted.iteration_s for s in (False, True))
    return probe.timing(jitter(packed), jitter(split))


def synthetic_document(cluster: ClusterSpec = CLUSTER, model: ModelSpec = MODEL) -> ProfileDocument:
    """A `helix profile` document for (cluster, model) fitted to `synthetic_measurements(TRUE)`."""
    measurements = synthetic_measurements(TRUE)
    fit = fit_profile(measurements, cluster, model)
    return ProfileDocument.from_fit(
        fit, measurements, cluster=cluster, model=model, software={"torch": "synthetic"}, settings={"grid": "test"}
    )
