"""Data parallelism of one stage: gradients summed over the stage's data-parallel group, and AdamW for the
stage, optionally with its state sharded over that group (ZeRO-1).

Every rank of a stage block holds the whole stage, so after the stage's lanes have run their chunks
the gradient of a parameter is the sum of the block's gradients. The chunk losses are already divided by
the target tokens of the *global* batch, so a sum (never a mean) gives the single-device gradient.
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


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    config: AdamWConfig,
    *,
    zero1: bool = False,
    dp_group: dist.ProcessGroup | None = None,
) -> torch.optim.Optimizer:
    """Plain AdamW, or ZeRO-1 AdamW (each rank of `dp_group` keeps and updates a shard of the state, then
    broadcasts its updated parameters) when `zero1` is set."""
    if not zero1:
        return torch.optim.AdamW(
            list(params), lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
        )
    # imported here: torch.distributed.optim pulls in TorchScript machinery (and its deprecation warnings)
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return ZeroRedundancyOptimizer(
        list(params),
        optimizer_class=torch.optim.AdamW,
        process_group=dp_group,
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )


def clip_grad_norm(
    params: Sequence[torch.nn.Parameter], max_norm: float, *, replicas: int, group: dist.ProcessGroup | None = None
) -> float:
    """Scale gradients so the norm over the *whole model* is at most `max_norm`; return that norm (before clipping).

    Every rank holds its stage's (synchronised) gradients; each stage is held by `replicas` ranks (its stage
    block), so the world sum of local squared norms counts every stage `replicas` times. Mirrors
    `torch.nn.utils.clip_grad_norm_` (coefficient max_norm / (norm + 1e-6), clamped at 1, always applied), so a
    single-process run that clips the whole model produces the same update.
    """
    grads = [p.grad for p in params if p.grad is not None]
    local = torch.zeros((), dtype=torch.float64)
    for g in grads:
        local += g.detach().to(torch.float64).pow(2).sum().cpu()
    if dist.is_initialized():
        dist.all_reduce(local, group=group)
    total = float((local / replicas).sqrt())
    coef = min(max_norm / (total + CLIP_EPS), 1.0)
    for g in grads:
        g.mul_(coef)
    return total


def sync_gradients(params: Sequence[torch.nn.Parameter], dp_group: dist.ProcessGroup) -> None:
    """Sum the gradients of `params` over the stage's data-parallel group in one flat all-reduce.

    A parameter that received no gradient on this rank (e.g. no chunk reached it) gets zeros first, so
    every rank contributes the same flat layout."""
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    if dist.get_world_size(group=dp_group) == 1:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=dp_group)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n
