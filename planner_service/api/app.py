"""`create_app(settings)`: the planner service as a FastAPI app (tests build their own; `helix serve` runs one).

The store and the solve pool are opened in the lifespan and closed on shutdown, so stopping the server
releases the SQLite file and a new app can open the same file (restart survival).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from planner_service.api.body_limit import BodyLimitMiddleware
from planner_service.api.deps import ServiceState, require_token
from planner_service.api.errors import install_error_handlers
from planner_service.api.metrics import ServiceMetrics
from planner_service.api.routers import feedback, job_plans, jobs, ops, plans, profiles
from planner_service.api.service import SolveFn, SolveService
from planner_service.api.settings import Settings
from planner_service.planner import make_plan
from planner_service.store import PlanStore

log = logging.getLogger(__name__)

API_DESCRIPTION = """Per-iteration 3D parallel plans for long-context training.

Register a job (`POST /v1/jobs`), then ask for each step's plan (`POST /v1/jobs/{job_id}/plans`), send the
measured step time back (`POST /v1/jobs/{job_id}/feedback`). Every error is `{"code", "message", "field"}`.
With `HELIX_API_TOKEN` set, every `/v1` route needs `Authorization: Bearer <token>`.
"""


def create_app(settings: Settings | None = None, *, solve_fn: SolveFn = make_plan) -> FastAPI:
    """Build the app. `solve_fn` replaces `make_plan` (tests count or hold solves with it)."""
    settings = settings if settings is not None else Settings()
    state = ServiceState(settings=settings, metrics=ServiceMetrics(), solve_fn=solve_fn)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        store = PlanStore(settings.db)
        service = SolveService(settings=settings, store=store, metrics=state.metrics, solve_fn=solve_fn)
        state.store, state.solve_service = store, service
        log.info("planner service ready (db %s, auth %s)", settings.db, "on" if settings.token else "off")
        try:
            yield
        finally:
            if state.solve_service is service:
                state.store, state.solve_service = None, None
            service.close()
            store.close()

    app = FastAPI(
        title="HelixTrain planner",
        version="1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.helix = state
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])
    for module in (plans, jobs, job_plans, feedback, profiles):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(ops.router)
    return app
