"""Service settings: one pydantic-settings class read from `HELIX_*` environment variables.

Why one class: `helix serve`, tests and the Docker image all configure the service the same way, and
every limit that protects the service (body size, sequence count, solver time, concurrent solves) is a
named, documented setting rather than a literal in a route.
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
    db: Path = Field(default=Path("helix-planner.db"), description="SQLite file of jobs, plans, feedback, profiles.")
    solver_time_limit_s: float = Field(
        default=2.0, gt=0, le=600, description="Default and maximum solver time limit per plan (requests are capped)."
    )
    max_concurrent_solves: int = Field(
        default=2, ge=1, le=256, description="Solves running at once in the worker pool; more requests queue."
    )
    max_body_bytes: int = Field(default=4 * 2**20, ge=1024, description="Largest request body accepted (413 above).")
    max_sequences: int = Field(default=16384, ge=1, description="Most sequences in one batch or sample (422 above).")
    max_devices: int = Field(
        default=4096, ge=1, description="Largest cluster (num_nodes x devices_per_node) a request may describe."
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

    @field_validator("api_token", mode="before")
    @classmethod
    def _refuse_weak_token(cls, value: object) -> object:
        """An empty token means "no auth"; a short or placeholder token is refused at startup."""
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or raw == "":
            return None
        if not isinstance(raw, str):
            return value
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
