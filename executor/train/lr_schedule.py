"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (the usual LLM pre-training recipe)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class WarmupCosine:
    """Multiplier of the base learning rate at each step (for `torch.optim.lr_scheduler.LambdaLR`; no slots:
    LambdaLR's state_dict saves a callable object's `__dict__`)."""

    warmup_steps: int
    """Steps of linear warm-up from lr/warmup_steps to lr."""
    total_steps: int
    """Step at which the cosine reaches the floor (the run's length)."""
    min_ratio: float = 0.1
    """Floor as a fraction of the base learning rate."""

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) >= 0 and total_steps ({self.total_steps}) >= 1")
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ValueError(f"min_ratio ({self.min_ratio}) must be in [0, 1]")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
