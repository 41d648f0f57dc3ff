"""Rank 0's plan sources: `--planner local` calibrates like the service (a step's measured time refines the
profile of the next plans), and a service plan for another ZeRO stage never reaches the ranks.

Guards against: in-process training planning forever from the preset however far off it measures (feedback was
only ever sent to a service), and calibration from a plan the step did not run.
"""

from __future__ import annotations

from executor.train.plan_source import JobPlanning, LocalPlanSource
from planner_service.presets import CLUSTERS, MODELS
from proto import Batch, Feedback

BATCH = Batch.from_lengths([900, 400, 300, 120, 64, 40])


def source(*, calibrate: bool) -> LocalPlanSource:
    job = JobPlanning(cluster=CLUSTERS["cpu-2x2"], model=MODELS["tiny"], strategy="greedy", num_stages=1)
    return LocalPlanSource(job, calibrate=calibrate)


def test_a_slower_machine_than_predicted_raises_the_next_predictions() -> None:
    calibrated, fixed = source(calibrate=True), source(calibrate=False)
    preset = fixed.plan(0, BATCH).plan.predicted.iteration_s
    for step in range(4):  # every step measures 3x the preset's prediction
        for src in (calibrated, fixed):
            plan = src.plan(step, BATCH).plan
            src.send_feedback(Feedback(step=step, plan_id=plan.plan_id, measured_iteration_s=3 * preset))
    assert fixed.job.profile is None  # without calibration nothing changes
    assert fixed.plan(4, BATCH).plan.predicted.iteration_s == preset
    after = calibrated.plan(4, BATCH).plan.predicted.iteration_s
    assert 2.0 * preset < after < 4.0 * preset, (after, preset)


def test_feedback_for_another_plan_is_ignored() -> None:
    src = source(calibrate=True)
    plan = src.plan(0, BATCH).plan
    src.send_feedback(Feedback(step=0, plan_id="not-" + plan.plan_id, measured_iteration_s=100.0))
    src.send_feedback(Feedback(step=7, plan_id=plan.plan_id, measured_iteration_s=100.0))
    assert src.job.profile is None


def test_a_calibration_failure_never_stops_training() -> None:
    """A report the calibrator cannot use (one memory entry for four ranks) turns calibration off for the run
    with a warning; planning goes on with the profile it had."""
    src = source(calibrate=True)
    plan = src.plan(0, BATCH).plan
    src.send_feedback(Feedback(step=0, plan_id=plan.plan_id, measured_iteration_s=1.0, peak_memory_bytes=[1.0]))
    assert src.calibrator is None and src.job.profile is None
    assert src.plan(1, BATCH).plan.predicted.iteration_s == plan.predicted.iteration_s


class _RaisingService:
    """A stand-in client whose plans are valid for the batch but made for ZeRO-2."""

    def plan_for_step(self, job_id: str, step: int, lengths: list[int], seq_ids: list[int]) -> object:
        from planner_service.planner import make_plan
        from proto import PlanOptions, ZeroStage

        batch = Batch(seq_ids=list(seq_ids), lengths=list(lengths))
        options = PlanOptions(zero_stage=ZeroStage.GRADIENTS)
        return make_plan(batch=batch, cluster=CLUSTERS["cpu-2x2"], model=MODELS["tiny"], options=options, step=step)


def test_a_service_plan_for_another_zero_stage_is_replaced_before_it_runs() -> None:
    """A service that ignores `max_zero_stage` (an older build) must not reach the ranks, which would refuse it
    mid-step: rank 0 plans that step in-process instead and says why."""
    from executor.train.plan_source import ServicePlanSource

    job = source(calibrate=False).job
    service = ServicePlanSource(_RaisingService(), "job_x", job, deadline_s=30.0)  # type: ignore[arg-type]
    try:
        sourced = service.plan(0, BATCH)
    finally:
        service.close()
    assert sourced.origin == "fallback" and "ZeRO-2, the job runs ZeRO-0" in sourced.reason, sourced.reason
    assert sourced.plan.options.zero_stage == job.options.zero_stage


def test_feedback_says_what_the_peak_memory_measured() -> None:
    """CUDA reports the allocator's peak; CPU the probe's saved tensors, which the service compares with the
    prediction without op transients (`Feedback.peak_memory_source`)."""
    from executor.train.trainer import peak_memory_source

    assert peak_memory_source("cuda") == "allocator"
    assert peak_memory_source("cpu") == "saved_tensors"
