"""Per-step plans of a job: idempotent per (job, step), coalesced, committed before they are returned."""

from __future__ import annotations

from fastapi import APIRouter, Response

from planner_service.api.deps import JobDep, SolveServiceDep, StepPath, StoreDep
from planner_service.api.errors import ApiError
from planner_service.api.routers._responses import PLAN_RESPONSE, errors
from planner_service.api.schemas import StepPlanRequest

router = APIRouter(prefix="/jobs/{job_id}/plans", tags=["job plans"])


@router.post("", response_class=Response, responses={**PLAN_RESPONSE, **errors(404, 409)})
async def plan_step(body: StepPlanRequest, job: JobDep, service: SolveServiceDep) -> Response:
    """Plan a step's batch; the same step and batch returns the stored plan, another batch for it is a 409."""
    data, source = await service.plan_for_step(job, body)
    return Response(content=data, media_type="application/json", headers={"X-Helix-Plan-Source": source})


@router.get("/{step}", response_class=Response, responses={**PLAN_RESPONSE, **errors(404)})
async def read_step_plan(step: StepPath, job: JobDep, service: SolveServiceDep, store: StoreDep) -> Response:
    """The stored plan of a step, byte-identical to what the planning request returned."""
    record = await service.io(store.get_plan, job.job_id, step)
    if record is None:
        raise ApiError(404, "not_found", f"job {job.job_id} has no plan for step {step}", field="step")
    return Response(content=record.plan_json, media_type="application/json", headers={"X-Helix-Plan-Source": "store"})
