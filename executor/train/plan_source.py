"""Where each step's plan comes from, on the job's coordinating rank (rank 0): the service, or in-process.

Service path: the plan of step t+1 is requested in the background while step t trains (`prefetch`), so
planning is off the critical path. When the service is unreachable, slower than the deadline, or returns
something that does not validate, the step is planned in-process with the job's strategy (the planner
itself falls back to greedy when a strategy fails), the reason is logged and counted, and the next step
asks the service again. Only this rank plans; the others receive the plan by broadcast (time-limited
solvers on several ranks could return different plans).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Literal, Protocol

from proto import Batch, ClusterSpec, CostProfile, Feedback, ModelSpec, PipelineSpec, Plan, PlanOptions, validate_plan
from proto.validation import PlanValidationError

if TYPE_CHECKING:  # the planner library is imported where it is used: the executor loads without it
    from planner_service.api.schemas import JobPublic
    from planner_service.calibration.calibrator import Calibrator
    from planner_service.client import PlannerClient

log = logging.getLogger(__name__)

PlanOrigin = Literal["service", "fallback", "local"]


@dataclass(frozen=True, kw_only=True, slots=True)
class JobRequest:
    """A job before its P is known (`num_stages` None: the planner chooses it from a sample)."""

    cluster: ClusterSpec
    model: ModelSpec
    strategy: str
    options: PlanOptions = field(default_factory=PlanOptions)
    solver: str = "cpsat"
    time_limit_s: float = 2.0
    num_stages: int | None = None
    profile: CostProfile | None = None
    layer_ranges: tuple[tuple[int, int], ...] | None = None
    """The layer split at `num_stages` when the job fixes it (a resumed job's). None: chosen with P (the planner
    picks both from a sample), or, when the job gives only P, the even split (`with_stages`)."""

    def with_stages(self, num_stages: int, layer_ranges: Sequence[Sequence[int]] | None = None) -> JobPlanning:
        """The job with its P and layer split chosen (default: the request's split, else the even split)."""
        settings = {f.name: getattr(self, f.name) for f in fields(JobRequest)}
        ranges = layer_ranges if layer_ranges is not None else self.layer_ranges
        split = (
            PipelineSpec(num_stages=num_stages, layer_ranges=[(int(a), int(b)) for a, b in ranges])
            if ranges is not None
            else PipelineSpec.even(self.model.num_layers, num_stages)
        )
        return JobPlanning(**{**settings, "num_stages": num_stages, "layer_ranges": tuple(split.layer_ranges)})


@dataclass(frozen=True, kw_only=True, slots=True)
class JobPlanning(JobRequest):
    """What every plan of the job is made with: the request with its P and layer split chosen (once per job;
    the executors build their stage modules from the split)."""

    num_stages: int  # type: ignore[assignment]  # required here: P is known

    def __post_init__(self) -> None:
        if self.layer_ranges is None:  # only P given: the even split, never the planner's choice
            even = PipelineSpec.even(self.model.num_layers, self.num_stages)
            object.__setattr__(self, "layer_ranges", tuple(even.layer_ranges))

    @property
    def pipeline(self) -> PipelineSpec:
        """The layer split the job's executors build (the even one when only P was given)."""
        ranges = self.layer_ranges or ()
        return PipelineSpec(num_stages=self.num_stages, layer_ranges=list(ranges))


@dataclass(frozen=True, slots=True)
class SourcedPlan:
    plan: Plan
    origin: PlanOrigin
    reason: str = ""
    """Why a fallback was used ('' otherwise)."""
    wait_s: float = 0.0
    """Seconds the training loop waited for this plan (0 when the prefetch had finished)."""


class PlanSource(Protocol):
    """Rank 0's supplier of plans: `prefetch` may start work early, `plan` returns the step's plan."""

    fallbacks: int

    def prefetch(self, step: int, batch: Batch) -> None: ...

    def plan(self, step: int, batch: Batch) -> SourcedPlan: ...

    def send_feedback(self, feedback: Feedback) -> None: ...

    def close(self) -> None: ...


def plan_in_process(job: JobRequest, step: int, batch: Batch, *, job_id: str | None = None) -> Plan:
    """The job's strategy at the job's P and layer split, planned here (the planner returns greedy if the strategy
    fails); a request whose split is not fixed lets the planner choose it."""
    from planner_service.planner import make_plan

    return make_plan(
        batch=batch,
        cluster=job.cluster,
        model=job.model,
        strategy=job.strategy,
        options=job.options,
        profile=job.profile,
        time_limit_s=job.time_limit_s,
        solver=job.solver,
        num_stages=job.num_stages,
        layer_ranges=list(job.layer_ranges) if job.layer_ranges is not None else None,
        step=step,
        job_id=job_id,
    )


class LocalPlanSource:
    """`--planner local`: every plan made in-process. With `calibrate`, each step's measurement refines the
    profile later plans are made with, as the service's online calibration does (`Calibrator`)."""

    def __init__(self, job: JobPlanning, *, calibrate: bool = True) -> None:
        self.job = job
        self.fallbacks = 0
        self._last_plan: Plan | None = None
        self._calibrator: Calibrator | None = None
        if calibrate:
            from planner_service.calibration.calibrator import Calibrator

            self._calibrator = Calibrator(cluster=job.cluster, model=job.model, base=job.profile, options=job.options)

    def prefetch(self, step: int, batch: Batch) -> None:
        """Nothing to prefetch: planning in-process happens when the step asks."""

    def plan(self, step: int, batch: Batch) -> SourcedPlan:
        began = time.perf_counter()
        plan = plan_in_process(self.job, step, batch)
        self._last_plan = plan  # feedback comes for the step just run
        return SourcedPlan(plan, "local", wait_s=time.perf_counter() - began)

    def send_feedback(self, feedback: Feedback) -> None:
        """Refine the profile of the next plans from this step's measurement (no-op without calibration)."""
        plan, self._last_plan = self._last_plan, None
        if self._calibrator is None or plan is None or plan.plan_id != feedback.plan_id:
            return
        try:
            profile = self._calibrator.observe(plan, feedback)
        except Exception as exc:  # calibration must never stop training: keep planning with the last profile
            log.warning("step %d: calibration stopped (%s: %s); the profile stays as it is", feedback.step,
                        type(exc).__name__, exc)  # fmt: skip
            self._calibrator = None
            return
        self.job = replace(self.job, profile=profile)

    @property
    def calibrator(self) -> Calibrator | None:
        return self._calibrator

    def close(self) -> None:
        pass


class ServicePlanSource:
    """Plans from the planner service for a registered job, prefetched one step ahead, with local fallback.

    `job_id` None means the service could not be reached when the job started: the job (with its already
    chosen P) is registered by the first fetch that reaches the service.
    """

    def __init__(self, client: PlannerClient, job_id: str | None, job: JobPlanning, *, deadline_s: float) -> None:
        self.client, self.job_id, self.job, self.deadline_s = client, job_id, job, deadline_s
        self.fallbacks = 0
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="helix-plan")
        self._pending: dict[int, tuple[str, Future[Plan]]] = {}
        self._lock = threading.Lock()

    def prefetch(self, step: int, batch: Batch) -> None:
        """Ask the service for `step`'s plan in the background (a repeated call for the same step is free)."""
        with self._lock:
            if step not in self._pending:
                self._pending[step] = (batch.fingerprint, self._pool.submit(self._fetch, step, batch))

    def plan(self, step: int, batch: Batch) -> SourcedPlan:
        """The service's plan for `step` if it comes within the deadline and validates, else a local one."""
        from planner_service.client import PlannerApiError

        began = time.perf_counter()
        self.prefetch(step, batch)
        with self._lock:
            fingerprint, future = self._pending.pop(step)
        if fingerprint != batch.fingerprint:  # the caller changed its mind about the batch: ask again
            future = self._pool.submit(self._fetch, step, batch)
        try:
            plan = future.result(timeout=self.deadline_s)
            validate_plan(plan, batch, self.job.cluster, self.job.model)
            if plan.pipeline.num_stages != self.job.num_stages:
                raise PlanValidationError(
                    [f"the service planned P={plan.pipeline.num_stages}, the job runs P={self.job.num_stages}"]
                )
            if plan.options.zero_stage != self.job.options.zero_stage:
                raise PlanValidationError(
                    [
                        f"the service planned ZeRO-{int(plan.options.zero_stage)}, the job runs "
                        f"ZeRO-{int(self.job.options.zero_stage)}"
                    ]
                )
            return SourcedPlan(plan, "service", wait_s=time.perf_counter() - began)
        except FutureTimeout:
            reason = f"the service did not answer within {self.deadline_s:.1f} s"
        except PlannerApiError as exc:
            reason = f"the service failed: {exc}"
        except PlanValidationError as exc:
            reason = f"the service's plan is invalid: {exc}"
        self.fallbacks += 1
        log.warning("step %d: planning in-process (fallback %d): %s", step, self.fallbacks, reason)
        plan = plan_in_process(self.job, step, batch, job_id=self.job_id)
        return SourcedPlan(plan, "fallback", reason=reason, wait_s=time.perf_counter() - began)

    def send_feedback(self, feedback: Feedback) -> None:
        """Report a step in the background; a failure is logged, never raised into training."""
        self._pool.submit(self._post_feedback, feedback)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _fetch(self, step: int, batch: Batch) -> Plan:
        return self.client.plan_for_step(self._registered_job(), step, batch.lengths, batch.seq_ids)

    def _registered_job(self) -> str:
        with self._lock:
            if self.job_id is None:
                self.job_id = register_job(self.client, self.job).job_id
                log.info("registered with the planner service as %s (P=%d)", self.job_id, self.job.num_stages)
            return self.job_id

    def _post_feedback(self, feedback: Feedback) -> None:
        from planner_service.client import PlannerApiError

        if self.job_id is None:
            return
        try:
            self.client.send_feedback(self.job_id, feedback)
        except PlannerApiError as exc:
            log.info("step %d: feedback not recorded (%s)", feedback.step, exc)


def register_job(client: PlannerClient, job: JobRequest, *, sample_lengths: list[int] | None = None) -> JobPublic:
    """Register the job: the service chooses P from `sample_lengths` when given, else uses the job's fixed P."""
    return client.create_job(
        cluster=job.cluster,
        model=job.model,
        strategy=job.strategy,
        options=job.options,
        solver=job.solver,
        time_limit_s=job.time_limit_s,
        sample_lengths=sample_lengths,
        num_stages=job.num_stages,
        profile=job.profile,
        layer_ranges=job.layer_ranges if job.num_stages is not None else None,
    )
