"""What a solve worker process runs: one plan, or one job's pipeline-degree decision, greedy first.

Why greedy first: the service promises an answer within the request's time limit plus a small margin,
whatever the strategy does. Before the strategy runs, the worker sends the greedy plan (or, for a job
decision, the decision made on greedy plans) to the service as a provisional result; if the strategy has
not finished when the limit runs out, the service abandons the worker (kills the process) and answers
with the provisional result, marked `timeout-fallback`. The strategy gets what is left of the limit.

Tasks are frozen, picklable dataclasses: the service sends them to worker processes. The results carry
the plan's exact JSON bytes and their gzip form, made in the worker so the service process only stores
and sends bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from planner_service.api.schemas import JobDecisions, JobSpec, StageCandidate
from planner_service.errors import PlanningError
from planner_service.pipeline_degree import PipelineDegreeChoice, SyntheticSample, choose_pipeline_degree
from planner_service.store import compress_plan
from proto import Batch, ClusterSpec, CostProfile, ModelSpec, Plan, PlanOptions, SolverInfo, SolverStatus

SolveKind = Literal["stateless", "job_step", "job_decision"]
"""What a solve is for (the `kind` label of the solve metrics)."""
FALLBACK_STRATEGY = "greedy"
MIN_STRATEGY_S = 0.05
"""The least time a strategy is given after the greedy plan, even when greedy used up the limit (the
service's deadline still bounds the whole call)."""

Emit = Callable[[Any], None]
"""Sends a provisional result from the worker to the service."""


class SolveFn(Protocol):
    """The planner library call a worker runs: `planner_service.planner.make_plan` (tests pass picklable
    wrappers, e.g. to hold, count or hang solves)."""

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
        layer_ranges: list[tuple[int, int]] | None,
        step: int | None,
        job_id: str | None,
    ) -> Plan: ...


@dataclass(frozen=True, slots=True)
class PlanResult:
    """A plan as the service stores and returns it."""

    plan_json: bytes
    plan_gz: bytes
    plan_id: str
    predicted_s: float
    status: str

    @classmethod
    def of(cls, plan: Plan) -> PlanResult:
        data = plan.model_dump_json().encode()
        return cls(data, compress_plan(data), plan.plan_id, plan.predicted.iteration_s, plan.solver.status.value)


def timeout_fallback(greedy: Plan, strategy: str, time_limit_s: float) -> Plan:
    """The greedy plan, labelled as the answer to a `strategy` request that ran out of time."""
    info = SolverInfo(
        backend=greedy.solver.backend,
        status=SolverStatus.TIMEOUT_FALLBACK,
        solve_s=greedy.solver.solve_s,
        message=f"the {strategy} strategy did not finish within the {time_limit_s:g} s limit; greedy plan",
    )
    return greedy.model_copy(update={"strategy": strategy, "solver": info}).with_id()


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanTask:
    """One planner call: what it is for, the spec it plans with, the batch and the job context."""

    kind: SolveKind
    spec: JobSpec
    batch: Batch
    solve_fn: SolveFn
    profile: CostProfile | None = None
    """The job's latest measured profile, or the request's; None: the preset's."""
    num_stages: int | None = None
    """The pipeline degree to plan at; None: the strategy chooses."""
    layer_ranges: list[tuple[int, int]] | None = None
    """The job's layer split at `num_stages` (its executors' stage modules); None: the strategy chooses."""
    step: int | None = None
    job_id: str | None = None

    @property
    def strategy(self) -> str:
        return self.spec.strategy

    def plan_with(self, strategy: str, time_limit_s: float) -> Plan:
        spec = self.spec
        return self.solve_fn(
            batch=self.batch,
            cluster=spec.cluster,
            model=spec.model,
            strategy=strategy,
            options=spec.options,
            profile=self.profile,
            time_limit_s=time_limit_s,
            solver=spec.solver,
            num_stages=self.num_stages,
            layer_ranges=self.layer_ranges,
            step=self.step,
            job_id=self.job_id,
        )

    def run(self, emit: Emit) -> PlanResult:
        """Greedy (sent as the provisional answer), then the strategy with the time left."""
        started = time.perf_counter()
        limit = self.spec.time_limit_s
        if self.strategy != FALLBACK_STRATEGY:
            greedy = self.plan_with(FALLBACK_STRATEGY, limit)
            emit(PlanResult.of(timeout_fallback(greedy, self.strategy, limit)))
        left = max(MIN_STRATEGY_S, limit - (time.perf_counter() - started))
        return PlanResult.of(self.plan_with(self.strategy, left))


def job_decisions(choice: PipelineDegreeChoice, *, decided_by: str) -> JobDecisions:
    """The wire form of the library's pipeline-degree choice."""
    return JobDecisions(
        num_stages=choice.num_stages,
        layer_ranges=choice.layer_ranges,
        sample_source=choice.sample_source,
        sample_size=choice.sample_size,
        decided_by=decided_by,
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


@dataclass(frozen=True, kw_only=True, slots=True)
class DecisionTask:
    """A job's pipeline-degree decision: the library's `choose_pipeline_degree`, made first on greedy plans
    (the provisional answer) and then with the job's strategy, each trial given an equal share of the time
    left."""

    spec: JobSpec
    sample_lengths: tuple[int, ...] | None
    synthetic: SyntheticSample
    solve_fn: SolveFn
    profile: CostProfile | None = None
    max_sequence_stages: int | None = None
    """Refuse a trial whose sequences x pipeline degree exceed this (the service's size limit)."""

    def _choose(self, strategy: str, trial_limit_s: Callable[[], float]) -> PipelineDegreeChoice:
        spec = self.spec

        def plan_at(batch: Batch, num_stages: int) -> Plan:
            if self.max_sequence_stages is not None and len(batch.lengths) * num_stages > self.max_sequence_stages:
                raise PlanningError(
                    f"{len(batch.lengths)} sequences x P={num_stages} exceed the service's limit of "
                    f"{self.max_sequence_stages} (HELIX_MAX_SEQUENCE_STAGES)"
                )
            task = PlanTask(
                kind="job_decision",
                spec=spec,
                batch=batch,
                solve_fn=self.solve_fn,
                profile=self.profile,
                num_stages=num_stages,
            )
            return task.plan_with(strategy, trial_limit_s())

        return choose_pipeline_degree(
            cluster=spec.cluster,
            model=spec.model,
            strategy=strategy,
            plan_at=plan_at,
            sample_lengths=self.sample_lengths,
            synthetic=self.synthetic,
        )

    def run(self, emit: Emit) -> JobDecisions:
        started = time.perf_counter()
        limit = self.spec.time_limit_s
        greedy = self._choose(FALLBACK_STRATEGY, lambda: limit)
        if self.spec.strategy == FALLBACK_STRATEGY:
            return job_decisions(greedy, decided_by=FALLBACK_STRATEGY)
        emit(job_decisions(greedy, decided_by=f"{FALLBACK_STRATEGY} (timeout-fallback)"))
        trials = max(1, len(greedy.trials))

        def share() -> float:
            return max(MIN_STRATEGY_S, (limit - (time.perf_counter() - started)) / trials)

        return job_decisions(self._choose(self.spec.strategy, share), decided_by=self.spec.strategy)


SolveTask = PlanTask | DecisionTask
