"""The HTTP side's solve service: admission, the worker pool with its deadline, per-(job, step) claims and
coalescing, and the job/plan store I/O.

Planning decisions are the planner library's (`make_plan`, `choose_pipeline_degree`); this module decides
where and when they run, how long they may take, and what is stored.

- Admission (`admission.py`): a bounded, per-job fair queue in front of the workers; beyond it 503 `busy`.
- Workers (`solve_pool.py`): each solve runs in a worker process under a hard deadline (the request's time
  limit plus `HELIX_DEADLINE_MARGIN_S`); past it the worker is killed and the greedy plan it sent first is
  answered, marked `timeout-fallback`. A client that gives up therefore never leaves work running longer.
- Per-step plans are idempotent per (job, step): the first request claims the step in the store (a unique
  row, so processes sharing a PostgreSQL database solve it once), solves, commits, and only then answers.
  Identical requests in this process await the same task; in another process they poll the store until
  the plan is there. Another batch for the step is a conflict. The task is shielded, so a client that
  disconnects does not cancel the solve others wait on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from planner_service.api.admission import AdmissionQueue, Busy
from planner_service.api.calibration import JobCalibrations
from planner_service.api.errors import ApiError
from planner_service.api.inputs import check_sequence_count, check_sequence_stages, job_spec_of
from planner_service.api.metrics import ServiceMetrics
from planner_service.api.schemas import JobCreate, JobDecisions, JobSpec, PlanCreate, StepPlanRequest
from planner_service.api.settings import Settings
from planner_service.api.solve_pool import SolveCrashed, SolveDeadline, SolveOutcome, SolvePool, SolveTimeout
from planner_service.api.solve_tasks import DecisionTask, PlanResult, PlanTask, SolveFn, SolveTask
from planner_service.calibration.calibrator import CalibrationSettings
from planner_service.cost_model.profile_document import (
    ProfileDocument,
    ProfileFileError,
    check_matches,
    read_profile_file,
)
from planner_service.errors import PlanningError
from planner_service.pipeline_degree import SyntheticSample, check_fixed_degree
from planner_service.planner import job_layer_split
from planner_service.store import JobRecord, PlanConflictError, PlanRecord, PlanStore
from proto import Batch, CostProfile, PipelineSpec

log = logging.getLogger(__name__)

T = TypeVar("T")
PlanSource = Literal["solve", "store", "coalesced"]
CLAIM_LEASE_EXTRA_S = 5.0
"""A claim outlives its solve's deadline by this much before another process may take the step over."""
STATELESS_KEY = "(stateless)"
REGISTRATION_KEY = "(registration)"


@dataclass(frozen=True, slots=True)
class RegisteredJob:
    """A job as stored at registration (immutable afterwards): every per-step plan is made from its spec at
    its pipeline degree."""

    job_id: str
    created_at: float
    spec: JobSpec
    decisions: JobDecisions

    @classmethod
    def from_record(cls, record: JobRecord) -> RegisteredJob:
        return cls(
            job_id=record.job_id,
            created_at=record.created_at,
            spec=JobSpec.model_validate(record.spec),
            decisions=JobDecisions.model_validate(record.decisions),
        )


@dataclass(frozen=True, slots=True)
class ServedPlan:
    """A plan's bytes as stored (gzip) and, when at hand, as JSON (so a fresh plan is not decompressed)."""

    plan_gz: bytes
    plan_json: bytes | None = None

    @classmethod
    def of_record(cls, record: PlanRecord) -> ServedPlan:
        assert record.plan_gz is not None
        return cls(record.plan_gz)

    def json_bytes(self) -> bytes:
        import gzip

        return self.plan_json if self.plan_json is not None else gzip.decompress(self.plan_gz)


class SolveService:
    """Admission, deadline-bounded solves in worker processes, claims and coalescing, store reads and writes."""

    def __init__(self, *, settings: Settings, store: PlanStore, metrics: ServiceMetrics, solve_fn: SolveFn) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.solve_fn = solve_fn
        size = settings.max_concurrent_solves
        self.pool = SolvePool(size, max_tasks=settings.solve_worker_max_tasks)
        self.admission = AdmissionQueue(
            slots=size,
            max_queued=settings.max_queued_solves,
            max_queued_per_key=settings.max_queued_per_job,
            metrics=metrics,
            expected_solve_s=settings.solver_time_limit_s,
        )
        self._waiters = ThreadPoolExecutor(max_workers=size, thread_name_prefix="helix-solve-wait")
        self._owner = f"{uuid.uuid4().hex[:16]}"
        self._in_flight: dict[tuple[str, int], tuple[str, asyncio.Task[tuple[ServedPlan, PlanSource]]]] = {}
        self._jobs: dict[str, RegisteredJob] = {}
        self.calibrations = JobCalibrations(
            store=store,
            metrics=metrics,
            settings=CalibrationSettings(
                window=settings.calibration_window,
                op_overhead=settings.calibrate_op_overhead,
                lane_widths=settings.calibrate_lane_widths,
            ),
            enabled=settings.calibrate,
        )
        self._default_profile = read_profile_file(settings.profile) if settings.profile is not None else None

    def default_profile(self, spec: JobSpec) -> CostProfile | None:
        """`helix serve --profile`'s profile when it applies to this cluster and model, else None."""
        if self._default_profile is None:
            return None
        profile, doc = self._default_profile
        return profile if _document_matches(doc, spec) else None

    def close(self) -> None:
        self.pool.close()
        self._waiters.shutdown(wait=False, cancel_futures=True)
        self.calibrations.close()

    # running work -----------------------------------------------------------------------------------
    @staticmethod
    async def io(fn: Callable[..., T], *args: Any) -> T:
        """Run a (short, blocking) store call in the loop's default executor, never behind the solve pool."""
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))

    async def run_task(self, task: SolveTask, key: str, kind: str) -> SolveOutcome[Any]:
        """One task on a worker: wait fairly for a slot (503 busy when the queue is full), then run it under
        the deadline."""
        try:
            async with self.admission.slot(key):
                deadline = SolveDeadline.starting_now(task.spec.time_limit_s, self.settings.deadline_margin_s)
                started = time.perf_counter()
                try:
                    outcome = await asyncio.wrap_future(self._waiters.submit(self.pool.run, task, deadline))
                except SolveTimeout:
                    self.metrics.abandoned.labels(reason="deadline").inc()
                    raise ApiError(
                        503, "timeout", f"no plan within {task.spec.time_limit_s:g} s + the "
                        f"{self.settings.deadline_margin_s:g} s margin; send a smaller batch or retry",
                        headers={"Retry-After": str(self.admission.retry_after_s())},
                    ) from None  # fmt: skip
                except SolveCrashed as exc:
                    self.metrics.abandoned.labels(reason="crash").inc()
                    raise RuntimeError(f"solve failed in its worker: {exc}") from None
                finally:
                    self.metrics.solves.labels(kind=kind).inc()
                    self.metrics.solve_seconds.labels(strategy=task.spec.strategy).observe(
                        time.perf_counter() - started
                    )
        except Busy as exc:
            raise ApiError(
                503, "busy", f"{exc.reason}; retry after {exc.retry_after_s} s",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from None  # fmt: skip
        if outcome.abandoned:
            self.metrics.abandoned.labels(reason=outcome.abandoned).inc()
        return outcome

    async def solve_plan(self, task: PlanTask, key: str) -> PlanResult:
        outcome = await self.run_task(task, key, task.kind)
        result: PlanResult = outcome.result
        self.metrics.solver_status.labels(status=result.status).inc()
        return result

    # stateless --------------------------------------------------------------------------------------
    async def plan_stateless(self, req: PlanCreate) -> bytes:
        spec = job_spec_of(req, self.settings)
        check_sequence_count(len(req.batch.lengths), self.settings, "batch.lengths")
        started = time.perf_counter()
        profile = req.profile or self.default_profile(spec)
        task = PlanTask(kind="stateless", spec=spec, batch=req.batch, profile=profile, solve_fn=self.solve_fn)
        try:
            result = await self.solve_plan(task, STATELESS_KEY)
        except PlanningError as exc:
            if exc.field in ("lengths", "seq_ids"):  # the planner names Batch fields; here they sit under batch
                exc.field = f"batch.{exc.field}"
            raise
        self.metrics.plan_latency.labels(kind="stateless", source="solve").observe(time.perf_counter() - started)
        return result.plan_json

    # jobs -------------------------------------------------------------------------------------------
    async def register_job(self, req: JobCreate) -> str:
        spec = job_spec_of(req, self.settings)
        if req.sample_lengths is not None:
            check_sequence_count(len(req.sample_lengths), self.settings, "sample_lengths")
        profile = req.profile or self.default_profile(spec)
        decisions = await self._decide(spec, req, profile)
        job_id = f"job_{uuid.uuid4().hex[:20]}"
        await self.io(self.store.create_job, job_id, spec.model_dump(mode="json"), decisions.model_dump(mode="json"))
        if profile is not None:
            await self.io(self.store.put_profile, job_id, profile.model_dump(mode="json"))
        return job_id

    async def _decide(self, spec: JobSpec, req: JobCreate, profile: CostProfile | None) -> JobDecisions:
        """P fixed by the caller (checked, no solve), else the library's decision in a worker, under the
        same deadline as a plan (its greedy decision answers when the strategy's trials overrun)."""
        if req.layer_ranges is not None and req.num_stages is None:
            raise PlanningError("layer_ranges fixes the split of a fixed num_stages; give both", field="layer_ranges")
        if req.num_stages is not None:
            check_fixed_degree(spec.cluster, spec.model, req.num_stages)
            split = job_layer_split(spec.model, req.num_stages, req.layer_ranges) or PipelineSpec.even(
                spec.model.num_layers, req.num_stages
            )
            return JobDecisions(
                num_stages=req.num_stages, layer_ranges=split.layer_ranges, sample_source="fixed", sample_size=0
            )
        task = DecisionTask(
            spec=spec,
            sample_lengths=tuple(req.sample_lengths) if req.sample_lengths is not None else None,
            synthetic=SyntheticSample(
                dataset=self.settings.default_sample_dataset, size=self.settings.default_sample_size
            ),
            profile=profile,
            solve_fn=self.solve_fn,
            max_sequence_stages=self.settings.max_sequence_stages,
        )
        outcome = await self.run_task(task, REGISTRATION_KEY, "job_decision")
        decisions: JobDecisions = outcome.result
        return decisions

    async def job(self, job_id: str) -> RegisteredJob:
        """The registered job; 404 when it was never registered."""
        job = self._jobs.get(job_id)
        if job is None:
            record = await self.io(self.store.get_job, job_id)
            if record is None:
                raise ApiError(404, "not_found", f"job {job_id!r} does not exist", field="job_id")
            job = RegisteredJob.from_record(record)
            self._jobs[job_id] = job
        return job

    # per-step plans ---------------------------------------------------------------------------------
    async def read_plan(self, job: RegisteredJob, step: int) -> ServedPlan:
        """The stored plan of a step: 404 when never planned, 410 when the retention policy pruned it."""
        record = await self.io(self.store.get_plan, job.job_id, step)
        if record is None:
            raise ApiError(404, "not_found", f"job {job.job_id} has no plan for step {step}", field="step")
        if record.pruned:
            raise _step_gone(job.job_id, step)
        return ServedPlan.of_record(record)

    async def plan_for_step(self, job: RegisteredJob, req: StepPlanRequest) -> tuple[ServedPlan, PlanSource]:
        """The plan for (job, step): stored, coalesced with an identical in-flight solve, or solved now."""
        check_sequence_count(len(req.lengths), self.settings, "lengths")
        check_sequence_stages(len(req.lengths), job.decisions.num_stages, self.settings, "lengths")
        seq_ids = list(req.seq_ids) if req.seq_ids is not None else list(range(len(req.lengths)))
        batch = Batch(seq_ids=seq_ids, lengths=list(req.lengths))
        fp = batch.fingerprint
        key = (job.job_id, req.step)
        started = time.perf_counter()
        entry = self._in_flight.get(key)
        if entry is not None:
            other_fp, task = entry
            if other_fp != fp:
                self.metrics.conflicts.inc()
                raise _step_conflict(job.job_id, req.step)
            self.metrics.coalesced.inc()
            served, _ = await asyncio.shield(task)
            source: PlanSource = "coalesced"
        else:
            task = asyncio.get_running_loop().create_task(self._plan_step(job, req.step, batch, fp))
            self._in_flight[key] = (fp, task)
            task.add_done_callback(functools.partial(self._forget, key))
            served, source = await asyncio.shield(task)
        self.metrics.plan_latency.labels(kind="job_step", source=source).observe(time.perf_counter() - started)
        return served, source

    def _forget(self, key: tuple[str, int], task: asyncio.Task[Any]) -> None:
        self._in_flight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here so an error nobody awaited is not logged as "never retrieved"

    async def _plan_step(self, job: RegisteredJob, step: int, batch: Batch, fp: str) -> tuple[ServedPlan, PlanSource]:
        lease_s = job.spec.time_limit_s + self.settings.deadline_margin_s + CLAIM_LEASE_EXTRA_S
        waited = False
        while True:  # claim the step, or wait for the process that holds it
            try:
                claim = await self.io(self.store.claim_step, job.job_id, step, fp, self._owner, lease_s)
            except PlanConflictError:
                self.metrics.conflicts.inc()
                raise _step_conflict(job.job_id, step) from None
            if claim.state == "stored":
                assert claim.stored is not None
                if claim.stored.pruned:
                    raise _step_gone(job.job_id, step)
                if not waited:
                    self.metrics.cache_hits.inc()
                return ServedPlan.of_record(claim.stored), "store" if not waited else "coalesced"
            if claim.state == "claimed":
                break
            if not waited:
                self.metrics.coalesced.inc()
            waited = True
            await asyncio.sleep(self.settings.claim_poll_s)
        try:
            served = await self._solve_and_store(job, step, batch, fp)
        except BaseException:
            await asyncio.shield(self.io(self.store.release_claim, job.job_id, step, self._owner))
            raise
        return served, "solve"

    async def _solve_and_store(self, job: RegisteredJob, step: int, batch: Batch, fp: str) -> ServedPlan:
        latest = await self.io(self.store.latest_profile, job.job_id)
        profile = CostProfile.model_validate(latest[1]) if latest else None
        task = PlanTask(
            kind="job_step",
            spec=job.spec,
            batch=batch,
            profile=profile,
            num_stages=job.decisions.num_stages,
            layer_ranges=[(a, b) for a, b in job.decisions.layer_ranges],
            step=step,
            job_id=job.job_id,
            solve_fn=self.solve_fn,
        )
        result = await self.solve_plan(task, job.job_id)
        record = PlanRecord(
            job_id=job.job_id,
            step=step,
            batch_fingerprint=fp,
            plan_id=result.plan_id,
            predicted_s=result.predicted_s,
            plan_gz=result.plan_gz,
            raw_size=len(result.plan_json),
        )
        try:
            stored = await self.io(self.store.put_plan, record)  # committed before anyone sees the plan
        except PlanConflictError:
            self.metrics.conflicts.inc()
            raise _step_conflict(job.job_id, step) from None
        if stored.plan_gz == result.plan_gz:
            return ServedPlan(result.plan_gz, result.plan_json)
        return ServedPlan.of_record(stored)  # another process stored the step first (its claim had expired)


def _document_matches(doc: ProfileDocument | None, spec: JobSpec) -> bool:
    try:
        check_matches(doc, spec.cluster, spec.model, source="the service's profile")
    except ProfileFileError:
        return False
    return True


def _step_conflict(job_id: str, step: int) -> ApiError:
    return ApiError(
        409, "conflict", f"job {job_id} step {step} is already planned for a different batch; a step's batch "
        "cannot change (use a new step number)", field="lengths",
    )  # fmt: skip


def _step_gone(job_id: str, step: int) -> ApiError:
    return ApiError(
        410, "gone", f"the plan of job {job_id} step {step} was pruned by the retention policy "
        "(HELIX_KEEP_LAST_STEPS)", field="step",
    )  # fmt: skip
