"""Preset cost profiles: every coefficient derived from `ClusterSpec` + `ModelSpec` and the named assumptions below.

A preset is the planner's starting point before `helix profile` measures the real devices or step feedback
calibrates it. Each efficiency assumption is a module-level constant with its source, so a reader can see
(and a test can pin) exactly what the numbers mean. Nothing else in the cost model holds a hardware constant.
"""

from __future__ import annotations

from proto import ClusterSpec, CostProfile, ModelSpec

GIB = 2**30

# --- compute efficiency -------------------------------------------------------------------------------
MATMUL_MFU = 0.5
"""Fraction of dense bf16 peak reached by the projection/MLP GEMMs of a transformer layer.

Megatron-LM reports 45-55% model FLOPs utilisation for GPT training on A100 (Narayanan et al. 2021; Korthikanti
et al. 2022 report 54-56% hardware utilisation at scale), and the same range holds for H100 in bf16.
"""

ATTENTION_EFFICIENCY = 0.45
"""Fraction of peak reached by causal flash attention (forward).

FlashAttention-2 (Dao 2023) reports 50-73% of A100 peak for the forward pass at head dim 128 on long sequences
and less for causal masks and shorter rows; 0.4-0.5 is the usual planning figure for mixed real workloads.
"""

LINEAR_BACKWARD_TO_FORWARD = 2.0
"""Backward / forward time of the GEMMs: two GEMMs (input and weight gradients) per forward GEMM (Kaplan et al.
2020's 6ND = 2ND forward + 4ND backward); also applied to the per-call overhead and the LM head + loss."""

ATTENTION_BACKWARD_TO_FORWARD = 2.5
"""Backward / forward time of causal flash attention: the backward recomputes QK^T and runs dV, dP, dQ, dK — five
matmuls against the forward's two — so it does 2.5x the forward's FLOPs (Dao 2023, FlashAttention-2 §4, which
counts backward FLOPs as 2.5x forward), at a similar or lower fraction of peak."""

KERNELS_PER_LAYER = 12
"""Kernel launches per layer forward (2 norms, fused QKV, RoPE, attention, out-proj, 2 residual adds, gate/up,
activation, down-proj, plus a few small ones) as in a Llama block without CUDA graphs."""

KERNEL_LAUNCH_S = 5e-6
"""Launch + tail cost of one small kernel on A100/H100 (~3-7 us measured with the PyTorch profiler)."""

LOSS_OVERHEAD_FRACTION = 0.05
"""Softmax cross-entropy on top of the LM-head GEMM: a few memory-bound passes over the logits, a few percent of
the head GEMM time for vocabularies of 32K-128K."""

# --- communication -----------------------------------------------------------------------------------
ALLTOALL_BW_FRACTION = 1.0
"""All-to-all bytes/s as a fraction of the cluster's per-device bandwidth. `ClusterSpec` bandwidths are already
effective collective numbers (FlexSP measured ~97-120 GB/s NVLink and ~5-10 GB/s IB for all-to-all), so 1.0."""

P2P_BW_FRACTION = 1.0
"""Pipeline send/recv bytes/s as a fraction of the per-device bandwidth (one stream per device pair)."""

INTRA_ALLREDUCE_TO_ALLTOALL = 2.3
"""Intra-node all-reduce bus bandwidth / intra-node all-to-all bandwidth, used when the cluster does not give
`intra_node_allreduce_bandwidth`. On the same DGX A100 (NVLink3 through NVSwitch), nccl-tests reach ~230 GB/s
all_reduce bus bandwidth while FlexSP measured ~100 GB/s for all-to-all (its Fig./§6 numbers): ring reductions
stream large contiguous messages over all NVLinks, all-to-all sends many small ones. On the A800 preset
(67 GB/s all-to-all) this gives ~154 GB/s, i.e. 2/3 of the A100's 230 GB/s as its NVLink is 400 vs 600 GB/s."""

INTER_ALLREDUCE_BW_FRACTION = 1.0
"""Inter-node reduction bandwidth as a fraction of the per-device network bandwidth: the hierarchical phase
across nodes moves each device's 1/k shard on its own NIC share, which streams at the rate all-to-all sees."""

# --- memory ------------------------------------------------------------------------------------------
MEMORY_RESERVE_BYTES = 2.5 * GIB
"""Per-device memory training cannot use, out of the part's capacity (`ClusterSpec.device_memory_bytes`): CUDA
context (~0.5-1 GiB), NCCL buffers (~0.5-1 GiB) and allocator fragmentation (~1 GiB) as seen in
Megatron/DeepSpeed runs on 40-80 GB parts. The only place the reserve is taken: the cluster presets give the
capacity itself."""

MEMORY_RESERVE_MAX_FRACTION = 0.1
"""Cap on the reserve as a fraction of device memory, so small (CPU or test) devices keep most of theirs."""

SOFTMAX_STATS_BYTES = 4
"""Flash attention saves one fp32 log-sum-exp per query head per token for backward."""

NORM_STATS_BYTES = 4
"""RMSNorm saves one fp32 reciprocal RMS per token for backward."""

LOSS_MIN_ELEMENT_BYTES = 4
"""The loss runs in at least fp32: a 16-bit model's logits are upcast before the cross-entropy (Megatron-LM and
torchtitan do, and the executor will under mixed precision), so the saved log-softmax is fp32; a 32- or 64-bit
model (the CPU runs) computes it in its own dtype. Bytes per logit = max(this, bytes_per_element)."""

ATTENTION_SAVES_PREFIX_KV = True
"""The presets describe the executor's fused CUDA attention (flash-attn varlen, or torch's varlen kernel): for a
chunk that attends to earlier slices it builds one [prefix; own] K/V tensor per layer and the kernel saves it for
backward (`executor.attention._varlen_inputs`). Its exact CPU path keeps the prefix pieces instead."""


def logit_bytes(model: ModelSpec) -> int:
    """Bytes per saved logit of the loss: fp32 for a 16-bit model, the model's dtype when it is wider."""
    return max(LOSS_MIN_ELEMENT_BYTES, model.bytes_per_element)


def ulysses_extra_bytes_per_token_layer(model: ModelSpec) -> float:
    """With SP degree > 1, flash attention saves its head-sharded output (q_dim = heads x head_dim elements per
    token of the device's share) while the out-projection saves the all-to-all's sequence-sharded copy of it; at
    s = 1 both are one tensor, counted once in `activation_bytes_per_token_layer`."""
    return float(model.q_dim * model.bytes_per_element)


def activation_bytes_per_token_layer(model: ModelSpec) -> float:
    """Bytes saved for backward per token by one Llama/GPT block with flash attention and no recompute.

    With h = hidden, q = q_dim (heads x head_dim), kv = kv_dim, f = ffn_hidden, e = bytes_per_element,
    a = num_heads:
      attention half: norm input (h) + norm output = QKV-GEMM input (h) + q (q) + k (kv) + v (kv)
                      + attention output = out-proj input (q) + softmax stats (a fp32) + norm rstd (fp32)
      MLP half:       norm input (h) + norm output = MLP input (h) + rstd (fp32)
                      gated (SwiGLU, fused activation): gate (f) + up (f) + act product = down-proj input (f)
                      non-gated (GELU): fc1 output = GELU input (f) + GELU output = fc2 input (f)
    bytes = e·(4h + 2q + 2kv + (3f | 2f)) + 4·a + 2·4, i.e. e·(6h + 2kv + ...) when q = h (most models; not
    e.g. Qwen3-4B, whose 32 x 128 query width exceeds its 2560 hidden).
    No dropout masks (Llama trains without dropout) and no s×s score matrix (flash attention).
    Sanity check (tests): a GPT block (MHA, f = 4h, GELU, e = 2) gives 32·h bytes (+ a few fp32 stats) against
    Korthikanti et al. 2022's 34·h bytes per token per layer (16-bit, no recompute) once flash attention removes
    their 5·a·s score/softmax/dropout term; the 2·h difference is their two 1-byte dropout masks.
    """
    h, q, kv, f = model.hidden_size, model.q_dim, model.kv_dim, model.ffn_hidden_size
    mlp_inner = (3 if model.gated_mlp else 2) * f
    e = model.bytes_per_element
    return e * (4 * h + 2 * q + 2 * kv + mlp_inner) + SOFTMAX_STATS_BYTES * model.num_heads + 2 * NORM_STATS_BYTES


def deferred_grad_bytes_per_token_layer(model: ModelSpec) -> float:
    """The output gradients of one layer's GEMMs, which a backward op that defers its weight gradients keeps until
    it computes them: q (heads x head_dim) + k, v (kv each) + out-projection (h) + MLP up (f, and gate f when
    gated) + down (h) elements per token."""
    q = model.num_heads * model.head_dim
    mlp = (2 if model.gated_mlp else 1) * model.ffn_hidden_size
    return float(model.bytes_per_element * (q + 2 * model.kv_dim + 2 * model.hidden_size + mlp))


def deferred_input_bytes_per_token_layer(model: ModelSpec) -> float:
    """The inputs of one layer's GEMMs, which a chunk whose weight gradients wait for a W op keeps after its
    backward: the QKV input (h), the out-projection input (heads x head_dim), the MLP input (h) and the
    down-projection input (f) elements per token."""
    q = model.num_heads * model.head_dim
    return float(model.bytes_per_element * (2 * model.hidden_size + q + model.ffn_hidden_size))


def checkpoint_bytes_per_token_layer(model: ModelSpec) -> float:
    """A recomputed layer keeps only its input (the residual stream): h elements per token."""
    return float(model.hidden_size * model.bytes_per_element)


def mlp_recompute_freed_bytes_per_token_layer(model: ModelSpec) -> float:
    """What a layer that recomputes only its MLP half drops (see `activation_bytes_per_token_layer`): the MLP
    norm's output (h) and rstd and the MLP's inner tensors (3f gated, 2f not); it keeps the norm's input (h), the
    checkpoint it reruns from."""
    mlp_inner = (3 if model.gated_mlp else 2) * model.ffn_hidden_size
    return float(model.bytes_per_element * (model.hidden_size + mlp_inner) + NORM_STATS_BYTES)


def mlp_linear_share(model: ModelSpec) -> float:
    """The MLP's share of a layer's GEMM FLOPs: (3 gated | 2)·h·f over all matmul parameters (q, k, v, o and MLP)."""
    mlp = (3 if model.gated_mlp else 2) * model.hidden_size * model.ffn_hidden_size
    attention = 2 * model.hidden_size * (model.q_dim + model.kv_dim)
    return mlp / (mlp + attention)


def kv_bytes_per_token_layer(model: ModelSpec) -> float:
    """K and V of one token in one layer: 2·kv_dim elements."""
    return float(2 * model.kv_dim * model.bytes_per_element)


def head_activation_bytes_per_token(model: ModelSpec) -> float:
    """Final norm input + output (2h elements, + fp32 rstd) and the logits kept by the loss (`logit_bytes`)."""
    return 2.0 * model.hidden_size * model.bytes_per_element + NORM_STATS_BYTES + logit_bytes(model) * model.vocab_size


def intra_allreduce_bandwidth(cluster: ClusterSpec) -> float:
    """The cluster's intra-node all-reduce bus bandwidth, or the all-to-all figure x INTRA_ALLREDUCE_TO_ALLTOALL."""
    if cluster.intra_node_allreduce_bandwidth is not None:
        return cluster.intra_node_allreduce_bandwidth
    return cluster.intra_node_bandwidth * INTRA_ALLREDUCE_TO_ALLTOALL


def memory_reserve_bytes(cluster: ClusterSpec) -> float:
    return min(MEMORY_RESERVE_BYTES, MEMORY_RESERVE_MAX_FRACTION * cluster.device_memory_bytes)


def preset_profile(cluster: ClusterSpec, model: ModelSpec) -> CostProfile:
    """The documented-assumption profile for this (cluster, model) pair.

    Compute: forward linear FLOPs per token per layer = 2·(matmul params); causal attention of a segment of
    length L after context C has ((C+L)^2 − C^2)/2 query-key pairs at 4·q_dim FLOPs each (QK^T and PV over every
    query head's head_dim, 2 FLOPs per MAC; q_dim = heads x head_dim, the hidden size in most models), so
    a2 = 2·q_dim / (peak·ATTENTION_EFFICIENCY) and t_attn = a2·((C+L)^2 − C^2).
    """
    h = model.hidden_size
    matmul_params = model.params_per_layer - 2 * h  # the two norm weight vectors do no GEMM
    peak = cluster.peak_flops
    linear_s = 2.0 * matmul_params / (peak * MATMUL_MFU)
    attn_s = 2.0 * model.q_dim / (peak * ATTENTION_EFFICIENCY)
    head_s = 2.0 * h * model.vocab_size / (peak * MATMUL_MFU) * (1.0 + LOSS_OVERHEAD_FRACTION)
    intra, inter = cluster.intra_node_bandwidth, cluster.inter_node_bandwidth
    e = model.bytes_per_element
    return CostProfile(
        name=f"preset:{cluster.name}/{model.name}",
        source=(
            f"planner_service.cost_model.profile_presets: MFU {MATMUL_MFU}, attention efficiency "
            f"{ATTENTION_EFFICIENCY}, backward/forward {LINEAR_BACKWARD_TO_FORWARD} (GEMMs) and "
            f"{ATTENTION_BACKWARD_TO_FORWARD} (attention), collectives at cluster bandwidths "
            f"(intra-node all-reduce bus bandwidth {intra_allreduce_bandwidth(cluster) / 1e9:.0f} GB/s)"
        ),
        attn_s_per_token2=attn_s,
        linear_s_per_token=linear_s,
        layer_overhead_s=KERNELS_PER_LAYER * KERNEL_LAUNCH_S,
        linear_backward_to_forward=LINEAR_BACKWARD_TO_FORWARD,
        attention_backward_to_forward=ATTENTION_BACKWARD_TO_FORWARD,
        head_s_per_token=head_s,
        alltoall_bw_intra=intra * ALLTOALL_BW_FRACTION,
        alltoall_bw_inter=inter * ALLTOALL_BW_FRACTION,
        alltoall_latency_intra_s=cluster.intra_node_latency_s,
        alltoall_latency_inter_s=cluster.inter_node_latency_s,
        p2p_bw_intra=intra * P2P_BW_FRACTION,
        p2p_bw_inter=inter * P2P_BW_FRACTION,
        p2p_latency_s=cluster.intra_node_latency_s,
        allreduce_bw_intra=intra_allreduce_bandwidth(cluster),
        allreduce_bw_inter=inter * INTER_ALLREDUCE_BW_FRACTION,
        activation_bytes_per_token_layer=activation_bytes_per_token_layer(model),
        checkpoint_bytes_per_token_layer=checkpoint_bytes_per_token_layer(model),
        kv_bytes_per_token_layer=kv_bytes_per_token_layer(model),
        mlp_recompute_freed_bytes_per_token_layer=mlp_recompute_freed_bytes_per_token_layer(model),
        mlp_linear_share=mlp_linear_share(model),
        ulysses_extra_bytes_per_token_layer=ulysses_extra_bytes_per_token_layer(model),
        deferred_grad_bytes_per_token_layer=deferred_grad_bytes_per_token_layer(model),
        deferred_input_bytes_per_token_layer=deferred_input_bytes_per_token_layer(model),
        attention_saves_prefix_kv=ATTENTION_SAVES_PREFIX_KV,
        head_activation_bytes_per_token=head_activation_bytes_per_token(model),
        bytes_per_param_state=float(e + e + 12),  # working params + grads + fp32 master, Adam m and v
        param_bytes=float(e),
        grad_bytes=float(e),
        memory_reserve_bytes=memory_reserve_bytes(cluster),
    )


def profile_for(cluster: ClusterSpec, model: ModelSpec, profile: CostProfile | None = None) -> CostProfile:
    """The given (measured or calibrated) profile, or the preset when there is none."""
    return profile if profile is not None else preset_profile(cluster, model)
