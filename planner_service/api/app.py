"""`create_app(settings)`: the planner service as a FastAPI app (tests build their own; `helix serve` runs one).

The store and the solve workers are opened in the lifespan and closed on shutdown, so stopping the server
releases the store and a new app can open the same one (restart survival). A store that is damaged is
refused at start-up (`StoreError`, one line naming it).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from planner_service.api.body_limit import BodyLimitMiddleware
from planner_service.api.deps import ServiceState, require_token
from planner_service.api.docs import install_docs
from planner_service.api.errors import install_error_handlers
from planner_service.api.metrics import ServiceMetrics
from planner_service.api.routers import feedback, job_plans, jobs, ops, plans, profiles
from planner_service.api.schemas import CROSS_FIELD_RULES
from planner_service.api.service import SolveService
from planner_service.api.settings import Settings
from planner_service.api.solve_tasks import SolveFn
from planner_service.planner import make_plan
from planner_service.store import PlanStore, Retention

log = logging.getLogger(__name__)

API_DESCRIPTION = """Per-iteration 3D parallel plans for long-context training.

Register a job (`POST /v1/jobs`), then ask for each step's plan (`POST /v1/jobs/{job_id}/plans`), send the
measured step time back (`POST /v1/jobs/{job_id}/feedback`). Every error is `{"code", "message", "field"}`.
With `HELIX_API_TOKEN` set, every `/v1` route needs `Authorization: Bearer <token>`.

Every plan request answers within its solver time limit plus the service's margin (`HELIX_DEADLINE_MARGIN_S`);
a strategy that overruns is abandoned for the greedy plan (`solver.status` = `timeout-fallback`). When the
solve queue is full the answer is 503 `busy` with `Retry-After`.

Integers are written as JSON integers: `5`, not `5.0` or `"5"` (JSON Schema's `integer` admits `5.0`; this API
does not), and booleans as `true`/`false`. Rules the schema cannot state (each violation is a 422
`invalid_input` naming the field):

"""


def open_store(settings: Settings) -> PlanStore:
    """The store the settings name, with their retention policy (raises `StoreError` when it is damaged)."""
    return PlanStore(
        settings.db,
        retention=Retention(keep_last_steps=settings.keep_last_steps, keep_feedback_steps=settings.keep_feedback_plans),
        max_profile_versions=settings.max_profile_versions,
    )


def create_app(
    settings: Settings | None = None,
    *,
    solve_fn: SolveFn = make_plan,
    store_factory: Callable[[Settings], PlanStore] = open_store,
) -> FastAPI:
    """Build the app. `solve_fn` replaces `make_plan` in the workers (picklable; tests hold, count or hang
    solves with it); `store_factory` opens the store (tests make its writes fail or stall)."""
    settings = settings if settings is not None else Settings()
    state = ServiceState(settings=settings, metrics=ServiceMetrics(), solve_fn=solve_fn)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        store = store_factory(settings)
        try:
            service = SolveService(settings=settings, store=store, metrics=state.metrics, solve_fn=solve_fn)
        except BaseException:
            store.close()
            raise
        state.store, state.solve_service = store, service
        log.info("planner service ready (store %s, auth %s)", store.dialect.name, "on" if settings.token else "off")
        try:
            yield
        finally:
            if state.solve_service is service:
                state.store, state.solve_service = None, None
            service.close()
            store.close()

    rules = "\n".join(f"- `{field}`: {rule}" for field, rule in CROSS_FIELD_RULES.items())
    app = FastAPI(
        title="HelixTrain planner",
        version="1.0",
        description=API_DESCRIPTION + rules + "\n",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.helix = state
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.docs:
        install_docs(app)

    # Without a token the routes are open, and the schema declares no security scheme (it says what is enforced).
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)] if settings.token else [])
    for module in (plans, jobs, job_plans, feedback, profiles):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(ops.router)
    return app
