"""Request and response bodies of the planner service that are not in `proto` (job resources).

Plain pydantic + `proto` (and the pydantic-only calibration summary), so the typed client (and the executor
through it) can import them without FastAPI. Lengths are strict positive integers: `5.0` or `"5"` is a caller
bug, reported as a 422 naming `lengths[i]`, not silently coerced.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from planner_service.calibration.summary import CalibrationSummary
from proto import ClusterSpec, CostProfile, ModelSpec, PlanOptions

PositiveLength = Annotated[int, Field(strict=True, ge=1, description="Tokens in one sequence (>= 1).")]
SeqId = Annotated[int, Field(strict=True, ge=0)]


class JobCreate(BaseModel):
    """Register a training job: what it runs on, what it trains and how it is planned."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: ClusterSpec | Annotated[str, Field(min_length=1, max_length=128)] = Field(
        description="Cluster preset name (e.g. 'a800-80g-4x8') or a full ClusterSpec."
    )
    model: ModelSpec | Annotated[str, Field(min_length=1, max_length=128)] = Field(
        description="Model preset name (e.g. 'llama2-7b') or a full ModelSpec."
    )
    strategy: str = Field(min_length=1, max_length=64, description="A registered planning strategy.")
    options: PlanOptions = Field(default_factory=PlanOptions)
    solver: str = Field(default="cpsat", min_length=1, max_length=32, description="Solver backend.")
    time_limit_s: float | None = Field(
        default=None, gt=0, le=600, description="Solver time limit per plan; capped by the service setting."
    )
    sample_lengths: list[PositiveLength] | None = Field(
        default=None,
        min_length=1,
        description="Sequence lengths typical of the job, used to choose the pipeline degree; "
        "a synthetic sample is used when omitted.",
    )
    num_stages: int | None = Field(
        default=None, ge=1, le=1024, description="Fix the pipeline degree instead of choosing it."
    )
    profile: CostProfile | None = Field(default=None, description="Initial cost profile (else the preset's).")


class JobSpec(BaseModel):
    """How every plan of a job is made: stored at registration and immutable (a stateless request is planned
    from one too). Cluster and model are resolved specs, the time limit is already capped by the service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: ClusterSpec
    model: ModelSpec
    strategy: str
    options: PlanOptions
    solver: str
    time_limit_s: float


class StageCandidate(BaseModel):
    """One pipeline degree tried for the job-level decision."""

    num_stages: int
    feasible: bool
    iteration_s: float | None = None
    solver_status: str | None = None
    message: str = ""


class JobDecisions(BaseModel):
    """Job-level decisions, fixed for the job's lifetime (changing P would move weights)."""

    num_stages: int = Field(description="Pipeline degree P every per-step plan of this job uses.")
    layer_ranges: list[tuple[int, int]] = Field(description="[first, last) layers of each stage.")
    sample_source: Literal["sample_lengths", "synthetic", "fixed"] = Field(
        description="Where the batch that chose P came from ('fixed' when the caller gave num_stages)."
    )
    sample_size: int = Field(ge=0)
    candidates: list[StageCandidate] = Field(default_factory=list)


class JobCounts(BaseModel):
    plans: int = 0
    feedback: int = 0
    profiles: int = 0


class PredictionError(BaseModel):
    """Latest measured-vs-predicted comparison for a job (from feedback)."""

    step: int
    plan_id: str
    measured_s: float
    predicted_s: float | None
    ratio: float | None = Field(description="measured / predicted iteration seconds.")
    relative_error: float | None = Field(description="(measured - predicted) / predicted.")


class JobPublic(BaseModel):
    """A registered job as the service reports it."""

    job_id: str
    created_at: float
    cluster: ClusterSpec
    model: ModelSpec
    strategy: str
    options: PlanOptions
    solver: str
    time_limit_s: float
    decisions: JobDecisions
    counts: JobCounts = Field(default_factory=JobCounts)
    profile_version: int | None = Field(default=None, description="Latest PUT profile version, if any.")
    latest_error: PredictionError | None = None
    calibration: CalibrationSummary | None = Field(
        default=None, description="Online calibration from this job's feedback (None until a stored plan's feedback)."
    )


class StepPlanRequest(BaseModel):
    """The batch of one training step. Same step + same batch = same plan; another batch is a conflict."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: int = Field(strict=True, ge=0, description="Training step (iteration) number.")
    lengths: list[PositiveLength] = Field(min_length=1, description="Tokens per sequence of the global batch.")
    seq_ids: list[SeqId] | None = Field(default=None, description="Unique sequence ids; default 0..n-1.")

    @model_validator(mode="after")
    def _check_ids(self) -> StepPlanRequest:
        if self.seq_ids is not None:
            if len(self.seq_ids) != len(self.lengths):
                raise ValueError(f"seq_ids has {len(self.seq_ids)} entries but lengths has {len(self.lengths)}")
            if len(set(self.seq_ids)) != len(self.seq_ids):
                raise ValueError("seq_ids must be unique")
        return self


class FeedbackAccepted(BaseModel):
    job_id: str
    step: int
    ratio: float | None = Field(description="measured / predicted iteration seconds of that step's plan.")


class ProfileAccepted(BaseModel):
    job_id: str
    version: int = Field(description="Profile version; plans made after this use it.")


class Health(BaseModel):
    status: str
    details: dict[str, Any] = Field(default_factory=dict)
