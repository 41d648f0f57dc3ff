"""Attention with K/V prefix pieces: the input-saving wrapper is exact and keeps no softmax scores."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from executor.attention.backends import varlen_causal_attention
from executor.attention.prefix import prefix_attention

pytestmark = pytest.mark.timeout(60)


def test_input_saving_attention_is_exact_and_keeps_no_scores() -> None:
    """`prefix_attention` on the exact CPU path gives the plain graph's output and gradients bit for bit
    while saving only q, k, v and the prefix pieces: guards against keeping the quadratic softmax matrix
    of every sliced segment for backward."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(90, 4, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(90, 2, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    ctx_k, ctx_v = (torch.randn(30, 2, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    bounds = [0, 70, 85]
    weight = torch.randn(90, 4, 8, generator=gen, dtype=torch.float64)

    def grads(fn: Callable[..., torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, list[int]]:
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, ctx_k, ctx_v)]
        saved: list[int] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(*leaves)
        return torch.autograd.grad((out * weight).sum(), leaves), out, saved

    def plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ck: torch.Tensor, cv: torch.Tensor) -> torch.Tensor:
        pieces = [(ck[:10], cv[:10]), (ck[10:], cv[10:])]
        return varlen_causal_attention(
            q,
            k,
            v,
            bounds,
            context_kv=[(torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])), None],
            backend="sdpa",
        )

    def saving(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ck: torch.Tensor, cv: torch.Tensor) -> torch.Tensor:
        return prefix_attention(q, k, v, bounds, [[(ck[:10], cv[:10]), (ck[10:], cv[10:])], []], backend="sdpa")

    ref_grads, ref_out, ref_saved = grads(plain)
    got_grads, got_out, got_saved = grads(saving)
    assert torch.equal(got_out, ref_out)
    for a, b in zip(got_grads, ref_grads, strict=True):
        assert torch.equal(a, b)
    assert sum(got_saved) < sum(ref_saved) / 3  # q, k, v and prefix pieces only: no probabilities
    assert max(got_saved) <= q.numel()
