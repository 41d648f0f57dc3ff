"""Attention of one chunk whose sliced segments attend to K/V prefixes held as pieces (one per earlier slice).

`prefix_attention(q, k, v, cu_seqlens, prefixes)` is `varlen_causal_attention` with segment i's prefix
given as the list of (k, v) pieces of the earlier slices of its sequence, concatenated only while the
attention runs. The pieces are usually K/V cache leaves (`executor.parallel.pipeline.kv_cache`): passing
them as inputs makes their gradients flow into the leaves, and keeping them as pieces means no
concatenated copy of the whole context is kept for backward.

Memory: the exact CPU paths (``sdpa`` looped over query blocks with a mask, ``naive``) keep the softmax
matrix for backward, which is quadratic in the segment length and would dwarf every other activation. On
those paths the attention is wrapped in an autograd Function that keeps only its inputs and recomputes the
scores in backward, as flash attention does. The backward runs exactly the ops autograd would have run on
the forward graph, so gradients are bit-identical to the unwrapped call. Fused CUDA kernels (flash,
torch varlen) already keep only q, k, v, out and the log-sum-exp and are called directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from executor.attention.backends import KVPrefix, resolve_backend, varlen_causal_attention

SCORE_KEEPING_BACKENDS = frozenset({"sdpa", "naive"})
"""Backends whose autograd graph keeps the (query x key) probabilities for backward."""


@dataclass(frozen=True)
class _Layout:
    """Non-tensor arguments of one attention call."""

    cu_seqlens: tuple[int, ...]
    pieces_per_segment: tuple[int, ...]
    backend: str


def prefix_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: Sequence[int],
    prefixes: Sequence[Sequence[KVPrefix]] | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Causal attention of each packed segment with its own keys and its prefix pieces (oldest first).

    q: (T, h_q, d); k, v: (T, h_kv, d); prefixes: one list per segment (empty: no prefix) of (k_i, v_i)
    pieces of shape (C_i, h_kv, d). Returns (T, h_q, d), padding rows zero.
    """
    bounds = tuple(int(b) for b in cu_seqlens)
    per_segment = [list(p) for p in prefixes] if prefixes is not None else [[] for _ in range(len(bounds) - 1)]
    assert len(per_segment) == len(bounds) - 1, f"{len(per_segment)} prefix lists for {len(bounds) - 1} segments"
    resolved = resolve_backend(backend, q.device)
    layout = _Layout(bounds, tuple(len(p) for p in per_segment), resolved)
    flat = [t for pieces in per_segment for piece in pieces for t in piece]
    if resolved in SCORE_KEEPING_BACKENDS and torch.is_grad_enabled():
        return _InputSavingAttention.apply(layout, q, k, v, *flat)
    return _attend(layout, q, k, v, flat)


def _attend(
    layout: _Layout, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, flat: Sequence[torch.Tensor]
) -> torch.Tensor:
    contexts: list[KVPrefix | None] = []
    at = 0
    for count in layout.pieces_per_segment:
        if count == 0:
            contexts.append(None)
            continue
        ks, vs = flat[at : at + 2 * count : 2], flat[at + 1 : at + 2 * count : 2]
        at += 2 * count
        contexts.append((ks[0], vs[0]) if count == 1 else (torch.cat(list(ks)), torch.cat(list(vs))))
    return varlen_causal_attention(q, k, v, layout.cu_seqlens, context_kv=contexts, backend=layout.backend)


class _InputSavingAttention(torch.autograd.Function):
    """Keeps q, k, v and the prefix pieces; recomputes the attention graph in backward."""

    @staticmethod
    def forward(
        ctx: Any, layout: _Layout, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *flat: torch.Tensor
    ) -> torch.Tensor:
        ctx.layout = layout
        ctx.save_for_backward(q, k, v, *flat)
        return _attend(layout, q, k, v, flat)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[1:]
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(need) for t, need in zip(saved, needs, strict=True)]
            out = _attend(ctx.layout, inputs[0], inputs[1], inputs[2], inputs[3:])
            wanted = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True)) if wanted else iter(())
        return (None, *(next(grads) if need else None for need in needs))
