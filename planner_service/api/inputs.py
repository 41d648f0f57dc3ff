"""Input checks of the planner service: preset resolution, finiteness, limits, and the job spec they yield.

Why here and not in pydantic models: the limits are settings of this service process (`HELIX_MAX_*`), and
preset names resolve against this build's registries. Every failure is an `ApiError` 422 `invalid_input`
naming the field, raised before any solve is queued.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

from planner_service.api.errors import ApiError
from planner_service.api.schemas import JobCreate, JobSpec
from planner_service.api.settings import Settings
from planner_service.presets import CLUSTERS, MODELS
from planner_service.strategies.registry import STRATEGIES
from proto import ClusterSpec, ModelSpec, PlanRequest

T = TypeVar("T")
MAX_STEP = 2**62  # SQLite INTEGER is 64-bit signed


def preset(presets: Mapping[str, T], name: str, *, kind: str, spec: str, field: str) -> T:
    """A named preset of `presets`, or a 422 listing the names (and the full `spec` object as the alternative)."""
    if name not in presets:
        raise ApiError(
            422, "invalid_input", f"unknown {kind} preset {name!r}; choose one of: {', '.join(sorted(presets))}"
            f" or send a full {spec} object", field=field,
        )  # fmt: skip
    return presets[name]


def resolve_cluster_arg(value: ClusterSpec | str, settings: Settings, field: str = "cluster") -> ClusterSpec:
    """A preset name or a full spec. File paths are not accepted over HTTP (the server's files are not input)."""
    if isinstance(value, str):
        value = preset(CLUSTERS, value, kind="cluster", spec="ClusterSpec", field=field)
    if value.num_devices > settings.max_devices:
        raise ApiError(
            422, "invalid_input", f"the cluster has {value.num_devices} devices; this service plans at most "
            f"{settings.max_devices} (HELIX_MAX_DEVICES)", field=field,
        )  # fmt: skip
    return value


def resolve_model_arg(value: ModelSpec | str, field: str = "model") -> ModelSpec:
    if isinstance(value, str):
        return preset(MODELS, value, kind="model", spec="ModelSpec", field=field)
    return value


def check_strategy(name: str, field: str = "strategy") -> None:
    """Strategies come from the registry at request time, so new ones are served without a code change."""
    if name not in STRATEGIES:
        raise ApiError(
            422, "invalid_input", f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}", field=field
        )


def check_sequence_count(count: int, settings: Settings, field: str) -> None:
    if count > settings.max_sequences:
        raise ApiError(
            422, "invalid_input", f"{count} sequences exceed this service's limit of {settings.max_sequences} "
            "(HELIX_MAX_SEQUENCES)", field=field,
        )  # fmt: skip


def check_step(step: int) -> None:
    if step > MAX_STEP:
        raise ApiError(422, "invalid_input", f"step must be at most {MAX_STEP}", field="step")


def check_finite(value: Any, field: str) -> None:
    """Reject NaN/Infinity anywhere in a request (Python's JSON parser accepts `1e999` and `NaN`)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ApiError(422, "invalid_input", f"{field}: must be a finite number, got {value}", field=field)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{field}.{key}" if field else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_finite(item, f"{field}[{i}]")


def capped_time_limit(requested: float | None, settings: Settings) -> float:
    """The request's solver time limit, at most the service's (the service's when none is asked)."""
    cap = settings.solver_time_limit_s
    return cap if requested is None else min(requested, cap)


def job_spec_of(req: JobCreate | PlanRequest, settings: Settings) -> JobSpec:
    """Check what every solve request shares (finite numbers, presets, strategy) and resolve it into a spec."""
    check_finite(req.model_dump(mode="python"), "")
    cluster = resolve_cluster_arg(req.cluster, settings)
    model = resolve_model_arg(req.model)
    check_strategy(req.strategy)
    return JobSpec(
        cluster=cluster,
        model=model,
        strategy=req.strategy,
        options=req.options,
        solver=req.solver,
        time_limit_s=capped_time_limit(req.time_limit_s, settings),
    )
