"""Step feedback: measured iteration time and peak memory, compared with the plan's prediction."""

from __future__ import annotations

from fastapi import APIRouter

from planner_service.api.deps import JobDep, MetricsDep, SolveServiceDep, StoreDep
from planner_service.api.errors import ApiError
from planner_service.api.routers._responses import errors
from planner_service.api.schemas import FeedbackAccepted
from proto import Feedback

router = APIRouter(prefix="/jobs/{job_id}/feedback", tags=["feedback"])


@router.post("", response_model=FeedbackAccepted, responses=errors(404, 409))
async def post_feedback(
    body: Feedback, job: JobDep, service: SolveServiceDep, store: StoreDep, metrics: MetricsDep
) -> FeedbackAccepted:
    """Record a step's measured time (a retry replaces the earlier report); it refines the job's profile (online
    calibration), which the job's later plans use."""
    if body.peak_memory_bytes and len(body.peak_memory_bytes) != job.spec.cluster.num_devices:
        raise ApiError(
            422, "invalid_input", f"peak_memory_bytes has {len(body.peak_memory_bytes)} entries for "
            f"{job.spec.cluster.num_devices} ranks", field="peak_memory_bytes",
        )  # fmt: skip
    stored = await service.io(store.get_plan, job.job_id, body.step)
    predicted = None
    if stored is not None:
        if stored.plan_id != body.plan_id:
            raise ApiError(
                409, "conflict", f"step {body.step} of job {job.job_id} ran plan {stored.plan_id}, not "
                f"{body.plan_id}", field="plan_id",
            )  # fmt: skip
        predicted = stored.predicted_s
    await service.io(
        store.put_feedback,
        job.job_id,
        body.step,
        body.plan_id,
        body.measured_iteration_s,
        predicted,
        body.model_dump(mode="json"),
    )
    ratio = body.measured_iteration_s / predicted if predicted else None
    if ratio is not None:
        metrics.predicted_ratio.observe(ratio)
        metrics.last_ratio.set(ratio)
    if stored is not None:
        spec = job.spec
        await service.calibrations.observe(
            job_id=job.job_id,
            cluster=spec.cluster,
            model=spec.model,
            options=spec.options,
            plan_json=stored.plan_json,
            feedback=body,
        )
    return FeedbackAccepted(job_id=job.job_id, step=body.step, ratio=ratio)
