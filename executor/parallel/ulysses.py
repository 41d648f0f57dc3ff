"""Ulysses sequence parallelism: all-to-all from sequence-sharded to head-sharded attention and back.

A chunk of T tokens is padded to T_pad = s * ceil(T / s) and SP rank r holds rows [r*S, (r+1)*S) with
S = T_pad / s (padding rows carry no target and are excluded from attention). Around attention:

    q, k, v   (S, h, d)        sequence-sharded, all heads        (projections, RoPE)
      -- all-to-all -->        (T_pad, h / s, d)                   head-sharded, whole chunk
    attention over the chunk's segments (exact causal, per segment)
      -- all-to-all -->        (S, h_q, d)                         sequence-sharded again

q, k and v travel in one all-to-all (fewer collectives, and one unambiguous backward order). With
GQA and fewer kv heads than s, kv heads are replicated so that SP rank r receives the kv head its
query heads [r*h_q/s, (r+1)*h_q/s) use; autograd sums the replicas' gradients.

Both all-to-alls are autograd Functions whose backward is the inverse all-to-all, so the whole lane
differentiates like the single-device model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist

from executor.attention.backends import KVPrefix
from executor.attention.prefix import prefix_attention


def _scatter_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """(S, s, hx, d) head groups of my tokens -> (s*S, hx, d) all tokens of my head group."""
    shard, s, hx, d = x.shape
    send = x.transpose(0, 1).contiguous()  # (s, S, hx, d): block j goes to SP rank j
    recv = torch.empty_like(send)  # (s, S, hx, d): block i came from SP rank i (its tokens)
    dist.all_to_all_single(recv, send, group=group)
    return recv.view(s * shard, hx, d)


def _gather_heads(y: torch.Tensor, group: dist.ProcessGroup, s: int) -> torch.Tensor:
    """(s*S, hx, d) all tokens of my head group -> (S, s, hx, d) all head groups of my tokens."""
    total, hx, d = y.shape
    send = y.reshape(s, total // s, hx, d).contiguous()  # block i: tokens of SP rank i
    recv = torch.empty_like(send)  # block j: my tokens, head group j
    dist.all_to_all_single(recv, send, group=group)
    return recv.transpose(0, 1).contiguous()


class SeqToHeads(torch.autograd.Function):
    """(S, s, hx, d) -> (s*S, hx, d); backward is the inverse all-to-all."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group, ctx.s = group, x.shape[1]
        return _scatter_heads(x, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _gather_heads(grad, ctx.group, ctx.s), None


class HeadsToSeq(torch.autograd.Function):
    """(s*S, hx, d) -> (S, s, hx, d); backward is the inverse all-to-all."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, group: dist.ProcessGroup, s: int) -> torch.Tensor:
        ctx.group = group
        return _gather_heads(y, group, s)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _scatter_heads(grad, ctx.group), None, None


def kv_replication(num_heads: int, num_kv_heads: int, sp_degree: int) -> int:
    """How many copies of each kv head the all-to-all carries (1 unless num_kv_heads < sp_degree)."""
    assert num_heads % sp_degree == 0, f"SP degree {sp_degree} must divide num_heads ({num_heads})"
    if num_kv_heads % sp_degree == 0:
        return 1
    assert sp_degree % num_kv_heads == 0, f"SP degree {sp_degree} and num_kv_heads ({num_kv_heads}) must nest"
    return sp_degree // num_kv_heads


class KVBinding(Protocol):
    """Gives sliced segments their K/V prefix and records K/V for later slices (`pipeline.kv_cache`)."""

    def bind(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[Sequence[KVPrefix]]]: ...


@dataclass(frozen=True, kw_only=True)
class UlyssesAttention:
    """The `attend` callable of one chunk on one SP rank (an `executor.model.AttendFn`).

    `cu_seqlens` are the segment boundaries in the whole padded chunk; `kv_binding` (for chunks holding
    slices) sees the head-sharded K/V of every layer, exactly as the attention does, and returns the
    per-segment K/V prefixes of earlier slices.
    """

    group: dist.ProcessGroup | None
    """The lane's SP group (None only when sp_degree == 1)."""
    sp_degree: int
    cu_seqlens: Sequence[int]
    backend: str = "auto"
    kv_binding: KVBinding | None = None

    def _attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        prefixes = None
        if self.kv_binding is not None:
            k, v, prefixes = self.kv_binding.bind(layer, k, v)
        return prefix_attention(q, k, v, self.cu_seqlens, prefixes, backend=self.backend)

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        s = self.sp_degree
        if s == 1:
            return self._attend(layer, q, k, v)
        assert self.group is not None, "an SP degree above 1 needs a process group"
        shard, num_heads, d = q.shape
        rep = kv_replication(num_heads, k.shape[1], s)
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (S, s, d): one per rank
        hq, hkv = num_heads // s, k.shape[1] // s
        packed = torch.cat(
            [q.view(shard, s, hq, d), k.view(shard, s, hkv, d), v.view(shard, s, hkv, d)], dim=2
        )  # (S, s, hq + 2*hkv, d)
        full = SeqToHeads.apply(packed, self.group)  # (T_pad, hq + 2*hkv, d)
        qh, kh, vh = full.split([hq, hkv, hkv], dim=1)
        out = self._attend(layer, qh, kh, vh)
        back = HeadsToSeq.apply(out, self.group, s)  # (S, s, hq, d)
        return back.reshape(shard, num_heads, d)
