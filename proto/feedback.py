"""Measured step statistics sent back by the executor."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from proto.wire_types import MAX_STEP, ExactInt, FiniteFloat

MAX_ITERATION_S = 1e6
"""About 11 days for one step: anything longer is a units mistake."""
MAX_MEMORY_BYTES = 2**50
MAX_TOKENS_PER_S = 1e12
MAX_RANKS = 65536

MemoryBytes = Annotated[FiniteFloat, Field(ge=0, le=MAX_MEMORY_BYTES)]


class Feedback(BaseModel):
    """One step as it ran.

    Cross-field rule (checked by the service against the job): `peak_memory_bytes` is empty or has one entry
    per rank of the job's cluster.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: ExactInt = Field(ge=0, le=MAX_STEP)
    plan_id: str = Field(min_length=1, max_length=128)
    measured_iteration_s: FiniteFloat = Field(gt=0, le=MAX_ITERATION_S)
    peak_memory_bytes: list[MemoryBytes] = Field(
        default_factory=list, max_length=MAX_RANKS, description="Per rank, index = rank."
    )
    tokens_per_s: FiniteFloat | None = Field(default=None, ge=0, le=MAX_TOKENS_PER_S)
