"""Communication times (DESIGN §6): Ulysses all-to-all, pipeline send/recv, data-parallel gradient sync.

Every time is `bytes / bandwidth + latency` with the bandwidth of the link class the transfer uses: intra-node
(NVLink) when all participating ranks share a node, inter-node (InfiniBand) otherwise. Bandwidths are effective
per-device collective numbers from the `CostProfile`; the 10-20x cliff between the two is what makes node-local
SP groups worth planning for.
"""

from __future__ import annotations

import functools
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


def hierarchical_phase_s(
    num_bytes: float,
    *,
    per_node: int,
    nodes: int,
    intra_bw: float,
    inter_bw: float,
    intra_latency_s: float,
    inter_latency_s: float,
) -> float:
    """One reduce-scatter (or all-gather) of `num_bytes` over `nodes` x `per_node` devices, done hierarchically
    as NCCL does across nodes: (k-1)/k of the data inside each node, then (n-1)/n of each device's 1/k shard
    across nodes on that device's own network share, so every NIC of a node works at once."""
    k, n = per_node, nodes
    if k * n <= 1 or num_bytes <= 0:
        return 0.0
    intra = (k - 1) / k * num_bytes / intra_bw + (k - 1) * intra_latency_s
    inter = (n - 1) / n * (num_bytes / k) / inter_bw + (n - 1) * inter_latency_s if n > 1 else 0.0
    return intra + inter


def grad_sync_s(
    profile: CostProfile,
    *,
    num_params: int,
    dp_size: int,
    nodes: int,
    zero_stage: int,
    intra_latency_s: float,
    inter_latency_s: float,
) -> float:
    """Seconds of one stage's data-parallel gradient sync across its `dp_size` devices on `nodes` nodes.

    ZeRO-0: all-reduce of the gradients = reduce-scatter + all-gather of the gradient bytes. ZeRO-1/2:
    reduce-scatter of the gradients then all-gather of the updated parameters (the same volume when both are
    the same dtype). ZeRO-3: the same, counted once per iteration: this assumes the per-layer parameter
    gathers of forward/backward are prefetched and hidden under compute (a known optimism for ZeRO-3 with many
    micro-batches; documented rather than guessed). Each phase is hierarchical across nodes.
    """
    if dp_size <= 1 or num_params <= 0:
        return 0.0
    nodes = max(1, min(nodes, dp_size))
    phase = functools.partial(
        hierarchical_phase_s,
        per_node=dp_size // nodes,
        nodes=nodes,
        intra_bw=profile.allreduce_bw_intra,
        inter_bw=profile.allreduce_bw_inter,
        intra_latency_s=intra_latency_s,
        inter_latency_s=inter_latency_s,
    )
    grad_bytes = num_params * profile.grad_bytes
    gathered = grad_bytes if zero_stage == 0 else num_params * profile.param_bytes
    return phase(grad_bytes) + phase(gathered)
