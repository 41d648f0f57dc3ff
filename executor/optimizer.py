"""AdamW for one stage, optionally with its state sharded over the stage's data-parallel group (ZeRO-1)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
    kwargs = {"lr": config.lr, "betas": config.betas, "eps": config.eps, "weight_decay": config.weight_decay}
    if not zero1:
        return torch.optim.AdamW(list(params), **kwargs)
    # imported here: torch.distributed.optim pulls in TorchScript machinery (and its deprecation warnings)
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return ZeroRedundancyOptimizer(list(params), optimizer_class=torch.optim.AdamW, process_group=dp_group, **kwargs)
