"""Per-step plans of a job: idempotent per (job, step), coalesced, committed before they are returned."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from planner_service.api.deps import JobDep, SolveServiceDep, StepPath
from planner_service.api.routers._responses import PLAN_RESPONSE, errors, plan_response
from planner_service.api.schemas import StepPlanRequest

router = APIRouter(prefix="/jobs/{job_id}/plans", tags=["job plans"])


@router.post("", response_class=Response, responses={**PLAN_RESPONSE, **errors(404, 409, 410)})
async def plan_step(body: StepPlanRequest, job: JobDep, service: SolveServiceDep, request: Request) -> Response:
    """Plan a step's batch; the same step and batch returns the stored plan, another batch for it is a 409."""
    served, source = await service.plan_for_step(job, body)
    return plan_response(request, served, {"X-Helix-Plan-Source": source})


@router.get("/{step}", response_class=Response, responses={**PLAN_RESPONSE, **errors(404, 410)})
async def read_step_plan(step: StepPath, job: JobDep, service: SolveServiceDep, request: Request) -> Response:
    """The stored plan of a step, byte-identical to what the planning request returned (410 once pruned)."""
    served = await service.read_plan(job, step)
    return plan_response(request, served, {"X-Helix-Plan-Source": "store"})
