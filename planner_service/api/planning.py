"""Solving for the service: a bounded worker pool, per-(job, step) coalescing, and the job-level P choice.

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
import math
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from planner_service.api.errors import ApiError
from planner_service.api.metrics import ServiceMetrics
from planner_service.api.schemas import JobCreate, JobDecisions, StageCandidate, StepPlanRequest
from planner_service.api.settings import Settings
from planner_service.errors import PlanningError
from planner_service.planner import make_plan
from planner_service.presets import CLUSTERS, MODELS
from planner_service.store import PlanConflictError, PlanRecord, PlanStore
from planner_service.strategies.registry import STRATEGIES
from planner_service.workloads import sample_synthetic
from proto import (
    Batch,
    ClusterSpec,
    CostProfile,
    ModelSpec,
    PipelineSpec,
    Plan,
    PlanOptions,
    PlanRequest,
    PlanValidationError,
)
from proto.topology import pipeline_degree_candidates

log = logging.getLogger(__name__)

PlanFn = Callable[..., Plan]
"""Signature of `planner_service.planner.make_plan`; tests may pass a wrapper (e.g. to count solves)."""

T = TypeVar("T")
MAX_STEP = 2**62  # SQLite INTEGER is 64-bit signed
# A job registered without sample lengths chooses P on a synthetic sample truncated at these lengths, the
# longest first: the sample only stands in for "typical" batches, so a too-long outlier must not fail it.
DEFAULT_SAMPLE_MAX_LENS = (32768, 8192, 2048)
PlanSource = Literal["solve", "store", "coalesced"]


@dataclass(frozen=True, slots=True)
class JobContext:
    """What every per-step plan of a job is made with (immutable after registration)."""

    job_id: str
    cluster: ClusterSpec
    model: ModelSpec
    strategy: str
    options: PlanOptions
    solver: str
    time_limit_s: float
    num_stages: int

    @classmethod
    def from_spec(cls, job_id: str, spec: dict[str, Any], decisions: dict[str, Any]) -> JobContext:
        return cls(
            job_id=job_id,
            cluster=ClusterSpec.model_validate(spec["cluster"]),
            model=ModelSpec.model_validate(spec["model"]),
            strategy=spec["strategy"],
            options=PlanOptions.model_validate(spec["options"]),
            solver=spec["solver"],
            time_limit_s=float(spec["time_limit_s"]),
            num_stages=int(decisions["num_stages"]),
        )


def plan_bytes(plan: Plan) -> bytes:
    """The exact bytes returned and stored for a plan (compact JSON)."""
    return plan.model_dump_json().encode()


def resolve_cluster_arg(value: ClusterSpec | str, settings: Settings, field: str = "cluster") -> ClusterSpec:
    """A preset name or a full spec. File paths are not accepted over HTTP (the server's files are not input)."""
    if isinstance(value, str):
        if value not in CLUSTERS:
            raise ApiError(
                422, "invalid_input", f"unknown cluster preset {value!r}; choose one of: {', '.join(sorted(CLUSTERS))}"
                " or send a full ClusterSpec object", field=field,
            )  # fmt: skip
        value = CLUSTERS[value]
    if value.num_devices > settings.max_devices:
        raise ApiError(
            422, "invalid_input", f"the cluster has {value.num_devices} devices; this service plans at most "
            f"{settings.max_devices} (HELIX_MAX_DEVICES)", field=field,
        )  # fmt: skip
    return value


def resolve_model_arg(value: ModelSpec | str, field: str = "model") -> ModelSpec:
    if isinstance(value, str):
        if value not in MODELS:
            raise ApiError(
                422, "invalid_input", f"unknown model preset {value!r}; choose one of: {', '.join(sorted(MODELS))}"
                " or send a full ModelSpec object", field=field,
            )  # fmt: skip
        return MODELS[value]
    return value


def check_strategy(name: str, field: str = "strategy") -> None:
    """Strategies come from the registry at request time, so new ones are served without a code change."""
    if name not in STRATEGIES:
        raise ApiError(
            422, "invalid_input", f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}", field=field
        )


def check_sequence_count(count: int, settings: Settings, field: str) -> None:
    if count > settings.max_sequences:
        raise ApiError(
            422, "invalid_input", f"{count} sequences exceed this service's limit of {settings.max_sequences} "
            "(HELIX_MAX_SEQUENCES)", field=field,
        )  # fmt: skip


def check_finite(value: Any, field: str) -> None:
    """Reject NaN/Infinity anywhere in a request (Python's JSON parser accepts `1e999` and `NaN`)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ApiError(422, "invalid_input", f"{field}: must be a finite number, got {value}", field=field)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{field}.{key}" if field else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_finite(item, f"{field}[{i}]")


class PlanningService:
    """Runs `plan_fn` off the event loop, coalesces per-step requests and owns the job-level decision."""

    def __init__(
        self, *, settings: Settings, store: PlanStore, metrics: ServiceMetrics, plan_fn: PlanFn = make_plan
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.plan_fn = plan_fn
        self._pool = ThreadPoolExecutor(max_workers=settings.max_concurrent_solves, thread_name_prefix="helix-solve")
        self._in_flight: dict[tuple[str, int], tuple[str, asyncio.Task[tuple[bytes, PlanSource]]]] = {}
        self._jobs: dict[str, JobContext] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # helpers ----------------------------------------------------------------------------------------
    async def _in_pool(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    @staticmethod
    async def io(fn: Callable[..., T], *args: Any) -> T:
        """Run a (short, blocking) store call in the loop's default executor, never behind the solve pool."""
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))

    def time_limit(self, requested: float | None) -> float:
        cap = self.settings.solver_time_limit_s
        return cap if requested is None else min(requested, cap)

    def _solve_sync(self, kind: str, kwargs: dict[str, Any]) -> Plan:
        started = time.perf_counter()
        try:
            plan = self.plan_fn(**kwargs)
        except PlanValidationError:
            raise  # a plan the planner itself built is invalid: a bug, reported as 500 and logged
        except PlanningError:
            raise
        except ValueError as exc:  # an input combination the planner rejects without a PlanningError
            raise PlanningError(str(exc)) from exc
        finally:
            self.metrics.solves.labels(kind=kind).inc()
            self.metrics.solve_seconds.labels(strategy=str(kwargs.get("strategy"))).observe(
                time.perf_counter() - started
            )
        self.metrics.solver_status.labels(status=plan.solver.status.value).inc()
        return plan

    async def solve(self, kind: str, **kwargs: Any) -> Plan:
        """One make_plan call in the bounded pool."""
        self.metrics.solves_in_flight.inc()
        try:
            return await self._in_pool(functools.partial(self._solve_sync, kind, kwargs))
        finally:
            self.metrics.solves_in_flight.dec()

    # stateless --------------------------------------------------------------------------------------
    async def plan_stateless(self, req: PlanRequest) -> bytes:
        check_finite(req.model_dump(mode="python"), "")
        cluster = resolve_cluster_arg(req.cluster, self.settings)
        model = resolve_model_arg(req.model)
        check_strategy(req.strategy)
        check_sequence_count(len(req.batch.lengths), self.settings, "batch.lengths")
        started = time.perf_counter()
        try:
            plan = await self._solve_stateless(req, cluster, model)
        except PlanningError as exc:
            if exc.field in ("lengths", "seq_ids"):  # the planner names Batch fields; here they sit under batch
                exc.field = f"batch.{exc.field}"
            raise
        self.metrics.plan_latency.labels(kind="stateless", source="solve").observe(time.perf_counter() - started)
        return plan_bytes(plan)

    async def _solve_stateless(self, req: PlanRequest, cluster: ClusterSpec, model: ModelSpec) -> Plan:
        return await self.solve(
            "stateless",
            batch=req.batch,
            cluster=cluster,
            model=model,
            strategy=req.strategy,
            options=req.options,
            profile=req.profile,
            time_limit_s=self.time_limit(req.time_limit_s),
            solver=req.solver,
        )

    # jobs -------------------------------------------------------------------------------------------
    async def register_job(self, req: JobCreate) -> str:
        check_finite(req.model_dump(mode="python"), "")
        cluster = resolve_cluster_arg(req.cluster, self.settings)
        model = resolve_model_arg(req.model)
        check_strategy(req.strategy)
        if req.sample_lengths is not None:
            check_sequence_count(len(req.sample_lengths), self.settings, "sample_lengths")
        time_limit = self.time_limit(req.time_limit_s)
        decisions = await self._decide_stages(req, cluster, model, time_limit)
        job_id = f"job_{uuid.uuid4().hex[:20]}"
        spec = {
            "cluster": cluster.model_dump(mode="json"),
            "model": model.model_dump(mode="json"),
            "strategy": req.strategy,
            "options": req.options.model_dump(mode="json"),
            "solver": req.solver,
            "time_limit_s": time_limit,
        }
        await self.io(self.store.create_job, job_id, spec, decisions.model_dump(mode="json"))
        if req.profile is not None:
            await self.io(self.store.put_profile, job_id, req.profile.model_dump(mode="json"))
        return job_id

    async def _decide_stages(
        self, req: JobCreate, cluster: ClusterSpec, model: ModelSpec, time_limit: float
    ) -> JobDecisions:
        """Choose P once per job: plan a sample batch for every candidate P and keep the fastest feasible."""
        candidates = pipeline_degree_candidates(cluster.num_devices, model.num_layers)
        if req.num_stages is not None:
            if cluster.num_devices % req.num_stages or req.num_stages > model.num_layers:
                raise ApiError(
                    422, "invalid_input", f"num_stages ({req.num_stages}) must divide the {cluster.num_devices} "
                    f"devices and be at most num_layers ({model.num_layers})", field="num_stages",
                )  # fmt: skip
            split = PipelineSpec.even(model.num_layers, req.num_stages)
            return JobDecisions(
                num_stages=req.num_stages, layer_ranges=split.layer_ranges, sample_source="fixed", sample_size=0
            )
        if req.sample_lengths is not None:
            samples = [("sample_lengths", Batch.from_lengths(list(req.sample_lengths)))]
        else:
            raw = sample_synthetic(
                self.settings.default_sample_dataset,
                self.settings.default_sample_size,
                np.random.default_rng(0),
            )
            samples = [("synthetic", Batch.from_lengths([min(n, cap) for n in raw])) for cap in DEFAULT_SAMPLE_MAX_LENS]
        tried: list[StageCandidate] = []
        for source, batch in samples:
            results = await asyncio.gather(
                *(self._try_stages(batch, cluster, model, req, time_limit, p) for p in candidates)
            )
            tried = [c for c, _ in results]
            feasible = [(c, plan) for c, plan in results if plan is not None]
            if feasible:
                _, plan = min(feasible, key=lambda cp: (cp[1].predicted.iteration_s, cp[0].num_stages))
                return JobDecisions(
                    num_stages=plan.pipeline.num_stages,
                    layer_ranges=plan.pipeline.layer_ranges,
                    sample_source=source,  # type: ignore[arg-type]
                    sample_size=len(batch.lengths),
                    candidates=tried,
                )
        reasons = "; ".join(f"P={c.num_stages}: {c.message}" for c in tried)
        raise ApiError(
            422, "infeasible", f"no pipeline degree of {candidates} can run the sample batch ({reasons})",
            field="sample_lengths" if req.sample_lengths is not None else "cluster",
        )  # fmt: skip

    async def _try_stages(
        self, batch: Batch, cluster: ClusterSpec, model: ModelSpec, req: JobCreate, time_limit: float, p: int
    ) -> tuple[StageCandidate, Plan | None]:
        try:
            plan = await self.solve(
                "job_decision",
                batch=batch,
                cluster=cluster,
                model=model,
                strategy=req.strategy,
                options=req.options,
                profile=req.profile,
                time_limit_s=time_limit,
                solver=req.solver,
                num_stages=p,
            )
        except PlanningError as exc:
            return StageCandidate(num_stages=p, feasible=False, message=str(exc)), None
        if plan.pipeline.num_stages != p:  # a strategy that fixes its own P (e.g. P = 1) ignored the request
            msg = f"strategy {req.strategy} planned P={plan.pipeline.num_stages} instead"
            return StageCandidate(num_stages=p, feasible=False, message=msg), None
        return (
            StageCandidate(
                num_stages=p,
                feasible=True,
                iteration_s=plan.predicted.iteration_s,
                solver_status=plan.solver.status.value,
            ),
            plan,
        )

    async def job(self, job_id: str) -> JobContext:
        """The job's planning context; 404 when it was never registered."""
        ctx = self._jobs.get(job_id)
        if ctx is None:
            record = await self.io(self.store.get_job, job_id)
            if record is None:
                raise ApiError(404, "not_found", f"job {job_id!r} does not exist", field="job_id")
            ctx = JobContext.from_spec(job_id, record.spec, record.decisions)
            self._jobs[job_id] = ctx
        return ctx

    # per-step plans ---------------------------------------------------------------------------------
    async def plan_for_step(self, job: JobContext, req: StepPlanRequest) -> tuple[bytes, PlanSource]:
        """The plan for (job, step): stored, coalesced with an identical in-flight solve, or solved now."""
        check_sequence_count(len(req.lengths), self.settings, "lengths")
        if req.step > MAX_STEP:
            raise ApiError(422, "invalid_input", f"step must be at most {MAX_STEP}", field="step")
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

    async def _plan_step(self, job: JobContext, step: int, batch: Batch, fp: str) -> tuple[bytes, PlanSource]:
        stored = await self.io(self.store.get_plan, job.job_id, step)
        if stored is not None:
            if stored.batch_fingerprint != fp:
                self.metrics.conflicts.inc()
                raise _step_conflict(job.job_id, step)
            self.metrics.cache_hits.inc()
            return stored.plan_json, "store"
        latest = await self.io(self.store.latest_profile, job.job_id)
        profile = CostProfile.model_validate(latest[1]) if latest else None
        plan = await self.solve(
            "job_step",
            batch=batch,
            cluster=job.cluster,
            model=job.model,
            strategy=job.strategy,
            options=job.options,
            profile=profile,
            time_limit_s=job.time_limit_s,
            solver=job.solver,
            num_stages=job.num_stages,
            step=step,
            job_id=job.job_id,
        )
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


def _step_conflict(job_id: str, step: int) -> ApiError:
    return ApiError(
        409, "conflict", f"job {job_id} step {step} is already planned for a different batch; a step's batch "
        "cannot change (use a new step number)", field="lengths",
    )  # fmt: skip
