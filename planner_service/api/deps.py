"""Dependencies as `Annotated` aliases, so routes stay straight-line: `job: JobDep`, `planner: PlannerDep`."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from planner_service.api.errors import ApiError
from planner_service.api.metrics import ServiceMetrics
from planner_service.api.planning import MAX_STEP, JobContext, PlanFn, PlanningService
from planner_service.api.settings import Settings
from planner_service.store import PlanStore


@dataclass
class ServiceState:
    """Everything one app owns. `store`/`planner` exist between lifespan startup and shutdown."""

    settings: Settings
    metrics: ServiceMetrics
    plan_fn: PlanFn
    store: PlanStore | None = None
    planner: PlanningService | None = None
    extra: dict[str, object] = field(default_factory=dict)


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.helix
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


def get_metrics(state: StateDep) -> ServiceMetrics:
    return state.metrics


def get_store(state: StateDep) -> PlanStore:
    if state.store is None:
        raise ApiError(503, "not_ready", "the plan store is not open (the service is starting or stopping)")
    return state.store


def get_planner(state: StateDep) -> PlanningService:
    if state.planner is None:
        raise ApiError(503, "not_ready", "the planner is not running (the service is starting or stopping)")
    return state.planner


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
StoreDep = Annotated[PlanStore, Depends(get_store)]
PlannerDep = Annotated[PlanningService, Depends(get_planner)]

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <HELIX_API_TOKEN>` when a token is set.")


def require_token(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Every /v1 route: with a token configured, the caller must present it (constant-time comparison)."""
    token = settings.token
    if token is None:
        return
    if credentials is None:
        raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer <token>' header", field="Authorization")
    if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
        raise ApiError(401, "unauthorized", "the bearer token is not valid", field="Authorization")


JobIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$", description="Job id.")]
StepPath = Annotated[int, Path(ge=0, le=MAX_STEP, description="Training step.")]


async def get_job(job_id: JobIdPath, planner: PlannerDep) -> JobContext:
    return await planner.job(job_id)


JobDep = Annotated[JobContext, Depends(get_job)]
