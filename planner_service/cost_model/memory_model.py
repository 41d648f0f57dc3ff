"""Per-device memory (DESIGN §6): model states, chunk activations, K/V of slices, transient working memory.

All functions return bytes on *one* device. A lane of SP degree s splits a chunk's tokens over its s devices
(padded to a multiple of s), so activation terms scale with ceil(tokens / s). Model states are a full replica
of the stage on every device of the stage block (Ulysses SP replicates weights), optionally ZeRO-sharded
across the stage's N/P devices.
"""

from __future__ import annotations

from planner_service.cost_model.comm_model import kv_head_replication
from proto import CostProfile, ModelSpec, PipelineSpec, RecomputeScope

ZERO3_GATHERED_LAYERS = 2
"""With ZeRO-3 a device materialises the full parameters of the layer it is running plus the next one
(DeepSpeed prefetches one layer ahead), so two layers of unsharded parameters are resident at a time."""


def stage_params(model: ModelSpec, pipeline: PipelineSpec, stage: int) -> int:
    """Parameters held by one stage: its layers, the embedding on stage 0, final norm + LM head on the last.

    With tied embeddings and P > 1 the last stage keeps its own copy of the embedding matrix for the LM head
    (Megatron's scheme: the two copies' gradients are summed), so it pays for it too.
    """
    num_stages = pipeline.num_stages
    params = pipeline.layers_of(stage) * model.params_per_layer
    if stage == 0:
        params += model.embedding_params
    if stage == num_stages - 1:
        params += model.head_params
        if model.tie_embeddings and num_stages > 1:
            params += model.embedding_params
    return params


def model_state_bytes(
    profile: CostProfile, model: ModelSpec, pipeline: PipelineSpec, *, stage: int, dp_size: int, zero_stage: int
) -> float:
    """Params + grads + optimizer bytes of a stage on one device, with ZeRO sharding over `dp_size` devices.

    bytes_per_param_state = param + grad + optimizer bytes; ZeRO-1 shards the optimizer part, ZeRO-2 also the
    gradients, ZeRO-3 also the parameters (plus `ZERO3_GATHERED_LAYERS` layers gathered at a time).
    """
    n = stage_params(model, pipeline, stage)
    d = max(dp_size, 1)
    p_b, g_b = profile.param_bytes, profile.grad_bytes
    o_b = max(profile.bytes_per_param_state - p_b - g_b, 0.0)
    if zero_stage <= 0:
        per_param = p_b + g_b + o_b
    elif zero_stage == 1:
        per_param = p_b + g_b + o_b / d
    elif zero_stage == 2:
        per_param = p_b + (g_b + o_b) / d
    else:
        per_param = (p_b + g_b + o_b) / d
    total = n * per_param
    if zero_stage >= 3 and d > 1:
        gathered = min(ZERO3_GATHERED_LAYERS, pipeline.layers_of(stage)) * model.params_per_layer
        total += gathered * p_b * (d - 1) / d
    return total


def kept_layer_bytes_per_token(profile: CostProfile, model: ModelSpec, sp_degree: int) -> float:
    """Bytes per token of a device's shard that one layer keeps for backward without recompute, on SP degree s.

    `activation_bytes_per_token_layer` is the s = 1 figure. Under Ulysses (s > 1): K/V heads replicated to reach
    s ranks are saved replicated (each rank holds max(num_kv_heads, s)/s heads of all the chunk's tokens, i.e.
    `kv_head_replication` times the K/V of its own token share), and a fused kernel's attention output is kept
    beside the out-projection's sequence-sharded input (`ulysses_extra_bytes_per_token_layer`).
    """
    per_token = profile.activation_bytes_per_token_layer
    if sp_degree > 1:
        extra_kv = kv_head_replication(model, sp_degree) - 1.0
        per_token += extra_kv * profile.kv_bytes_per_token_layer + profile.ulysses_extra_bytes_per_token_layer
    return per_token


def chunk_activation_bytes(
    profile: CostProfile,
    model: ModelSpec,
    *,
    tokens_per_device: int,
    sp_degree: int,
    num_layers: int,
    recompute_layers: int,
    is_last_stage: bool,
    prefix_kv_rows: int = 0,
    recompute_scope: RecomputeScope = RecomputeScope.LAYER,
) -> float:
    """Bytes a chunk keeps on a device from the end of its forward until its backward finishes.

    Layers that recompute keep only their input (checkpoint) under `recompute_scope` 'layer', and everything
    but their MLP's saved tensors under 'mlp'; the others keep everything backward needs, and, when the
    attention kernel saves the concatenated prefix K/V (`attention_saves_prefix_kv`), the `prefix_kv_rows` rows
    of it (see `ChunkShape.prefix_kv_rows`; an MLP-only recompute keeps its attention's). The last stage also
    keeps the LM head's activations (final norm, logits).
    """
    r = min(max(recompute_layers, 0), num_layers)
    kept = kept_layer_bytes_per_token(profile, model, sp_degree)
    mlp_only = recompute_scope is RecomputeScope.MLP
    per_token = kept * (num_layers - r)
    if mlp_only:
        per_token += max(0.0, kept - profile.mlp_recompute_freed_bytes_per_token_layer) * r
    else:
        per_token += profile.checkpoint_bytes_per_token_layer * r
    if is_last_stage:
        per_token += profile.head_activation_bytes_per_token
    held = tokens_per_device * per_token
    if profile.attention_saves_prefix_kv:
        kv_layers = num_layers if mlp_only else num_layers - r
        held += kv_bytes(profile, model, num_tokens=prefix_kv_rows, sp_degree=sp_degree, num_layers=kv_layers)
    return held


def kv_bytes(profile: CostProfile, model: ModelSpec, *, num_tokens: int, sp_degree: int, num_layers: int) -> float:
    """K/V bytes per device for `num_tokens` tokens over `num_layers` layers.

    K/V live head-sharded after the all-to-all: each device holds all tokens of max(num_kv_heads, s)/s K/V heads
    (K/V heads are replicated when num_kv_heads < s, see `comm_model.kv_head_replication`), i.e.
    tokens/s × kv_bytes × max(1, s / num_kv_heads).
    """
    if num_tokens <= 0 or num_layers <= 0:
        return 0.0
    per_token = profile.kv_bytes_per_token_layer * kv_head_replication(model, sp_degree)
    return num_tokens / sp_degree * per_token * num_layers


PREFIX_KV_WORKING_COPIES = 2
"""Copies of one layer's concatenated prefix K/V live while a chunk with a prefix runs that layer's backward: the
concatenation itself (rebuilt by the exact path and by a recomputed layer; already held for a kept layer on the
fused path, so this is an upper bound by one layer's copy) and its gradient, which every path produces."""


def transient_bytes(
    profile: CostProfile,
    model: ModelSpec,
    *,
    tokens_per_device: int,
    sp_degree: int,
    is_last_stage: bool,
    prefix_kv_rows: int = 0,
) -> float:
    """Working memory while one op of a chunk runs, on top of what is held.

    One layer at a time is live: in forward its activations are being produced; in backward the gradients of
    its saved tensors (and, for a recomputed layer, the rematerialised activations) are about one layer's
    activations, plus `PREFIX_KV_WORKING_COPIES` of the layer's concatenated prefix K/V for a chunk that attends
    to one. On the last stage the logits gradient (in the loss dtype, like the saved logits) is live during
    backward.
    """
    per_token = kept_layer_bytes_per_token(profile, model, sp_degree)
    if is_last_stage:
        per_token += profile.head_activation_bytes_per_token
    prefix = kv_bytes(profile, model, num_tokens=prefix_kv_rows, sp_degree=sp_degree, num_layers=1)
    return tokens_per_device * per_token + PREFIX_KV_WORKING_COPIES * prefix


def usable_memory_bytes(profile: CostProfile, device_memory_bytes: float) -> float:
    """Memory a plan may fill with model states and activations: the device's capacity less the profile's reserve.

    The reserve is counted here and nowhere else on the budget side; the simulator adds it back to its peak so
    that the peak is compared with the capacity (`validate_plan`)."""
    return device_memory_bytes - profile.memory_reserve_bytes
