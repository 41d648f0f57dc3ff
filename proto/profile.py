"""Cost-model coefficients for one (cluster, model) pair.

A profile comes from a documented preset (derived from hardware specs and stated efficiency
assumptions), from `helix profile` measurements on real devices, or from online calibration.
Every number the cost model uses is a field here or in `ClusterSpec`/`ModelSpec`.
"""

from __future__ import annotations

import itertools
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from proto.cluster import MAX_BANDWIDTH, MAX_LATENCY_S, MAX_NAME_CHARS, MAX_SOURCE_CHARS, MIN_BANDWIDTH
from proto.wire_types import AS_EXACT_INT, AS_FINITE_NUMBER

# Bounds of the coefficients (documented in the README): they refuse absurd values (1e308, 5e-324) and keep
# every cost-model sum finite, and they hold every profile derived from specs within the cluster and model
# bounds (e.g. a 2^20-wide model on a 1 GFLOP/s device: ~3e4 s per token per layer). Presets sit far inside.
MAX_ATTN_S_PER_TOKEN2 = 1.0
MAX_S_PER_TOKEN = 1e6
MAX_LAYER_OVERHEAD_S = 10.0
MIN_BYTES_PER_TOKEN_LAYER = 1.0
MAX_BYTES_PER_TOKEN_LAYER = 1e9
MAX_BYTES_PER_TOKEN = 1e10
MAX_MEMORY_RESERVE = 2**50
MAX_BUCKET_BYTES = 2**40
MIN_SP_COMPUTE_SCALE = 0.1
MAX_SP_COMPUTE_SCALE = 10.0
MAX_SP_DEGREE = 2**20
MAX_DEVICES_PER_COMPUTE_UNIT = 64


class SpDegreeCost(BaseModel):
    """How a layer's compute on a lane of one SP degree departs from the formula's even split over s devices.

    The formula assumes Ulysses divides a layer's work exactly by s. Measured lanes differ by degree: smaller
    per-device GEMMs run at a lower rate, fewer heads per device change the attention kernel's efficiency, and
    ranks that meet at every all-to-all wait for the slowest (CPU ranks sharing cores most of all). `helix profile`
    times the executor's Ulysses layer at each degree and fits, per degree:
        forward  = compute_scale x formula_forward(s)  + call_overhead_s
        backward = compute_scale x formula_backward(s) + linear_backward_to_forward x call_overhead_s
    (the all-to-alls are priced apart, by the collective coefficients).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sp_degree: int = Field(ge=1, le=MAX_SP_DEGREE, description="The lane's SP degree s.")
    compute_scale: Annotated[
        float, Field(ge=MIN_SP_COMPUTE_SCALE, le=MAX_SP_COMPUTE_SCALE, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(default=1.0, description="Measured / formula compute time of a layer on a lane of this degree.")
    call_overhead_s: Annotated[float, Field(ge=0, le=MAX_LAYER_OVERHEAD_S, allow_inf_nan=False), AS_FINITE_NUMBER] = (
        Field(default=0.0, description="Extra seconds per layer forward call at this degree.")
    )


class CostProfile(BaseModel):
    """Per-layer compute coefficients, collective bandwidths and memory coefficients.

    Forward time of one transformer layer for a chunk on a lane of SP degree s:
        t = (attn_s_per_token2 * sum_seg((C + len)^2 - C^2) + linear_s_per_token * sum_seg(len)) / s
            + layer_overhead_s
    where C is the context (earlier tokens of the same sequence) of each segment.
    Backward splits the same way: attention_backward_to_forward * (attention term) + linear_backward_to_forward *
    (linear term + layer_overhead_s), since flash attention's backward costs more relative to its forward
    (~2.5x) than a GEMM's (2x).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        default="custom", max_length=MAX_NAME_CHARS, description="Label, e.g. 'preset:a100-40g-8x8/gpt-7b'."
    )
    source: str = Field(default="", max_length=MAX_SOURCE_CHARS, description="How the numbers were obtained.")
    # compute (per layer, forward, whole chunk on one device; divided by s for a lane)
    attn_s_per_token2: Annotated[
        float, Field(ge=0, le=MAX_ATTN_S_PER_TOKEN2, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(description="a2: seconds per unit of sum((C+len)^2 - C^2), per layer.")
    linear_s_per_token: Annotated[float, Field(ge=0, le=MAX_S_PER_TOKEN, allow_inf_nan=False), AS_FINITE_NUMBER] = (
        Field(description="a1: seconds per token per layer (projections, MLP).")
    )
    layer_overhead_s: Annotated[float, Field(ge=0, le=MAX_LAYER_OVERHEAD_S, allow_inf_nan=False), AS_FINITE_NUMBER] = (
        Field(default=0.0, description="b: fixed seconds per layer call.")
    )
    linear_backward_to_forward: Annotated[float, Field(ge=0.5, le=5.0, allow_inf_nan=False), AS_FINITE_NUMBER] = Field(
        default=2.0,
        description="k_lin: backward / forward time of the GEMMs (projections, MLP, LM head), of the per-call "
        "overhead and of the loss.",
    )
    attention_backward_to_forward: Annotated[float, Field(ge=0.5, le=5.0, allow_inf_nan=False), AS_FINITE_NUMBER] = (
        Field(default=2.5, description="k_attn: backward / forward time of causal attention.")
    )
    weight_grad_share: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False), AS_FINITE_NUMBER] = Field(
        default=0.5,
        description="Share of the GEMM backward (linear_backward_to_forward x the linear term) that computes the "
        "weight gradients: a backward op that defers them (Plan.defer_weight_grads) sends its input gradient that "
        "much earlier. 0.5 for GEMMs: the input and the weight gradient each repeat the forward's FLOPs.",
    )
    mlp_linear_share: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False), AS_FINITE_NUMBER] = Field(
        default=0.0,
        description="Share of a layer's GEMM term (linear_s_per_token) spent in its MLP: what a layer that recomputes "
        "only its MLP (PlanOptions.recompute_scope 'mlp') reruns: the MLP's share of the layer's GEMM FLOPs (the "
        "preset computes it from the model's widths).",
    )
    deferred_layer_overhead_s: Annotated[
        float, Field(ge=0, le=MAX_LAYER_OVERHEAD_S, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(
        default=0.0,
        description="Extra seconds per kept layer of a backward op that defers its weight gradients (the "
        "executor's bookkeeping: its own GEMM path, the queue, one more autograd call), charged before the "
        "send. 0 in presets (a GPU layer's GEMMs dwarf it); measured by `helix profile`.",
    )
    head_s_per_token: Annotated[float, Field(ge=0, le=MAX_S_PER_TOKEN, allow_inf_nan=False), AS_FINITE_NUMBER] = Field(
        default=0.0, description="LM head + loss forward seconds per token."
    )
    op_overhead_s: Annotated[float, Field(ge=0, le=MAX_LAYER_OVERHEAD_S, allow_inf_nan=False), AS_FINITE_NUMBER] = (
        Field(
            default=0.0,
            description="Fixed seconds of one pipeline op (a chunk's forward or backward on a stage) beyond its "
            "layers and LM head: the stage runtime's own work per micro-batch (embedding, posting sends and "
            "receives, entering autograd). Measured by `helix profile` (two executor steps that run the same work "
            "as one chunk and as many) and refined by online calibration from steps whose plans differ in chunk "
            "counts; 0 in presets.",
        )
    )
    devices_per_compute_unit: Annotated[int, Field(ge=1, le=MAX_DEVICES_PER_COMPUTE_UNIT), AS_EXACT_INT] = Field(
        default=1,
        description="Devices that time-share one compute unit in the profiled run: k contiguous ranks "
        "[u*k, (u+1)*k) per unit (CPU ranks pinned k to a core by `helix profile`); 1 on GPUs and in presets. The "
        "timings were taken with all k busy, so they include the sharing; while only m < k of a unit's devices "
        "have work left, each runs k/m times faster, which the simulator applies to the devices' finishing times.",
    )
    sp_degree_costs: tuple[SpDegreeCost, ...] = Field(
        default=(),
        max_length=64,
        description="Measured departures from the even split per SP degree (`helix profile`), in increasing "
        "degree; empty: the formula as it is. A degree between two measured ones is interpolated in log2(s), one "
        "outside them takes the nearest measured one.",
    )

    @field_validator("sp_degree_costs")
    @classmethod
    def _increasing_degrees(cls, costs: tuple[SpDegreeCost, ...]) -> tuple[SpDegreeCost, ...]:
        degrees = [c.sp_degree for c in costs]
        if any(b <= a for a, b in itertools.pairwise(degrees)):
            raise ValueError(f"sp_degree values must be strictly increasing, got {degrees}")
        return costs

    # collectives (effective per-device bytes/s and per-call latency)
    alltoall_bw_intra: Annotated[
        float, Field(ge=MIN_BANDWIDTH, le=MAX_BANDWIDTH, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(description="All-to-all bytes/s per device inside one node.")
    alltoall_bw_inter: Annotated[
        float, Field(ge=MIN_BANDWIDTH, le=MAX_BANDWIDTH, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(description="All-to-all bytes/s per device when the group spans nodes.")
    alltoall_latency_intra_s: Annotated[float, Field(ge=0, le=MAX_LATENCY_S, allow_inf_nan=False), AS_FINITE_NUMBER] = (
        Field(default=1e-5, description="Per all-to-all latency in a node.")
    )
    alltoall_latency_inter_s: Annotated[float, Field(ge=0, le=MAX_LATENCY_S, allow_inf_nan=False), AS_FINITE_NUMBER] = (
        Field(default=3e-5, description="Per all-to-all latency across nodes.")
    )
    p2p_bw_intra: Annotated[float, Field(ge=MIN_BANDWIDTH, le=MAX_BANDWIDTH, allow_inf_nan=False), AS_FINITE_NUMBER] = (
        Field(description="Pipeline send/recv bytes/s inside a node.")
    )
    p2p_bw_inter: Annotated[float, Field(ge=MIN_BANDWIDTH, le=MAX_BANDWIDTH, allow_inf_nan=False), AS_FINITE_NUMBER] = (
        Field(description="Pipeline send/recv bytes/s across nodes.")
    )
    p2p_latency_s: Annotated[float, Field(ge=0, le=MAX_LATENCY_S, allow_inf_nan=False), AS_FINITE_NUMBER] = Field(
        default=1e-5, description="Per send/recv latency."
    )
    allreduce_bw_intra: Annotated[
        float, Field(ge=MIN_BANDWIDTH, le=MAX_BANDWIDTH, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(description="Ring all-reduce bus bytes/s inside a node.")
    allreduce_bw_inter: Annotated[
        float, Field(ge=MIN_BANDWIDTH, le=MAX_BANDWIDTH, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(description="Ring all-reduce bus bytes/s across nodes.")
    allreduce_latency_intra_s: (
        Annotated[float, Field(ge=0, le=MAX_LATENCY_S, allow_inf_nan=False), AS_FINITE_NUMBER] | None
    ) = Field(
        default=None,
        description="Per ring step of a data-parallel reduction phase inside a node (measured by `helix profile`); "
        "None: the cluster's intra_node_latency_s.",
    )
    allreduce_latency_inter_s: (
        Annotated[float, Field(ge=0, le=MAX_LATENCY_S, allow_inf_nan=False), AS_FINITE_NUMBER] | None
    ) = Field(
        default=None,
        description="Per step of a reduction phase across nodes; None: the cluster's inter_node_latency_s.",
    )
    grad_bucket_bytes: Annotated[float, Field(ge=1, le=MAX_BUCKET_BYTES, allow_inf_nan=False), AS_FINITE_NUMBER] = (
        Field(
            default=25 * 2**20,
            description="Size of the gradient buckets data-parallel reductions are issued in while backward runs "
            "(default 25 MiB, PyTorch DDP's bucket_cap_mb): the last bucket is what stays exposed after backward.",
        )
    )
    # memory
    activation_bytes_per_token_layer: Annotated[
        float, Field(ge=MIN_BYTES_PER_TOKEN_LAYER, le=MAX_BYTES_PER_TOKEN_LAYER, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(description="Bytes kept per token per layer for backward without recompute (whole layer, s=1).")
    checkpoint_bytes_per_token_layer: Annotated[
        float, Field(ge=MIN_BYTES_PER_TOKEN_LAYER, le=MAX_BYTES_PER_TOKEN_LAYER, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(description="Bytes kept per token per recomputed layer (its input), s=1.")
    mlp_recompute_freed_bytes_per_token_layer: Annotated[
        float, Field(ge=0, le=MAX_BYTES_PER_TOKEN_LAYER, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(
        default=0.0,
        description="Bytes per token per layer (s=1) that recomputing only a layer's MLP frees from "
        "activation_bytes_per_token_layer: the MLP's saved tensors but its input. 0: the profile does not price "
        "MLP-only recompute, and planning with recompute_scope 'mlp' is refused.",
    )
    kv_bytes_per_token_layer: Annotated[
        float, Field(ge=MIN_BYTES_PER_TOKEN_LAYER, le=MAX_BYTES_PER_TOKEN_LAYER, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(description="K and V bytes per token per layer, s=1.")
    ulysses_extra_bytes_per_token_layer: Annotated[
        float, Field(ge=0, le=MAX_BYTES_PER_TOKEN_LAYER, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(
        default=0.0,
        description="Bytes per token per layer kept on top of activation_bytes_per_token_layer when the SP degree "
        "is above 1 and the layer does not recompute: a fused attention kernel saves its head-sharded output "
        "while the out-projection saves the sequence-sharded copy (at s=1 they are one tensor). Replicated K/V "
        "heads (num_kv_heads < s) are priced from kv_bytes_per_token_layer, not here.",
    )
    attention_saves_prefix_kv: bool = Field(
        default=True,
        strict=True,
        description="True when the attention kernel saves, for backward, the concatenation [earlier slices' K/V; "
        "the chunk's own K/V] of a chunk whose segments attend to a prefix (fused flash / varlen kernels on "
        "CUDA); False when it keeps the prefix pieces by reference (the executor's exact SDPA path).",
    )
    deferred_grad_bytes_per_token_layer: Annotated[
        float, Field(ge=0, le=MAX_BYTES_PER_TOKEN_LAYER, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(
        default=0.0,
        description="Bytes per token per layer (s=1 share of tokens) a backward op that defers weight gradients "
        "holds from its layer's backward until the weight gradients are done: the output gradient of each GEMM.",
    )
    deferred_input_bytes_per_token_layer: Annotated[
        float, Field(ge=0, le=MAX_BYTES_PER_TOKEN_LAYER, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(
        default=0.0,
        description="Bytes per token per layer (s=1 share of tokens) that a chunk keeps from its backward op until "
        "its W op (`Op` 'W') besides the output gradients: the inputs of the layer's GEMMs.",
    )
    head_activation_bytes_per_token: Annotated[
        float, Field(ge=0, le=MAX_BYTES_PER_TOKEN, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(default=0.0, description="Bytes kept per token by the LM head/loss on the last stage.")
    bytes_per_param_state: Annotated[float, Field(ge=1, le=64, allow_inf_nan=False), AS_FINITE_NUMBER] = Field(
        default=16.0, description="Param+grad+optimizer bytes per parameter (bf16 + fp32 Adam: 2+2+12)."
    )
    param_bytes: Annotated[float, Field(ge=0.125, le=8, allow_inf_nan=False), AS_FINITE_NUMBER] = Field(
        default=2.0, description="Bytes per parameter of the working copy."
    )
    grad_bytes: Annotated[float, Field(ge=0.125, le=8, allow_inf_nan=False), AS_FINITE_NUMBER] = Field(
        default=2.0, description="Bytes per gradient element."
    )
    memory_reserve_bytes: Annotated[
        float, Field(ge=0, le=MAX_MEMORY_RESERVE, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(
        default=0.0,
        description="Per-device memory that training cannot use: CUDA context, collective buffers, allocator "
        "fragmentation. Counted once: subtracted from ClusterSpec.device_memory_bytes (the part's capacity) to "
        "get the memory for model states + activations, and included in Predicted.peak_memory_bytes.",
    )
