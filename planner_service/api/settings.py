"""Service settings: one pydantic-settings class read from `HELIX_*` environment variables.

Why one class: `helix serve`, tests and the Docker image all configure the service the same way, and
every limit that protects the service (body size, sequence count, solver time and margin, workers, queue,
timeouts, retention) is a named, documented setting rather than a literal in a route.

The size limits are set so that the greedy fallback plan fits in the deadline margin at every size the
service accepts (measured by `bench/service_load.py --phase limits`, see README "Planner service").
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Tokens that look like a placeholder left in a config file; refusing them avoids a "protected" service
# whose password is in every copy of the README.
_PLACEHOLDER_TOKENS = frozenset({"changeme", "change-me", "secret", "token", "password", "helix", "test"})
MIN_TOKEN_CHARS = 8


class Settings(BaseSettings):
    """Configuration of one planner service process (env prefix `HELIX_`, e.g. `HELIX_API_TOKEN`)."""

    model_config = SettingsConfigDict(env_prefix="HELIX_", extra="ignore", frozen=True)

    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token every /v1 route requires; unset means no auth (loopback use only).",
    )
    db: str = Field(
        default="helix-planner.db",
        description="The store: a SQLite file path, or a postgresql:// URL shared by several service processes.",
    )
    solver_time_limit_s: float = Field(
        default=2.0, gt=0, le=60, description="Default and maximum solver time limit per plan (requests are capped)."
    )
    deadline_margin_s: float = Field(
        default=2.0,
        ge=0.5,
        le=60,
        description="Time added to a request's solver limit to abandon an overrunning solver, fall back to the "
        "greedy plan and store it: every plan request answers within limit + margin.",
    )
    max_concurrent_solves: int = Field(
        default=2, ge=1, le=256, description="Solve worker processes; each runs one solve at a time."
    )
    max_queued_solves: int = Field(
        default=8, ge=0, le=4096, description="Solves that may wait for a worker; beyond, 503 busy with Retry-After."
    )
    max_queued_per_job: int = Field(
        default=4, ge=1, le=4096, description="Solves one job may have waiting (fairness: one job cannot fill it)."
    )
    solve_worker_max_tasks: int = Field(
        default=100, ge=1, description="A worker process is replaced after this many solves (bounds its memory)."
    )
    claim_poll_s: float = Field(
        default=0.05, gt=0, le=5, description="How often a request polls the store for a step another process solves."
    )
    max_body_bytes: int = Field(default=4 * 2**20, ge=1024, description="Largest request body accepted (413 above).")
    max_sequences: int = Field(
        default=2048, ge=1, le=65536, description="Most sequences in one batch or sample (422 above)."
    )
    max_devices: int = Field(
        default=1024,
        ge=1,
        le=65536,
        description="Largest cluster (num_nodes x devices_per_node) a request may describe.",
    )
    max_sequence_stages: int = Field(
        default=4096,
        ge=1,
        description="Most sequences x pipeline degree of one plan: the greedy plan's work grows with both.",
    )
    default_sample_size: int = Field(
        default=64, ge=1, le=4096, description="Sequences in the synthetic sample a job without sample_lengths uses."
    )
    default_sample_dataset: str = Field(
        default="github", description="Synthetic corpus of that sample (see planner_service.workloads)."
    )
    profile: Path | None = Field(
        default=None,
        description="A cost profile for jobs and stateless requests that bring none (`helix serve --profile`): a "
        "`helix profile` document applies to the cluster and model it was measured for, a bare CostProfile to all.",
    )
    calibrate: bool = Field(default=True, description="Refine each job's profile online from its step feedback.")
    calibration_window: int = Field(default=32, ge=1, le=4096, description="Most recent steps calibration fits.")
    calibrate_op_overhead: bool = Field(
        default=True,
        description="Calibration also fits the fixed overhead per pipeline op (CostProfile.op_overhead_s).",
    )
    calibrate_lane_widths: bool = Field(
        default=True, description="Calibration also refines the compute scale of each SP degree the profile measured."
    )
    keep_last_steps: int | None = Field(
        default=1024, ge=1, description="Plans kept per job (the most recent steps); older ones answer 410 gone."
    )
    keep_feedback_plans: bool = Field(default=True, description="Also keep every plan whose step has feedback.")
    max_profile_versions: int = Field(
        default=32, ge=1, le=4096, description="Profile versions kept per job (the oldest are dropped)."
    )
    docs: bool = Field(default=True, description="Serve /docs and /redoc (assets bundled, no CDN); false hides them.")
    header_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="A request's headers must arrive within this (else the connection "
        "is closed)."
    )  # fmt: skip
    body_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="A request's body must arrive within this after its headers."
    )
    keep_alive_s: int = Field(default=5, ge=1, le=300, description="Idle keep-alive connections are closed after this.")
    max_connections: int = Field(
        default=512, ge=1, description="Open connections and requests at once; beyond, uvicorn answers 503."
    )
    max_header_bytes: int = Field(
        default=16384, ge=1024, le=1048576, description="Largest request head (request line and headers)."
    )

    @field_validator("db", mode="before")
    @classmethod
    def _path_to_text(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value

    @field_validator("api_token", mode="before")
    @classmethod
    def _refuse_weak_token(cls, value: object) -> object:
        """An empty token means "no auth"; a short, blank-padded or placeholder token is refused at startup."""
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or raw == "":
            return None
        if not isinstance(raw, str):
            return value
        if raw != raw.strip() or any(c.isspace() for c in raw):
            raise ValueError("HELIX_API_TOKEN must not contain spaces or other whitespace; generate one with "
                             "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")  # fmt: skip
        if len(raw) < MIN_TOKEN_CHARS or raw.lower() in _PLACEHOLDER_TOKENS:
            raise ValueError(
                f"HELIX_API_TOKEN must be at least {MIN_TOKEN_CHARS} characters and not a placeholder; "
                "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return raw

    @property
    def token(self) -> str | None:
        """The token in clear, or None when auth is off."""
        return self.api_token.get_secret_value() if self.api_token is not None else None
