"""Dependencies as `Annotated` aliases, so routes stay straight-line: `job: JobDep`, `service: SolveServiceDep`."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from planner_service.api.errors import ApiError
from planner_service.api.inputs import MAX_STEP
from planner_service.api.metrics import ServiceMetrics
from planner_service.api.service import RegisteredJob, SolveService
from planner_service.api.settings import Settings
from planner_service.api.solve_tasks import SolveFn
from planner_service.store import PlanStore


@dataclass
class ServiceState:
    """Everything one app owns. `store`/`solve_service` exist between lifespan startup and shutdown."""

    settings: Settings
    metrics: ServiceMetrics
    solve_fn: SolveFn
    store: PlanStore | None = None
    solve_service: SolveService | None = None


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


def get_solve_service(state: StateDep) -> SolveService:
    if state.solve_service is None:
        raise ApiError(503, "not_ready", "the planner is not running (the service is starting or stopping)")
    return state.solve_service


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
StoreDep = Annotated[PlanStore, Depends(get_store)]
SolveServiceDep = Annotated[SolveService, Depends(get_solve_service)]

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


async def get_job(job_id: JobIdPath, service: SolveServiceDep) -> RegisteredJob:
    return await service.job(job_id)


JobDep = Annotated[RegisteredJob, Depends(get_job)]
