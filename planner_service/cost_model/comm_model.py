"""Communication times (DESIGN §6): Ulysses all-to-all, pipeline send/recv, data-parallel gradient sync.

Every time is `bytes / bandwidth + latency` with the bandwidth of the link class the transfer uses: intra-node
(NVLink) when all participating ranks share a node, inter-node (InfiniBand) otherwise. Bandwidths are effective
per-device collective numbers from the `CostProfile`; the 10-20x cliff between the two is what makes node-local
SP groups worth planning for.
"""

from __future__ import annotations

import math

from proto import CostProfile, ModelSpec

ALLTOALLS_PER_LAYER = 4
"""Ulysses runs 4 all-to-alls per layer forward (q, k, v to head-sharded; attention output back to
sequence-sharded) and the same 4 with gradients in backward (dO in; dq, dk, dv out)."""


def tokens_per_device(num_tokens: int, sp_degree: int) -> int:
    """Tokens each SP rank holds: the executor pads a chunk to a multiple of s with masked tokens."""
    return math.ceil(num_tokens / sp_degree)


def ulysses_kv_width(model: ModelSpec, sp_degree: int) -> int:
    """Elements per token of K (or V) that enter the all-to-all.

    Under GQA with num_kv_heads >= s each device receives num_kv_heads/s whole K/V heads: width kv_dim. When
    num_kv_heads < s there are not enough K/V heads to give every device its own, so each K/V head is repeated
    s/num_kv_heads times before the all-to-all (as DeepSpeed-Ulysses does): the width sent is s·head_dim.
    """
    return max(model.num_kv_heads, sp_degree) * model.head_dim


def ulysses_layer_bytes(model: ModelSpec, *, num_tokens: int, sp_degree: int) -> tuple[float, ...]:
    """Bytes each device sends in each of the 4 forward all-to-alls of one layer (q, k, v, out).

    A device holds tokens/s tokens of every head and keeps 1/s of them: it sends (s−1)/s of its shard.
    """
    if sp_degree <= 1 or num_tokens <= 0:
        return (0.0, 0.0, 0.0, 0.0)
    keep = (sp_degree - 1) / sp_degree
    base = tokens_per_device(num_tokens, sp_degree) * model.bytes_per_element * keep
    kv = ulysses_kv_width(model, sp_degree)
    return (base * model.hidden_size, base * kv, base * kv, base * model.hidden_size)


def ulysses_layer_comm_s(
    profile: CostProfile, model: ModelSpec, *, num_tokens: int, sp_degree: int, spans_nodes: bool
) -> float:
    """Seconds of the 4 all-to-alls of one layer (forward, or the same again in backward)."""
    if sp_degree <= 1 or num_tokens <= 0:
        return 0.0
    if spans_nodes:
        bw, lat = profile.alltoall_bw_inter, profile.alltoall_latency_inter_s
    else:
        bw, lat = profile.alltoall_bw_intra, profile.alltoall_latency_intra_s
    total = sum(ulysses_layer_bytes(model, num_tokens=num_tokens, sp_degree=sp_degree))
    return total / bw + ALLTOALLS_PER_LAYER * lat


def p2p_s(profile: CostProfile, model: ModelSpec, *, num_tokens: int, sp_degree: int, crosses_nodes: bool) -> float:
    """Seconds to send a chunk's activations (or their gradients) to the neighbouring stage.

    Each SP rank sends its tokens/s × hidden shard to its counterpart; the s transfers run in parallel.
    """
    if num_tokens <= 0:
        return 0.0
    bw = profile.p2p_bw_inter if crosses_nodes else profile.p2p_bw_intra
    return tokens_per_device(num_tokens, sp_degree) * model.hidden_size * model.bytes_per_element / bw + (
        profile.p2p_latency_s
    )


def ring_allreduce_s(num_bytes: float, *, num_devices: int, bus_bw: float, latency_s: float) -> float:
    """Ring all-reduce: 2(d−1)/d × bytes over the bus bandwidth, plus 2(d−1) latency steps."""
    if num_devices <= 1 or num_bytes <= 0:
        return 0.0
    d = num_devices
    return 2 * (d - 1) / d * num_bytes / bus_bw + 2 * (d - 1) * latency_s


def grad_sync_s(
    profile: CostProfile,
    *,
    num_params: int,
    dp_size: int,
    zero_stage: int,
    spans_nodes: bool,
    latency_s: float,
) -> float:
    """Seconds of one stage's data-parallel gradient sync across its `dp_size` devices.

    ZeRO-0: ring all-reduce of the gradients. ZeRO-1/2: reduce-scatter of the gradients then all-gather of the
    updated parameters: (d−1)/d × (grad bytes + param bytes), the same volume as the all-reduce when they are
    the same dtype. ZeRO-3: the same reduce-scatter + all-gather, counted once per iteration: this assumes the
    per-layer parameter gathers of forward/backward are prefetched and hidden under compute (a known
    optimism for ZeRO-3 with many micro-batches; documented rather than guessed).
    """
    if dp_size <= 1 or num_params <= 0:
        return 0.0
    bw = profile.allreduce_bw_inter if spans_nodes else profile.allreduce_bw_intra
    grad_bytes = num_params * profile.grad_bytes
    if zero_stage == 0:
        return ring_allreduce_s(grad_bytes, num_devices=dp_size, bus_bw=bw, latency_s=latency_s)
    d = dp_size
    volume = (d - 1) / d * (grad_bytes + num_params * profile.param_bytes)
    return volume / bw + 2 * (d - 1) * latency_s
