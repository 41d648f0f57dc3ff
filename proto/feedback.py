"""Measured step statistics sent back by the executor."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Feedback(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    step: int = Field(ge=0)
    plan_id: str = Field(min_length=1)
    measured_iteration_s: float = Field(gt=0)
    peak_memory_bytes: list[float] = Field(default_factory=list, description="Per rank, index = rank.")
    tokens_per_s: float | None = Field(default=None, ge=0)
