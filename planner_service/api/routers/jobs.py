"""Jobs: registration (with the job-level pipeline-degree decision) and status."""

from __future__ import annotations

from fastapi import APIRouter, status

from planner_service.api.deps import JobDep, PlannerDep, StoreDep
from planner_service.api.routers._responses import errors
from planner_service.api.schemas import JobCounts, JobCreate, JobDecisions, JobPublic, PredictionError

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic, responses=errors())
async def create_job(body: JobCreate, planner: PlannerDep, store: StoreDep) -> JobPublic:
    """Register a training job and choose its pipeline degree once (by planning a sample batch for each P)."""
    job_id = await planner.register_job(body)
    return await _job_public(job_id, planner, store)


@router.get("/{job_id}", response_model=JobPublic, responses=errors(404))
async def read_job(job: JobDep, planner: PlannerDep, store: StoreDep) -> JobPublic:
    """A job with its decisions, stored counts and the latest measured-vs-predicted error."""
    return await _job_public(job.job_id, planner, store)


async def _job_public(job_id: str, planner: PlannerDep, store: StoreDep) -> JobPublic:
    record = await planner.io(store.get_job, job_id)
    assert record is not None, f"job {job_id} vanished from the store"
    counts = await planner.io(store.job_counts, job_id)
    latest = await planner.io(store.latest_feedback, job_id)
    profile = await planner.io(store.latest_profile, job_id)
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
    spec = record.spec
    return JobPublic(
        job_id=job_id,
        created_at=record.created_at,
        cluster=spec["cluster"],
        model=spec["model"],
        strategy=spec["strategy"],
        options=spec["options"],
        solver=spec["solver"],
        time_limit_s=spec["time_limit_s"],
        decisions=JobDecisions.model_validate(record.decisions),
        counts=JobCounts(**counts),
        profile_version=profile[0] if profile else None,
        latest_error=error,
    )
