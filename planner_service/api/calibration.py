"""The service's online calibration: one `Calibrator` per job, fed by step feedback, storing refined profiles.

Flow: `POST /v1/jobs/{id}/feedback` for a stored plan -> `observe` re-simulates the plan at the job's current
calibration (off the event loop) and refits; when the refined profile moved by more than `min_change` from the
last stored one it is stored as the job's next profile version, which every later plan of the job is made with
(`SolveService._plan_step` reads the latest version). `PUT /v1/jobs/{id}/profile` restarts calibration from the
new profile. Observations run on the calibration's own threads (`CALIBRATION_THREADS`), never in the loop's
default executor: a burst of feedback from many jobs would otherwise queue the store calls that every served
plan waits for. The calibrators live in memory: after a restart calibration resumes from the latest stored profile
(the last refinement), with an empty window.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from planner_service.api.metrics import ServiceMetrics
from planner_service.calibration.calibrator import CalibrationSettings, Calibrator
from planner_service.calibration.summary import CalibrationSummary
from planner_service.store import PlanStore
from proto import ClusterSpec, CostProfile, Feedback, ModelSpec, Plan, PlanOptions

CALIBRATION_THREADS = 1
"""Threads that run observations (re-simulations and fits, CPU-bound Python that shares the GIL with the event
loop): one, so feedback bursts queue here rather than taking the process's CPU from serving plans."""
OP_OVERHEAD_CHANGE_UNIT_S = 1e-3
"""The op overhead (an additive coefficient, no ratio) counts as moved by `min_change` per this many seconds."""
MIN_PROFILE_CHANGE = 0.02
"""A refined profile is stored when a group scale moved by more than this fraction since the last stored one:
fewer profile versions than feedback reports, and every one that changes plans by more than noise."""


@dataclass
class _JobCalibration:
    calibrator: Calibrator
    generation: int
    stored_scales: dict[str, float]
    stored_version: int | None = None


class JobCalibrations:
    """Per-job calibrators of one service process (thread-safe: observations run in worker threads)."""

    def __init__(
        self,
        *,
        store: PlanStore,
        metrics: ServiceMetrics,
        settings: CalibrationSettings | None = None,
        enabled: bool = True,
        min_change: float = MIN_PROFILE_CHANGE,
    ) -> None:
        self.store, self.metrics, self.enabled, self.min_change = store, metrics, enabled, min_change
        self.settings = settings or CalibrationSettings()
        self._jobs: dict[str, _JobCalibration] = {}
        self._generations: dict[str, int] = {}
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(max_workers=CALIBRATION_THREADS, thread_name_prefix="helix-calibration")

    def close(self) -> None:
        """Stop taking observations; those queued are dropped (feedback is stored, a restart resumes)."""
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def observe(
        self, *, job_id: str, cluster: ClusterSpec, model: ModelSpec, options: PlanOptions, plan_json: bytes,
        feedback: Feedback,
    ) -> None:  # fmt: skip
        """Refine the job's profile with one step's feedback (no-op when calibration is off)."""
        if not self.enabled:
            return
        work = functools.partial(self._observe_sync, job_id, cluster, model, options, plan_json, feedback)
        await asyncio.get_running_loop().run_in_executor(self._threads, work)

    def reset(self, job_id: str) -> None:
        """A new profile was PUT: the next feedback starts calibrating from it."""
        with self._lock:
            self._jobs.pop(job_id, None)
            self._generations[job_id] = self._generations.get(job_id, 0) + 1

    def summary(self, job_id: str) -> CalibrationSummary | None:
        with self._lock:
            entry = self._jobs.get(job_id)
        if entry is None:
            return None
        return entry.calibrator.summary(profile_version=entry.stored_version)

    # --- internals -----------------------------------------------------------------------------------------------

    def _entry(self, job_id: str, cluster: ClusterSpec, model: ModelSpec, options: PlanOptions) -> _JobCalibration:
        with self._lock:
            entry = self._jobs.get(job_id)
            generation = self._generations.get(job_id, 0)
        if entry is not None:
            return entry
        latest = self.store.latest_profile(job_id)
        base = CostProfile.model_validate(latest[1]) if latest else None
        calibrator = Calibrator(cluster=cluster, model=model, base=base, options=options, settings=self.settings)
        fresh = _JobCalibration(calibrator, generation, _moving_values(calibrator))
        with self._lock:
            if self._generations.get(job_id, 0) != generation:
                return fresh  # a PUT raced this creation: use it once, keep nothing
            return self._jobs.setdefault(job_id, fresh)

    def _observe_sync(
        self,
        job_id: str,
        cluster: ClusterSpec,
        model: ModelSpec,
        options: PlanOptions,
        plan_json: bytes,
        feedback: Feedback,
    ) -> None:
        entry = self._entry(job_id, cluster, model, options)
        plan = Plan.model_validate_json(plan_json)
        profile = entry.calibrator.observe(plan, feedback)
        self.metrics.calibration_observations.inc()
        self._export_errors(entry)
        scales = _moving_values(entry.calibrator)
        moved = max(
            abs(value - entry.stored_scales.get(key, 0.0)) / OP_OVERHEAD_CHANGE_UNIT_S
            if key == "op_overhead_s"
            else abs(value / entry.stored_scales.get(key, 1.0) - 1.0)
            for key, value in scales.items()
        )
        if moved <= self.min_change:
            return
        with self._lock:
            if self._generations.get(job_id, 0) != entry.generation:
                return  # the user PUT another profile meanwhile: theirs wins
            entry.stored_version = self.store.put_profile(job_id, profile.model_dump(mode="json"))
            entry.stored_scales = scales
        self.metrics.calibrated_profiles.inc()

    def _export_errors(self, entry: _JobCalibration) -> None:
        summary = entry.calibrator.summary()
        for label, value in (
            ("base", summary.step_time_mape_base),
            ("calibrated", summary.step_time_mape_calibrated),
            ("planned", summary.step_time_mape_planned),
        ):
            if value is not None:
                self.metrics.step_time_mape.labels(profile=label).set(value)
        if summary.recent:
            last = summary.recent[-1]
            for label, predicted in (("base", last.base_s), ("calibrated", last.calibrated_s)):
                self.metrics.prediction_error.labels(profile=label).observe(abs(predicted / last.measured_s - 1.0))


def _moving_values(calibrator: Calibrator) -> dict[str, float]:
    """What a stored profile is compared on: the group scales, each width's compute scale, the op overhead."""
    widths = {f"SP-{s} compute": v for s, v in calibrator.lane_width_scales.items()}
    return {**calibrator.scales, **widths, "op_overhead_s": calibrator.op_overhead_s}
