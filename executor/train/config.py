"""What a training run does: one frozen object built by `helix train` and shipped to every rank."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from proto import ClusterSpec, CostProfile, ModelSpec, PlanOptions

ResumeMode = Literal["never", "auto", "must"]
"""never: start fresh; auto: resume from the latest checkpoint when there is one (what torchrun restarts need);
must: resume, and fail when there is no checkpoint."""
LOCAL_PLANNER = "local"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    # --- what ---------------------------------------------------------------------------------------------
    cluster: ClusterSpec
    model: ModelSpec
    data: Path
    """Corpus: a folder of text files, or a .jsonl file of texts (`text`) or token ids (`input_ids`)."""
    tokenizer: Path | None = None
    """A Hugging Face tokenizer.json; default: a byte-level BPE trained on the corpus (cached)."""
    cache_dir: Path | None = None
    """Tokenizer and token-store cache; default `.helix-cache` beside the corpus."""
    max_len: int = 4096
    """Longer documents are split into windows of at most this many tokens."""
    batch_size: int | None = 8
    """Sequences per global batch (or use `token_budget`)."""
    token_budget: int | None = None
    """Tokens per global batch (sequences are added while they fit)."""
    seed: int = 0
    """Weights (unless `init` is given) and data order."""
    init: Path | None = None
    """A Hugging Face Llama-family checkpoint folder (config.json + *.safetensors) to start from; each rank
    reads only its stage's tensors."""
    steps: int = 100
    # --- planning -----------------------------------------------------------------------------------------
    planner: str = LOCAL_PLANNER
    """'local' (plan in-process) or the planner service URL."""
    strategy: str = "helix"
    solver: str = "cpsat"
    time_limit_s: float = 2.0
    options: PlanOptions = field(default_factory=PlanOptions)
    stages: int | None = None
    """Fix the pipeline degree P (default: chosen once per job from its first batch)."""
    plan_deadline_s: float | None = None
    """How long a step waits for the service's plan before planning in-process (default: 2 x limit + 10 s)."""
    profile: CostProfile | None = None
    calibrate: bool = True
    """`--planner local`: refine the profile from each step's measured time and memory (the service calibrates
    its jobs itself, `HELIX_CALIBRATE`)."""
    # --- optimisation -------------------------------------------------------------------------------------
    lr: float = 3e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    """Clip the global gradient norm (over every stage, lane and shard) to this; 0 disables."""
    dtype: Literal["float32", "float64", "bfloat16"] = "float32"
    """Parameter dtype on CPU; 'bfloat16' means bf16 autocast over float32 weights (CUDA)."""
    device: Literal["cpu", "cuda"] = "cpu"
    attention_backend: str = "auto"
    recv_timeout_s: float = 300.0
    # --- outputs ------------------------------------------------------------------------------------------
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 0
    """Save every K steps (and after the last step) when > 0 and `checkpoint_dir` is set."""
    resume: ResumeMode = "never"
    metrics: Path | None = None
    """One JSON object per step (JSONL)."""
    plot: Path | None = None
    """PNG of loss and step time against steps, written at the end."""
    job_name: str = "helix-train"

    def __post_init__(self) -> None:
        # The executor shards model states once per job: every plan must be for the job's own ZeRO stage, so the
        # planner may not raise it (`PlanOptions.max_zero_stage`).
        if self.options.max_zero_stage != self.options.zero_stage:
            pinned = self.options.model_copy(update={"max_zero_stage": self.options.zero_stage})
            object.__setattr__(self, "options", pinned)

    @property
    def uses_service(self) -> bool:
        return self.planner != LOCAL_PLANNER

    @property
    def deadline_s(self) -> float:
        return self.plan_deadline_s if self.plan_deadline_s is not None else 2 * self.time_limit_s + 10.0
