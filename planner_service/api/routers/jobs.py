"""Jobs: registration (with the job-level pipeline-degree decision) and status."""

from __future__ import annotations

from fastapi import APIRouter, status

from planner_service.api.deps import JobDep, SolveServiceDep, StoreDep
from planner_service.api.routers._responses import errors
from planner_service.api.schemas import JobCounts, JobCreate, JobPublic, PredictionError
from planner_service.api.service import RegisteredJob, SolveService
from planner_service.store import PlanStore

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic, responses=errors())
async def create_job(body: JobCreate, service: SolveServiceDep, store: StoreDep) -> JobPublic:
    """Register a training job and choose its pipeline degree once (by planning a sample batch for each P),
    within the job's time limit plus the service's margin."""
    job_id = await service.register_job(body)
    return await _job_public(await service.job(job_id), service, store)


@router.get("/{job_id}", response_model=JobPublic, responses=errors(404))
async def read_job(job: JobDep, service: SolveServiceDep, store: StoreDep) -> JobPublic:
    """A job with its decisions, stored counts, the latest measured-vs-predicted error and its calibration (errors
    over the last steps before and after calibration)."""
    return await _job_public(job, service, store)


async def _job_public(job: RegisteredJob, service: SolveService, store: PlanStore) -> JobPublic:
    counts = await service.io(store.job_counts, job.job_id)
    latest = await service.io(store.latest_feedback, job.job_id)
    profile = await service.io(store.latest_profile, job.job_id)
    error = None
    if latest is not None:
        pred = latest.predicted_s
        ratio = latest.measured_s / pred if pred else None
        error = PredictionError(
            step=latest.step,
            plan_id=latest.plan_id,
            measured_s=latest.measured_s,
            predicted_s=pred,
            ratio=ratio,
            relative_error=(ratio - 1.0) if ratio is not None else None,
        )
    spec = job.spec
    return JobPublic(
        job_id=job.job_id,
        created_at=job.created_at,
        cluster=spec.cluster,
        model=spec.model,
        strategy=spec.strategy,
        options=spec.options,
        solver=spec.solver,
        time_limit_s=spec.time_limit_s,
        decisions=job.decisions,
        counts=JobCounts(**counts),
        profile_version=profile[0] if profile else None,
        latest_error=error,
        calibration=service.calibrations.summary(job.job_id),
    )
