"""Operations: liveness, readiness and Prometheus metrics (not under /v1, not authenticated)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from planner_service.api.deps import MetricsDep, StateDep
from planner_service.api.errors import ApiError
from planner_service.api.schemas import Health
from planner_service.strategies.registry import STRATEGIES
from proto import ErrorBody

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the event loop answers (solves run in a worker pool, so this stays fast during long solves)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": ErrorBody}})
async def readyz(state: StateDep) -> Health:
    """Readiness: the store answers (and no query has found it damaged) and the solve workers run."""
    store, service = state.store, state.solve_service
    if store is None or service is None:
        raise ApiError(503, "not_ready", "the service is starting or stopping")
    failure = await service.io(store.failure)
    if failure is not None:
        raise ApiError(503, "not_ready", f"the plan store fails: {failure}")
    return Health(
        status="ready",
        details={
            "strategies": list(STRATEGIES),
            "store": store.dialect.name,
            "workers": service.pool.size,
            "queued": service.admission.queued,
        },
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text format: plan latency, solves, solver statuses, cache hits, measured/predicted ratio."""
    return Response(content=generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
