"""The plan for one iteration: pipeline split, lanes, chunks, schedules, recompute, predictions.

Conventions (see DESIGN.md §3):
- stage p owns ranks [p*N/P, (p+1)*N/P) (its *stage block*);
- a lane of SP degree s uses s aligned consecutive ranks in every stage block, at the same offset;
  `Lane.ranks[p][i]` is the rank at stage p, SP position i;
- a segment [start, end) of a sequence has context C = start (the earlier tokens of the same sequence);
- `Lane.schedule[p]` is the ordered op list that stage p of the lane executes;
- `Lane.recompute[p][c]` is how many of stage p's layers recompute for chunk c.
"""

from __future__ import annotations

import hashlib
from enum import Enum, IntEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from proto.fingerprint import FINGERPRINT_HEX_DIGITS
from proto.wire_types import AS_EXACT_INT

SCHEMA_VERSION = "1.0"


class SolverStatus(str, Enum):
    """How a plan's layout was found; travels as its string value."""

    OPTIMAL = "optimal"
    """The solver proved its model's optimum; a plan that carries a lower bound on its simulated time
    (`SolverInfo.lower_bound_s`) is also within 0.01% of that bound, else it is `feasible`."""
    FEASIBLE = "feasible"
    """A solution without an optimality proof (time limit, or a search that does not prove one)."""
    HEURISTIC = "heuristic"
    """Built by a heuristic (greedy) on purpose."""
    FALLBACK = "fallback"
    """The strategy failed; the greedy plan was returned instead (the message says why)."""
    TIMEOUT_FALLBACK = "timeout-fallback"
    """The solver found nothing inside its limit; a heuristic layout was used."""

    def __str__(self) -> str:
        return self.value


class ZeroStage(IntEnum):
    """How far model states are sharded over each stage's data-parallel group (DeepSpeed ZeRO numbering)."""

    NONE = 0
    """Every rank holds full parameters, gradients and optimizer state."""
    OPTIMIZER = 1
    """Optimizer state sharded."""
    GRADIENTS = 2
    """Optimizer state and gradients sharded."""
    PARAMETERS = 3
    """Optimizer state, gradients and parameters sharded (gathered per layer when used)."""


class GradReduceDtype(str, Enum):
    """The dtype data-parallel gradient reductions (all-reduce, reduce-scatter) run in; the executor follows it."""

    FLOAT32 = "float32"
    """At least fp32: a 16-bit model's gradients are upcast before reduction (mixed precision, as FSDP2's
    ``MixedPrecisionPolicy(reduce_dtype=torch.float32)`` and Megatron's fp32 grad reduction); a 32- or 64-bit
    model reduces in its own dtype."""
    MODEL = "model"
    """In the model's dtype (bf16 for a bf16 model): half the volume of fp32, with bf16 rounding in the sums."""

    def element_bytes(self, model_bytes: int) -> int:
        """Bytes per reduced gradient element for a model of `model_bytes`-byte elements."""
        return max(model_bytes, FP32_BYTES) if self is GradReduceDtype.FLOAT32 else model_bytes

    def __str__(self) -> str:
        return self.value


FP32_BYTES = 4


class Segment(BaseModel):
    """A token range [start, end) of one sequence."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq_id: int
    start: int = Field(ge=0)
    end: int = Field(ge=1)

    @model_validator(mode="after")
    def _check(self) -> Segment:
        if self.end <= self.start:
            raise ValueError(f"segment of seq {self.seq_id}: end ({self.end}) must exceed start ({self.start})")
        return self

    @property
    def num_tokens(self) -> int:
        return self.end - self.start

    @property
    def context(self) -> int:
        """Tokens of the same sequence before this segment (the K/V prefix it attends to)."""
        return self.start


class Chunk(BaseModel):
    """A micro-batch flowing through a lane's pipeline: packed sequences and/or one slice."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    segments: list[Segment] = Field(min_length=1)
    num_tokens: int = Field(default=0, description="Total tokens; derived from the segments.")

    @model_validator(mode="after")
    def _derive_tokens(self) -> Chunk:
        total = sum(s.num_tokens for s in self.segments)
        if self.num_tokens not in (0, total):
            raise ValueError(f"num_tokens ({self.num_tokens}) does not match the segments ({total})")
        object.__setattr__(self, "num_tokens", total)
        return self


class Op(BaseModel):
    """One pipeline operation: forward ('F') or backward ('B') of chunk `chunk` (index in the lane), or its deferred
    weight gradients ('W', plans with `defer_weight_grads` only: at most one per chunk and stage, after its B; the B
    then leaves the weight gradients of its kept layers to it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["F", "B", "W"]
    chunk: int = Field(ge=0)

    def __str__(self) -> str:
        return f"{self.kind}{self.chunk}"


class PipelineSpec(BaseModel):
    """P stages and the [first, last) layer range of each."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_stages: int = Field(ge=1)
    layer_ranges: list[tuple[int, int]]

    @model_validator(mode="after")
    def _check(self) -> PipelineSpec:
        if len(self.layer_ranges) != self.num_stages:
            raise ValueError(f"layer_ranges has {len(self.layer_ranges)} entries for {self.num_stages} stages")
        expected = 0
        for p, (lo, hi) in enumerate(self.layer_ranges):
            if lo != expected or hi <= lo:
                raise ValueError(f"stage {p}: layer range [{lo}, {hi}) must start at {expected} and be non-empty")
            expected = hi
        return self

    @property
    def num_layers(self) -> int:
        return self.layer_ranges[-1][1]

    def layers_of(self, stage: int) -> int:
        lo, hi = self.layer_ranges[stage]
        return hi - lo

    @classmethod
    def even(cls, num_layers: int, num_stages: int) -> PipelineSpec:
        """Split layers as evenly as possible; earlier stages get the remainder."""
        if not 1 <= num_stages <= num_layers:
            raise ValueError(f"num_stages ({num_stages}) must be between 1 and num_layers ({num_layers})")
        base, extra = divmod(num_layers, num_stages)
        ranges, lo = [], 0
        for p in range(num_stages):
            hi = lo + base + (1 if p < extra else 0)
            ranges.append((lo, hi))
            lo = hi
        return cls(num_stages=num_stages, layer_ranges=ranges)


class Lane(BaseModel):
    """One pipeline of P x sp_degree devices with its chunks, schedules and recompute counts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lane_id: int = Field(ge=0)
    sp_degree: int = Field(ge=1)
    ranks: list[list[int]] = Field(description="ranks[stage][sp_position]")
    chunks: list[Chunk] = Field(default_factory=list)
    schedule: list[list[Op]] = Field(description="schedule[stage]: ordered ops")
    recompute: list[list[int]] = Field(description="recompute[stage][chunk]: layers recomputed")


class Predicted(BaseModel):
    """What the simulator predicts for the plan."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    iteration_s: float = Field(ge=0)
    ideal_s: float = Field(ge=0, description="Total fwd+bwd compute / N: no comm, no bubbles, no recompute.")
    lane_s: list[float] = Field(default_factory=list, description="Per-lane pipeline finish time.")
    peak_memory_bytes: list[float] = Field(
        default_factory=list,
        description="Per rank (index = rank): model states + peak activations + the profile's memory reserve, "
        "i.e. what is compared with ClusterSpec.device_memory_bytes (the capacity). An allocator's peak "
        "(torch.cuda.max_memory_allocated) corresponds to this less the reserve.",
    )
    bubble_fraction: float = Field(default=0.0, ge=0, le=1)
    compute_s: float = Field(default=0.0, ge=0, description="Busiest device's compute seconds.")
    comm_s: float = Field(
        default=0.0,
        ge=0,
        description="Busiest device's communication seconds: all-to-alls, sends, and the time data-parallel "
        "collectives added to its ops.",
    )
    recompute_s: float = Field(default=0.0, ge=0, description="Busiest device's recompute seconds.")
    grad_sync_s: float = Field(
        default=0.0,
        ge=0,
        description="Seconds of one rank's data-parallel collectives in the step on their own (gradient "
        "reductions, ZeRO parameter gathers, per-chunk ones for the busiest lane's chunk count), the largest over "
        "stages; the simulator overlaps most of them with compute.",
    )

    @property
    def ratio_to_ideal(self) -> float | None:
        return self.iteration_s / self.ideal_s if self.ideal_s > 0 else None


class SolverInfo(BaseModel):
    """How the plan was found, and how far it may be from the best plan of the strategy's space.

    `gap` bounds the *simulated* time: (predicted.iteration_s - lower_bound_s) / predicted.iteration_s, where
    `lower_bound_s` holds for every plan the strategy can build (schema 1.0 plans reported the lane ILP's gap
    for its own cost model here instead; that number is now in `message` as "model gap").
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str = Field(default="none")
    status: SolverStatus = SolverStatus.HEURISTIC
    gap: float | None = Field(
        default=None,
        ge=0,
        description="Relative gap of the predicted (simulated) iteration time to `lower_bound_s`; None when the "
        "strategy proves no bound.",
    )
    lower_bound_s: float | None = Field(
        default=None,
        ge=0,
        description="A lower bound on the simulated iteration time of every plan the strategy can build.",
    )
    solve_s: float = Field(default=0.0, ge=0)
    message: str = ""


class FixedLayout(BaseModel):
    """One SP x PP x DP layout for a whole job, as a Megatron-LM / DeepSpeed user configures it: the `megatron`
    strategy runs every batch with it (packing into micro-batches of `micro_batch_tokens`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_stages: int = Field(ge=1, description="Pipeline degree P.")
    sp_degree: int = Field(ge=1, description="Ulysses SP degree of every lane (DP = N / (P * sp_degree)).")
    micro_batch_tokens: int = Field(ge=1, description="Token budget of one micro-batch (Megatron's seq-length).")
    full_recompute: bool = Field(default=False, description="Activation checkpointing of every layer.")


class RecomputeScope(str, Enum):
    """What a recomputed layer (`Lane.recompute`) drops after its forward and reruns in its backward."""

    LAYER = "layer"
    """The whole layer: it keeps only its input (the residual stream) and reruns attention and MLP."""
    MLP = "mlp"
    """Only the MLP half: it keeps the attention half's activations (no attention or all-to-all rerun, which
    dominate long sequences) and drops the MLP's, which hold most of a layer's bytes at a fraction of its time."""


class PlanOptions(BaseModel):
    """Job options that change the plan's memory and sync costs, and the job's fixed layout if it has one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    zero_stage: Annotated[ZeroStage, AS_EXACT_INT] = Field(
        default=ZeroStage.NONE,
        description="Shard optimizer (1), +grads (2), +params (3) across each stage's devices.",
    )
    max_zero_stage: Annotated[ZeroStage, AS_EXACT_INT] = Field(
        default=ZeroStage.PARAMETERS,
        description="The highest ZeRO stage a plan may raise zero_stage to when a layout's model states leave too "
        "little memory for activations (the plan records the stage it needs). An executor that shards its model "
        "states once per job (`helix train`) sends its own stage here, so every plan runs at that stage.",
    )
    grad_reduce_dtype: GradReduceDtype = Field(
        default=GradReduceDtype.FLOAT32,
        description="Dtype of the data-parallel gradient reductions: 'float32' (a 16-bit model's gradients are "
        "upcast first; the executor's default under mixed precision) or 'model' (the model's own dtype). "
        "The gradient sync volume follows it.",
    )
    recompute_scope: RecomputeScope = Field(
        default=RecomputeScope.LAYER,
        description="What each recomputed layer (Lane.recompute) recomputes: 'layer' (all of it: it keeps only its "
        "input) or 'mlp' (its MLP half: it keeps its attention half's activations, and reruns no attention or "
        "all-to-all). Every strategy plans with the job's scope; the executor follows the plan's.",
    )
    fixed_layout: FixedLayout | None = Field(
        default=None,
        description="The job's one layout for every batch (`megatron`); chosen once per job from a sample "
        "(planner_service.job_layout). None: a strategy that needs one tunes it on the batch it is given.",
    )

    @model_validator(mode="after")
    def _max_zero_stage_at_least_zero_stage(self) -> PlanOptions:
        if self.max_zero_stage < self.zero_stage:
            raise ValueError(
                f"max_zero_stage={int(self.max_zero_stage)} is below zero_stage={int(self.zero_stage)}: the plan's "
                "stage can only be raised from the job's"
            )
        return self


class Plan(BaseModel):
    """Everything an executor needs for one iteration, plus predictions and solver metadata."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: str = SCHEMA_VERSION
    plan_id: str = Field(
        default="", description="Content hash of everything else except the solve time; set by `with_id()`."
    )
    job_id: str | None = None
    step: int | None = Field(default=None, ge=0)
    strategy: str
    cluster_name: str = Field(default="custom", description="ClusterSpec.name (informational).")
    model_name: str = Field(default="custom", description="ModelSpec.name (informational).")
    cluster_fingerprint: str
    model_fingerprint: str
    batch_fingerprint: str
    options: PlanOptions = Field(default_factory=PlanOptions)
    pipeline: PipelineSpec
    lanes: list[Lane] = Field(min_length=1)
    defer_weight_grads: bool = Field(
        default=False,
        description="Allow 'W' ops (zero-bubble style B/W split): a chunk with a W op in a stage's schedule splits "
        "its backward there. Its B op back-propagates to the input, sends that gradient to the previous stage (whose "
        "backward then starts earlier) and leaves the weight gradients of the stage's kept (not recomputed) layers "
        "to the W op, placed right after it or where the stage would otherwise wait. The same gradients; their "
        "operands are held until the W op. The W ops after a stage's last B op run with that B as one group, layer "
        "by layer over their chunks (on the first stage while the B runs, elsewhere after its send), so the "
        "data-parallel gradient buckets are reduced while the group computes the next layer. ZeRO-0/1 only.",
    )
    predicted: Predicted
    solver: SolverInfo = Field(default_factory=SolverInfo)

    def content_hash(self) -> str:
        """Hash of the plan's content; the solver's wall time is left out so equal decisions give equal ids.

        The bytes hashed are pydantic's JSON of the plan, fields in declaration order: no field of a plan is a
        mapping, so equal content gives equal bytes, without the sorted re-encoding `fingerprint` does (at
        16384 sequences that re-encoding took 80 ms of a 0.5 s planning call)."""
        content = self.model_dump_json(exclude={"plan_id": True, "solver": {"solve_s"}})
        return hashlib.sha256(content.encode()).hexdigest()[:FINGERPRINT_HEX_DIGITS]

    def with_id(self) -> Plan:
        """A copy whose plan_id is the hash of its content."""
        return self.model_copy(update={"plan_id": self.content_hash()})
