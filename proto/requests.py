"""Request bodies shared by the CLI, the service and its clients."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from proto.batch import Batch
from proto.cluster import ClusterSpec
from proto.model import ModelSpec
from proto.plan import PlanOptions
from proto.profile import CostProfile
from proto.wire_types import AS_FINITE_NUMBER


class PlanRequest(BaseModel):
    """Stateless planning request: everything needed to plan one batch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: ClusterSpec | str = Field(description="Preset name or a full spec.")
    model: ModelSpec | str = Field(description="Preset name or a full spec.")
    batch: Batch
    strategy: str = Field(default="helix", min_length=1, max_length=64)
    options: PlanOptions = Field(default_factory=PlanOptions)
    profile: CostProfile | None = Field(default=None, description="Overrides the preset profile.")
    time_limit_s: Annotated[float, Field(gt=0, le=600, allow_inf_nan=False), AS_FINITE_NUMBER] = Field(default=2.0)
    solver: str = Field(default="cpsat", min_length=1, max_length=32)
