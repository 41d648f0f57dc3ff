"""Input checks of the planner service that depend on its settings: preset resolution, size limits, and the
job spec they yield.

Why here and not in pydantic models: the limits are settings of this service process (`HELIX_MAX_*`), and
preset names resolve against this build's registries. Types, bounds and enums are in the request models
(`schemas.py`, `proto`). Every failure is an `ApiError` 422 `invalid_input` naming the field, raised before
any solve is queued; each rule is listed in `schemas.CROSS_FIELD_RULES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from planner_service.api.errors import ApiError
from planner_service.api.schemas import JobCreate, JobSpec, PlanCreate
from planner_service.api.settings import Settings
from planner_service.presets import CLUSTERS, MODELS
from proto import ClusterSpec, ModelSpec
from proto.wire_types import MAX_STEP

T = TypeVar("T")
__all__ = ["MAX_STEP", "capped_time_limit", "check_sequence_count", "check_sequence_stages", "job_spec_of"]


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


def check_sequence_count(count: int, settings: Settings, field: str) -> None:
    if count > settings.max_sequences:
        raise ApiError(
            422, "invalid_input", f"{count} sequences exceed this service's limit of {settings.max_sequences} "
            "(HELIX_MAX_SEQUENCES)", field=field,
        )  # fmt: skip


def check_sequence_stages(count: int, num_stages: int, settings: Settings, field: str) -> None:
    """The greedy fallback's work grows with sequences x pipeline degree; the service bounds the product."""
    if count * num_stages > settings.max_sequence_stages:
        raise ApiError(
            422, "invalid_input", f"{count} sequences at pipeline degree {num_stages} exceed this service's limit "
            f"of {settings.max_sequence_stages} sequences x stages (HELIX_MAX_SEQUENCE_STAGES); plan smaller "
            "batches", field=field,
        )  # fmt: skip


def capped_time_limit(requested: float | None, settings: Settings) -> float:
    """The request's solver time limit, at most the service's (the service's when none is asked)."""
    cap = settings.solver_time_limit_s
    return cap if requested is None else min(requested, cap)


def job_spec_of(req: JobCreate | PlanCreate, settings: Settings) -> JobSpec:
    """Resolve presets and apply the service's limits to what every solve request shares."""
    return JobSpec(
        cluster=resolve_cluster_arg(req.cluster, settings),
        model=resolve_model_arg(req.model),
        strategy=req.strategy,
        options=req.options,
        solver=req.solver,
        time_limit_s=capped_time_limit(req.time_limit_s, settings),
    )
