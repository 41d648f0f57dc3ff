"""Communication times (DESIGN §6): Ulysses all-to-all, pipeline send/recv, data-parallel gradient sync.

Every time is `bytes / bandwidth + latency` with the bandwidth of the link each byte uses: intra-node (NVLink)
between ranks of one node, inter-node (InfiniBand, each device's share of its node's NICs) otherwise.
Bandwidths are effective per-device collective numbers from the `CostProfile`; the 10-20x cliff between the two
is what makes node-local SP groups worth planning for. A transfer that uses both link classes at once (an
all-to-all over a group spanning nodes) is described by `LinkTimes`: how long it keeps each class busy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from proto import CostProfile, ModelSpec

ALLTOALLS_PER_LAYER = 2
"""All-to-all calls (each paying one latency) per layer forward: the executor packs q, k and v into one exchange
to head-sharded and sends the attention output back in a second (`executor.parallel.ulysses`); backward runs the
same 2 with gradients (dO in; dq, dk, dv packed out). The bytes are those of all four tensors either way."""


def tokens_per_device(num_tokens: int, sp_degree: int) -> int:
    """Tokens each SP rank holds: the executor pads a chunk to a multiple of s with masked tokens."""
    return math.ceil(num_tokens / sp_degree)


def kv_head_replication(model: ModelSpec, sp_degree: int) -> float:
    """How many copies of each K/V head Ulysses makes: 1, or s / num_kv_heads when there are fewer K/V heads than
    SP ranks (each rank needs the K/V head its query heads use; `executor.ulysses.kv_replication`)."""
    return max(model.num_kv_heads, sp_degree) / model.num_kv_heads


def ulysses_kv_width(model: ModelSpec, sp_degree: int) -> int:
    """Elements per token of K (or V) that enter the all-to-all.

    Under GQA with num_kv_heads >= s each device receives num_kv_heads/s whole K/V heads: width kv_dim. When
    num_kv_heads < s there are not enough K/V heads to give every device its own, so each K/V head is repeated
    s/num_kv_heads times before the all-to-all (as DeepSpeed-Ulysses does): the width sent is s·head_dim.
    """
    return max(model.num_kv_heads, sp_degree) * model.head_dim


def ulysses_layer_bytes(model: ModelSpec, *, num_tokens: int, sp_degree: int) -> tuple[float, ...]:
    """Bytes each device sends in each of the 4 forward all-to-alls of one layer (q, k, v, out).

    A device holds tokens/s tokens of every head and keeps 1/s of them: it sends (s−1)/s of its shard. q and the
    attention output are heads x head_dim wide (`q_dim`, not always the hidden size), k and v the (replicated)
    K/V width.
    """
    if sp_degree <= 1 or num_tokens <= 0:
        return (0.0, 0.0, 0.0, 0.0)
    keep = (sp_degree - 1) / sp_degree
    base = tokens_per_device(num_tokens, sp_degree) * model.bytes_per_element * keep
    kv = ulysses_kv_width(model, sp_degree)
    return (base * model.q_dim, base * kv, base * kv, base * model.q_dim)


@dataclass(frozen=True, slots=True)
class LinkTimes:
    """How long a transfer keeps each link class of a device busy, and how long it takes on its own."""

    intra_s: float
    """Seconds of NVLink (intra-node) traffic."""
    inter_s: float
    """Seconds of the device's inter-node network share."""
    duration_s: float
    """Wall-clock seconds of the transfer alone (its link parts as they overlap or follow one another, plus
    latencies)."""

    def scaled(self, factor: float) -> LinkTimes:
        """`factor` such transfers one after another."""
        return LinkTimes(self.intra_s * factor, self.inter_s * factor, self.duration_s * factor)

    def __add__(self, other: LinkTimes) -> LinkTimes:
        """This transfer, then `other`."""
        return LinkTimes(self.intra_s + other.intra_s, self.inter_s + other.inter_s, self.duration_s + other.duration_s)


NO_TRAFFIC = LinkTimes(0.0, 0.0, 0.0)


def group_devices_per_node(sp_degree: int, devices_per_node: int, *, spans_nodes: bool) -> int:
    """Devices of an aligned SP group in each node it occupies (k): s inside one node, else a whole node each.

    A group that spans nodes but is no larger than a node is not aligned (never planned); it is priced as if
    every peer were outside the node (k = 1), the old all-inter-node charge, rather than guessed.
    """
    if not spans_nodes:
        return sp_degree
    return min(sp_degree, devices_per_node) if sp_degree > devices_per_node else 1


def ulysses_layer_links(
    profile: CostProfile, model: ModelSpec, *, num_tokens: int, sp_degree: int, per_node: int
) -> LinkTimes:
    """Link times of the all-to-alls of one layer (forward, or the same again in backward).

    Of a device's s − 1 peers, k − 1 share its node (k = `per_node`, devices of the group per node) and s − k do
    not; it sends each peer the same 1/s of its shard. NCCL issues all the sends at once, so the NVLink part
    (k − 1)/(s − 1) of the bytes and the network part (s − k)/(s − 1) flow in parallel: the all-to-all lasts as
    long as the slower of the two, plus one latency per all-to-all (the inter-node one when the group spans
    nodes). Charging every byte at the network rate, as before, overcharged a group of 16 on 2 nodes of 8 by
    15/8 and one of 32 on 4 nodes by 31/24.
    """
    s, k = sp_degree, per_node
    if s <= 1 or num_tokens <= 0:
        return NO_TRAFFIC
    assert 1 <= k <= s, f"devices per node of the group ({k}) must be in [1, sp_degree ({s})]"
    total = sum(ulysses_layer_bytes(model, num_tokens=num_tokens, sp_degree=s))
    intra = total * (k - 1) / (s - 1) / profile.alltoall_bw_intra
    inter = total * (s - k) / (s - 1) / profile.alltoall_bw_inter
    latency = profile.alltoall_latency_inter_s if k < s else profile.alltoall_latency_intra_s
    return LinkTimes(intra, inter, max(intra, inter) + ALLTOALLS_PER_LAYER * latency)


def ulysses_layer_comm_s(
    profile: CostProfile, model: ModelSpec, *, num_tokens: int, sp_degree: int, per_node: int
) -> float:
    """Seconds of the all-to-alls of one layer (forward, or the same again in backward)."""
    return ulysses_layer_links(profile, model, num_tokens=num_tokens, sp_degree=sp_degree, per_node=per_node).duration_s


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


def hierarchical_phase_links(
    num_bytes: float,
    *,
    per_node: int,
    nodes: int,
    intra_bw: float,
    inter_bw: float,
    intra_latency_s: float,
    inter_latency_s: float,
) -> LinkTimes:
    """One reduce-scatter (or all-gather) of `num_bytes` over `nodes` x `per_node` devices, done hierarchically
    as NCCL does across nodes: (k-1)/k of the data inside each node, then (n-1)/n of each device's 1/k shard
    across nodes on that device's own network share, so every NIC of a node works at once. The two parts follow
    one another (the inter-node part reduces what the intra-node part produced)."""
    k, n = per_node, nodes
    if k * n <= 1 or num_bytes <= 0:
        return NO_TRAFFIC
    intra = (k - 1) / k * num_bytes / intra_bw + (k - 1) * intra_latency_s
    inter = (n - 1) / n * (num_bytes / k) / inter_bw + (n - 1) * inter_latency_s if n > 1 else 0.0
    return LinkTimes(intra, inter, intra + inter)
