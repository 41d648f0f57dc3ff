"""HelixTrain wire contract: pydantic v2 models shared by the planner service and the executor.

This package depends on pydantic only. Nothing in it imports `planner_service` or `executor`.
"""

from proto.batch import Batch
from proto.cluster import ClusterSpec
from proto.errors import ErrorBody
from proto.feedback import Feedback
from proto.model import ModelSpec
from proto.plan import (
    SCHEMA_VERSION,
    Chunk,
    FixedLayout,
    GradReduceDtype,
    Lane,
    Op,
    PipelineSpec,
    Plan,
    PlanOptions,
    Predicted,
    RecomputeScope,
    Segment,
    SolverInfo,
    SolverStatus,
    ZeroStage,
)
from proto.profile import CostProfile, SpDegreeCost
from proto.requests import PlanRequest
from proto.topology import Topology
from proto.validation import PlanValidationError, validate_plan

__all__ = [
    "SCHEMA_VERSION",
    "Batch",
    "Chunk",
    "ClusterSpec",
    "CostProfile",
    "ErrorBody",
    "Feedback",
    "FixedLayout",
    "GradReduceDtype",
    "Lane",
    "ModelSpec",
    "Op",
    "PipelineSpec",
    "Plan",
    "PlanOptions",
    "PlanRequest",
    "PlanValidationError",
    "Predicted",
    "RecomputeScope",
    "Segment",
    "SolverInfo",
    "SolverStatus",
    "SpDegreeCost",
    "Topology",
    "ZeroStage",
    "validate_plan",
]
