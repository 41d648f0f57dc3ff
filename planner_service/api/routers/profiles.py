"""Cost profiles per job: measured coefficients replace the preset's for the job's later plans."""

from __future__ import annotations

from fastapi import APIRouter

from planner_service.api.deps import JobDep, SolveServiceDep, StoreDep
from planner_service.api.routers._responses import errors
from planner_service.api.schemas import ProfileAccepted
from proto import CostProfile

router = APIRouter(prefix="/jobs/{job_id}/profile", tags=["profiles"])


@router.put("", response_model=ProfileAccepted, responses=errors(404))
async def put_profile(body: CostProfile, job: JobDep, service: SolveServiceDep, store: StoreDep) -> ProfileAccepted:
    """Set the cost profile used for this job's plans from now on (plans already stored are unchanged); online
    calibration restarts from it. The job keeps its newest HELIX_MAX_PROFILE_VERSIONS versions. `sp_degree_costs`
    must list strictly increasing `sp_degree` values (a rule the JSON Schema cannot state)."""
    version = await service.io(store.put_profile, job.job_id, body.model_dump(mode="json"))
    service.calibrations.reset(job.job_id)  # online calibration starts again from this profile
    return ProfileAccepted(job_id=job.job_id, version=version)
