"""Measured step statistics sent back by the executor."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from proto.wire_types import AS_EXACT_INT, AS_FINITE_NUMBER, MAX_STEP

MAX_ITERATION_S = 1e6
"""About 11 days for one step: anything longer is a units mistake."""
MAX_MEMORY_BYTES = 2**50
MAX_TOKENS_PER_S = 1e12
MAX_RANKS = 65536

MemoryBytes = Annotated[float, Field(ge=0, le=MAX_MEMORY_BYTES, allow_inf_nan=False), AS_FINITE_NUMBER]


class Feedback(BaseModel):
    """One step as it ran.

    Cross-field rule (checked by the service against the job): `peak_memory_bytes` is empty or has one entry
    per rank of the job's cluster.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: Annotated[int, Field(ge=0, le=MAX_STEP), AS_EXACT_INT] = Field()
    plan_id: str = Field(min_length=1, max_length=128)
    measured_iteration_s: Annotated[float, Field(gt=0, le=MAX_ITERATION_S, allow_inf_nan=False), AS_FINITE_NUMBER] = (
        Field()
    )
    peak_memory_bytes: list[MemoryBytes] = Field(
        default_factory=list, max_length=MAX_RANKS, description="Per rank, index = rank."
    )
    peak_memory_source: Literal["allocator", "saved_tensors"] = Field(
        default="allocator",
        description="What `peak_memory_bytes` measured: 'allocator', the device allocator's peak (CUDA: model states, "
        "activations and every op's working memory); 'saved_tensors', model states plus the tensors held for "
        "backward as the executor's CPU probe counts them, without ops' transient working memory. The service "
        "compares each with the matching prediction.",
    )
    tokens_per_s: Annotated[float, Field(ge=0, le=MAX_TOKENS_PER_S, allow_inf_nan=False), AS_FINITE_NUMBER] | None = (
        Field(default=None)
    )
