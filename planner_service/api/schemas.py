"""Request and response bodies of the planner service that are not in `proto` (job resources).

Plain pydantic + `proto` + the names this build serves (strategies, solver backends, presets) and the
pydantic-only calibration summary, so the typed client (and the executor through it) can import them without
FastAPI. Every number is exact (no string, float or boolean coercion) and bounded; names are enums. The schema
states each rule the service enforces; the rules a JSON Schema cannot express are listed in `CROSS_FIELD_RULES`
and in the descriptions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from planner_service.calibration.summary import CalibrationSummary
from planner_service.presets import CLUSTERS, MODELS
from planner_service.solvers.integer_program import BACKENDS
from planner_service.strategies.registry import STRATEGIES
from proto import Batch, ClusterSpec, CostProfile, ModelSpec, PlanOptions
from proto.batch import Length, SeqId
from proto.wire_types import AS_EXACT_INT, AS_FINITE_NUMBER, MAX_STEP

if TYPE_CHECKING:
    StrategyName = str
    SolverName = str
    ClusterPreset = str
    ModelPreset = str
else:  # the registries are fixed at import, so the schema lists exactly what this build serves
    StrategyName = Literal[tuple(STRATEGIES)]
    SolverName = Literal[tuple(BACKENDS)]
    ClusterPreset = Literal[tuple(CLUSTERS)]
    ModelPreset = Literal[tuple(MODELS)]

MAX_REQUEST_SEQUENCES = 65536
"""The schema's bound on a batch or sample; a service may set a lower one (HELIX_MAX_SEQUENCES)."""
MAX_TIME_LIMIT_S = 600.0

CROSS_FIELD_RULES: dict[str, str] = {
    "seq_ids": "seq_ids has one entry per length and no id repeats",
    "batch.seq_ids": "batch.seq_ids has one entry per length and no id repeats",
    "lengths": "at most HELIX_MAX_SEQUENCES sequences, and sequences x the job's pipeline degree at most "
    "HELIX_MAX_SEQUENCE_STAGES",
    "batch.lengths": "at most HELIX_MAX_SEQUENCES sequences",
    "sample_lengths": "at most HELIX_MAX_SEQUENCES sequences",
    "cluster": "num_nodes x devices_per_node at most HELIX_MAX_DEVICES; with several nodes, inter_node_bandwidth "
    "at most 100x intra_node_bandwidth",
    "model": "hidden_size divisible by num_heads, num_heads by num_kv_heads",
    "num_stages": "num_stages divides the cluster's device count and is at most the model's num_layers",
    "layer_ranges": "layer_ranges only with num_stages: one [first, last) range per stage, contiguous from layer 0 "
    "to the model's num_layers",
    "peak_memory_bytes": "empty or one entry per rank of the job's cluster",
    "options": "options.max_zero_stage is at least options.zero_stage",
    "sp_degree_costs": "a profile's sp_degree_costs list strictly increasing sp_degree values",
    "profile": "the profile's sp_degree_costs list strictly increasing sp_degree values",
}
"""Rules on combinations of fields (or on service settings) that a JSON Schema cannot state. A request that
breaks one is answered 422 `invalid_input` naming the field; the OpenAPI description lists them."""

TimeLimit = Annotated[float, Field(gt=0, le=MAX_TIME_LIMIT_S, allow_inf_nan=False), AS_FINITE_NUMBER]


def rules_text(*fields: str) -> str:
    """The cross-field rules of `fields`, for a route or model description."""
    return " ".join(f"`{f}`: {CROSS_FIELD_RULES[f]}." for f in fields)


class JobCreate(BaseModel):
    """Register a training job: what it runs on, what it trains and how it is planned."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: ClusterSpec | ClusterPreset = Field(
        description="Cluster preset name (e.g. 'a800-80g-4x8') or a full ClusterSpec. " + rules_text("cluster")
    )
    model: ModelSpec | ModelPreset = Field(
        description="Model preset name (e.g. 'llama2-7b') or a full ModelSpec. " + rules_text("model")
    )
    strategy: StrategyName = Field(description="A registered planning strategy.")
    options: PlanOptions = Field(default_factory=PlanOptions, description=rules_text("options"))
    solver: SolverName = Field(default="cpsat", description="Solver backend.")
    time_limit_s: TimeLimit | None = Field(
        default=None, description="Solver time limit per plan; capped by the service setting."
    )
    sample_lengths: list[Length] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_REQUEST_SEQUENCES,
        description="Sequence lengths typical of the job, used to choose the pipeline degree; "
        "a synthetic sample is used when omitted. " + rules_text("sample_lengths"),
    )
    num_stages: Annotated[int, Field(ge=1, le=1024), AS_EXACT_INT] | None = Field(
        default=None, description="Fix the pipeline degree instead of choosing it. " + rules_text("num_stages")
    )
    layer_ranges: list[tuple[int, int]] | None = Field(
        default=None,
        max_length=1024,
        description="With num_stages: fix the layer split too, [first, last) layers of each stage (a resumed job's "
        "executors already hold their stage modules); else the even split. " + rules_text("layer_ranges"),
    )
    profile: CostProfile | None = Field(
        default=None, description="Initial cost profile (else the preset's). " + rules_text("profile")
    )


class PlanCreate(BaseModel):
    """Stateless planning: everything needed to plan one batch (the fields of `proto.PlanRequest`, with the
    names this service serves as enums)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: ClusterSpec | ClusterPreset = Field(description="Preset name or a full spec. " + rules_text("cluster"))
    model: ModelSpec | ModelPreset = Field(description="Preset name or a full spec. " + rules_text("model"))
    batch: Batch = Field(description=rules_text("batch.lengths", "batch.seq_ids"))
    strategy: StrategyName = "helix"
    options: PlanOptions = Field(default_factory=PlanOptions, description=rules_text("options"))
    profile: CostProfile | None = Field(
        default=None, description="Overrides the preset profile. " + rules_text("profile")
    )
    time_limit_s: TimeLimit = Field(default=2.0, description="Solver time limit; capped by the service setting.")
    solver: SolverName = "cpsat"


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
    decided_by: str = Field(
        default="",
        description="Whose plans chose P: the job's strategy, 'greedy (timeout-fallback)' when the strategy's "
        "trials did not finish within the time limit, or '' when P was fixed.",
    )
    candidates: list[StageCandidate] = Field(default_factory=list)


class JobCounts(BaseModel):
    plans: int = 0
    pruned_plans: int = Field(default=0, description="Plans dropped by the retention policy (their steps answer 410).")
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

    step: Annotated[int, Field(ge=0, le=MAX_STEP), AS_EXACT_INT] = Field(
        description="Training step (iteration) number."
    )
    lengths: list[Length] = Field(
        min_length=1,
        max_length=MAX_REQUEST_SEQUENCES,
        description="Tokens per sequence of the global batch. " + rules_text("lengths"),
    )
    seq_ids: list[SeqId] | None = Field(
        default=None, description="Unique sequence ids; default 0..n-1. " + rules_text("seq_ids")
    )

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
