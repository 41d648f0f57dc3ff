"""The HTTP side's solve service: a bounded worker pool, per-(job, step) coalescing, and the job/plan store I/O.

Planning decisions are the planner library's (`make_plan`, `choose_pipeline_degree`); this module decides
where and when they run and what is stored.

Why a pool: planning is CPU-bound (solvers, simulation); running it on the event loop would stall every
other request, including `/healthz`. A fixed-size `ThreadPoolExecutor` bounds concurrent solves (extra
requests queue) and is independent of which event loop serves the app (tests run several).

Why coalescing: rank 0 of a job may retry, and several nodes may ask for the same step; identical
requests for one (job, step) must cost one solve and get byte-identical plans. The first request starts
a task that checks the store, solves and commits; later identical requests await the same task; a
request with another batch for that step is a conflict. The task is shielded, so a client that
disconnects does not cancel the solve the others wait on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from planner_service.api.calibration import JobCalibrations
from planner_service.api.errors import ApiError
from planner_service.api.inputs import check_sequence_count, check_step, job_spec_of
from planner_service.api.metrics import ServiceMetrics
from planner_service.api.schemas import JobCreate, JobDecisions, JobSpec, StageCandidate, StepPlanRequest
from planner_service.api.settings import Settings
from planner_service.calibration.calibrator import CalibrationSettings
from planner_service.cost_model.profile_document import (
    ProfileDocument,
    ProfileFileError,
    check_matches,
    read_profile_file,
)
from planner_service.errors import PlanningError
from planner_service.pipeline_degree import PipelineDegreeChoice, SyntheticSample, choose_pipeline_degree
from planner_service.store import JobRecord, PlanConflictError, PlanRecord, PlanStore
from proto import Batch, ClusterSpec, CostProfile, ModelSpec, Plan, PlanOptions, PlanRequest, PlanValidationError

log = logging.getLogger(__name__)

T = TypeVar("T")
SolveKind = Literal["stateless", "job_step", "job_decision"]
"""What a solve is for (the `kind` label of the solve metrics)."""
PlanSource = Literal["solve", "store", "coalesced"]


class SolveFn(Protocol):
    """The planner library call the service runs: `planner_service.planner.make_plan` (tests wrap it, e.g. to
    count or hold solves)."""

    def __call__(
        self,
        *,
        batch: Batch,
        cluster: ClusterSpec,
        model: ModelSpec,
        strategy: str,
        options: PlanOptions | None,
        profile: CostProfile | None,
        time_limit_s: float,
        solver: str,
        num_stages: int | None,
        step: int | None,
        job_id: str | None,
    ) -> Plan: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class SolveCall:
    """One planner call: what it is for (the metrics' `kind`), the spec it plans with and the batch."""

    kind: SolveKind
    spec: JobSpec
    batch: Batch
    profile: CostProfile | None = None
    """The job's latest measured profile, or the request's; None: the preset's."""
    num_stages: int | None = None
    """The pipeline degree to plan at; None: the strategy chooses."""
    step: int | None = None
    job_id: str | None = None


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


def plan_bytes(plan: Plan) -> bytes:
    """The exact bytes returned and stored for a plan (compact JSON)."""
    return plan.model_dump_json().encode()


def job_decisions(choice: PipelineDegreeChoice) -> JobDecisions:
    """The wire form of the library's pipeline-degree choice."""
    return JobDecisions(
        num_stages=choice.num_stages,
        layer_ranges=choice.layer_ranges,
        sample_source=choice.sample_source,
        sample_size=choice.sample_size,
        candidates=[
            StageCandidate(
                num_stages=t.num_stages,
                feasible=t.feasible,
                iteration_s=t.iteration_s,
                solver_status=t.solver_status,
                message=t.message,
            )
            for t in choice.trials
        ],
    )


class SolveService:
    """Runs `solve_fn` off the event loop in a bounded pool, coalesces per-step requests, reads and writes the
    store, and keeps registered jobs cached."""

    def __init__(self, *, settings: Settings, store: PlanStore, metrics: ServiceMetrics, solve_fn: SolveFn) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.solve_fn = solve_fn
        self._pool = ThreadPoolExecutor(max_workers=settings.max_concurrent_solves, thread_name_prefix="helix-solve")
        self._in_flight: dict[tuple[str, int], tuple[str, asyncio.Task[tuple[bytes, PlanSource]]]] = {}
        self._jobs: dict[str, RegisteredJob] = {}
        self.calibrations = JobCalibrations(
            store=store,
            metrics=metrics,
            settings=CalibrationSettings(window=settings.calibration_window),
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
        self._pool.shutdown(wait=False, cancel_futures=True)

    # the pool ---------------------------------------------------------------------------------------
    @staticmethod
    async def io(fn: Callable[..., T], *args: Any) -> T:
        """Run a (short, blocking) store call in the loop's default executor, never behind the solve pool."""
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))

    def _submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue one solve in the pool; counted in flight from now until it ends."""
        self.metrics.solves_in_flight.inc()
        future = self._pool.submit(fn)
        future.add_done_callback(lambda _: self.metrics.solves_in_flight.dec())
        return future

    def _map_in_pool(self, fn: Callable[[int], T], items: Sequence[int]) -> list[T]:
        """Blocking map over the pool (all queued at once, results in order); called off the event loop."""
        futures = [self._submit(functools.partial(fn, item)) for item in items]
        return [f.result() for f in futures]

    def _solve_sync(self, call: SolveCall) -> Plan:
        spec = call.spec
        started = time.perf_counter()
        try:
            plan = self.solve_fn(
                batch=call.batch,
                cluster=spec.cluster,
                model=spec.model,
                strategy=spec.strategy,
                options=spec.options,
                profile=call.profile,
                time_limit_s=spec.time_limit_s,
                solver=spec.solver,
                num_stages=call.num_stages,
                step=call.step,
                job_id=call.job_id,
            )
        except PlanValidationError:
            raise  # a plan the planner itself built is invalid: a bug, reported as 500 and logged
        except PlanningError:
            raise
        except ValueError as exc:  # an input combination the planner rejects without a PlanningError
            raise PlanningError(str(exc)) from exc
        finally:
            self.metrics.solves.labels(kind=call.kind).inc()
            self.metrics.solve_seconds.labels(strategy=spec.strategy).observe(time.perf_counter() - started)
        self.metrics.solver_status.labels(status=plan.solver.status.value).inc()
        return plan

    async def solve(self, call: SolveCall) -> Plan:
        """One planner call in the bounded pool."""
        return await asyncio.wrap_future(self._submit(functools.partial(self._solve_sync, call)))

    # stateless --------------------------------------------------------------------------------------
    async def plan_stateless(self, req: PlanRequest) -> bytes:
        spec = job_spec_of(req, self.settings)
        check_sequence_count(len(req.batch.lengths), self.settings, "batch.lengths")
        started = time.perf_counter()
        try:
            profile = req.profile or self.default_profile(spec)
            plan = await self.solve(SolveCall(kind="stateless", spec=spec, batch=req.batch, profile=profile))
        except PlanningError as exc:
            if exc.field in ("lengths", "seq_ids"):  # the planner names Batch fields; here they sit under batch
                exc.field = f"batch.{exc.field}"
            raise
        self.metrics.plan_latency.labels(kind="stateless", source="solve").observe(time.perf_counter() - started)
        return plan_bytes(plan)

    # jobs -------------------------------------------------------------------------------------------
    async def register_job(self, req: JobCreate) -> str:
        spec = job_spec_of(req, self.settings)
        if req.sample_lengths is not None:
            check_sequence_count(len(req.sample_lengths), self.settings, "sample_lengths")
        profile = req.profile or self.default_profile(spec)
        decisions = await self._choose_pipeline_degree(spec, req, profile)
        job_id = f"job_{uuid.uuid4().hex[:20]}"
        await self.io(self.store.create_job, job_id, spec.model_dump(mode="json"), decisions.model_dump(mode="json"))
        if profile is not None:
            await self.io(self.store.put_profile, job_id, profile.model_dump(mode="json"))
        return job_id

    async def _choose_pipeline_degree(self, spec: JobSpec, req: JobCreate, profile: CostProfile | None) -> JobDecisions:
        """The library's decision, its per-P solves run concurrently in the pool.

        The decision itself only waits on the pool, so it runs in the loop's default executor.
        """

        def plan_at(batch: Batch, num_stages: int) -> Plan:
            call = SolveCall(kind="job_decision", spec=spec, batch=batch, profile=profile, num_stages=num_stages)
            return self._solve_sync(call)

        choose = functools.partial(
            choose_pipeline_degree,
            cluster=spec.cluster,
            model=spec.model,
            strategy=spec.strategy,
            plan_at=plan_at,
            sample_lengths=req.sample_lengths,
            num_stages=req.num_stages,
            synthetic=SyntheticSample(
                dataset=self.settings.default_sample_dataset, size=self.settings.default_sample_size
            ),
            map_fn=self._map_in_pool,
        )
        return job_decisions(await self.io(choose))

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
    async def plan_for_step(self, job: RegisteredJob, req: StepPlanRequest) -> tuple[bytes, PlanSource]:
        """The plan for (job, step): stored, coalesced with an identical in-flight solve, or solved now."""
        check_sequence_count(len(req.lengths), self.settings, "lengths")
        check_step(req.step)
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
            data, _ = await asyncio.shield(task)
            source: PlanSource = "coalesced"
        else:
            task = asyncio.get_running_loop().create_task(self._plan_step(job, req.step, batch, fp))
            self._in_flight[key] = (fp, task)
            task.add_done_callback(functools.partial(self._forget, key))
            data, source = await asyncio.shield(task)
        self.metrics.plan_latency.labels(kind="job_step", source=source).observe(time.perf_counter() - started)
        return data, source

    def _forget(self, key: tuple[str, int], task: asyncio.Task[Any]) -> None:
        self._in_flight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here so an error nobody awaited is not logged as "never retrieved"

    async def _plan_step(self, job: RegisteredJob, step: int, batch: Batch, fp: str) -> tuple[bytes, PlanSource]:
        stored = await self.io(self.store.get_plan, job.job_id, step)
        if stored is not None:
            if stored.batch_fingerprint != fp:
                self.metrics.conflicts.inc()
                raise _step_conflict(job.job_id, step)
            self.metrics.cache_hits.inc()
            return stored.plan_json, "store"
        latest = await self.io(self.store.latest_profile, job.job_id)
        profile = CostProfile.model_validate(latest[1]) if latest else None
        call = SolveCall(
            kind="job_step",
            spec=job.spec,
            batch=batch,
            profile=profile,
            num_stages=job.decisions.num_stages,
            step=step,
            job_id=job.job_id,
        )
        plan = await self.solve(call)
        record = PlanRecord(
            job_id=job.job_id,
            step=step,
            batch_fingerprint=fp,
            plan_id=plan.plan_id,
            predicted_s=plan.predicted.iteration_s,
            plan_json=plan_bytes(plan),
        )
        try:
            stored = await self.io(self.store.put_plan, record)  # committed before anyone sees the plan
        except PlanConflictError:
            self.metrics.conflicts.inc()
            raise _step_conflict(job.job_id, step) from None
        return stored.plan_json, "solve"


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
