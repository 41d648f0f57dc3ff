"""Data parallelism shared by every ZeRO stage: the AdamW hyper-parameters, the plain optimizer, and global-norm
clipping that counts every gradient value once however the stage's states are replicated or sharded.

The synchronisation itself (bucketed, overlapped with backward; sharded for ZeRO-1/2/3) is
`executor.parallel.zero`. The chunk losses are divided by the target tokens of the *global* batch, so
gradients are summed (never averaged) over a stage block.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

CLIP_EPS = 1e-6
"""Added to the norm before dividing, as `torch.nn.utils.clip_grad_norm_` does."""


@dataclass(frozen=True, kw_only=True)
class AdamWConfig:
    """Hyper-parameters shared by the executor and the single-process reference."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1


def build_optimizer(params: Iterable[torch.nn.Parameter], config: AdamWConfig) -> torch.optim.Optimizer:
    """Plain AdamW (the reference's and ZeRO-0's/3's optimizer; ZeRO-1/2 shard it, `executor.parallel.zero`)."""
    return torch.optim.AdamW(
        list(params), lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
    )


@dataclass(frozen=True)
class GradTerm:
    """A gradient tensor a rank holds and how many ranks of the world hold the same values (its replicas)."""

    grad: torch.Tensor
    copies: int


def clip_gradients(terms: Sequence[GradTerm], max_norm: float, *, group: dist.ProcessGroup | None = None) -> float:
    """Scale every term so the norm over the *whole model* is at most `max_norm`; return that norm (before
    clipping). Each rank adds its terms' squared norms divided by their copies, so the world sum counts every
    gradient value exactly once: a replicated stage gradient (ZeRO-0) once per stage, not once per replica; a
    sharded one (ZeRO-1/2/3) once per shard; a tied weight once for its two holders. Mirrors
    `torch.nn.utils.clip_grad_norm_` (coefficient max_norm / (norm + 1e-6), clamped at 1, always applied)."""
    local = torch.zeros((), dtype=torch.float64)
    for term in terms:
        local += term.grad.detach().to(torch.float64).pow(2).sum().cpu() / term.copies
    if dist.is_initialized():
        dist.all_reduce(local, group=group)
    total = float(local.sqrt())
    coef = min(max_norm / (total + CLIP_EPS), 1.0)
    for term in terms:
        term.grad.mul_(coef)
    return total


def clip_grad_norm(
    params: Sequence[torch.nn.Parameter], max_norm: float, *, replicas: int, group: dist.ProcessGroup | None = None
) -> float:
    """`clip_gradients` over parameters' gradients: a plain gradient is held by `replicas` ranks (its stage
    block); an FSDP2 gradient (a DTensor sharded over the block) is held once, as its local shard."""
    from torch.distributed.tensor import DTensor

    terms = []
    for p in params:
        if p.grad is None:
            continue
        if isinstance(p.grad, DTensor):
            terms.append(GradTerm(p.grad.to_local(), 1))
        else:
            terms.append(GradTerm(p.grad, replicas))
    return clip_gradients(terms, max_norm, group=group)
