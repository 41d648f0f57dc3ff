"""The job-level decisions of a run, made once on rank 0: the pipeline degree P and where plans come from.

P is fixed for the whole job (changing it moves weights). It comes from, in order: the checkpoint being
resumed, `--stages`, the planner service's choice when the job registers (from the job's own first batch),
or the same choice made in-process (`planner_service.pipeline_degree.choose_pipeline_degree`) when the
planner is local or the service cannot be reached. One function serves `helix train` and `helix verify`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

from executor.train.config import TrainConfig
from executor.train.plan_source import (
    JobPlanning,
    JobRequest,
    LocalPlanSource,
    PlanSource,
    ServicePlanSource,
    plan_in_process,
    register_job,
)
from proto import Batch, Plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobStart:
    source: PlanSource
    job: JobPlanning
    job_id: str | None
    how: str
    """How P was decided, for the log."""


def job_request(config: TrainConfig) -> JobRequest:
    return JobRequest(
        cluster=config.cluster,
        model=config.model,
        strategy=config.strategy,
        options=config.options,
        solver=config.solver,
        time_limit_s=config.time_limit_s,
        num_stages=config.stages,
        profile=config.profile,
    )


def choose_stages_in_process(request: JobRequest, sample: Batch) -> tuple[int, list[tuple[int, int]], str]:
    """The job's P and layer split as the service would choose them: fixed, else those of the fastest feasible
    plan of the sample."""
    from planner_service.pipeline_degree import choose_pipeline_degree

    def plan_at(batch: Batch, num_stages: int) -> Plan:
        return plan_in_process(replace(request, num_stages=num_stages, layer_ranges=None), 0, batch)

    choice = choose_pipeline_degree(
        cluster=request.cluster,
        model=request.model,
        strategy=request.strategy,
        plan_at=plan_at,
        sample_lengths=sample.lengths,
        num_stages=request.num_stages,
    )
    tried = ", ".join(
        f"P={t.num_stages}: {t.iteration_s:.3f} s" if t.iteration_s is not None else f"P={t.num_stages}: infeasible"
        for t in choice.trials
    )
    how = f"chosen in-process from the first batch ({tried})" if tried else "fixed"
    return choice.num_stages, list(choice.layer_ranges), how


def start_job(
    config: TrainConfig,
    first_batch: Batch,
    *,
    resumed_stages: int | None,
    resumed_job_id: str | None,
    resumed_layer_ranges: list[tuple[int, int]] | None = None,
) -> JobStart:
    """Rank 0: decide P and the layer split (or take them from the checkpoint) and open the plan source."""
    request = job_request(config)
    if resumed_stages is not None:
        ranges = tuple((a, b) for a, b in resumed_layer_ranges) if resumed_layer_ranges is not None else None
        request = replace(request, num_stages=resumed_stages, layer_ranges=ranges)
    split: list[tuple[int, int]] | None = None
    if not config.uses_service:
        if request.num_stages is not None:
            stages, how = request.num_stages, "fixed"
        else:
            stages, split, how = choose_stages_in_process(request, first_batch)
        job = request.with_stages(stages, split)
        return JobStart(LocalPlanSource(job, calibrate=config.calibrate), job, None, how)

    from planner_service.client import PlannerApiError, PlannerClient

    client = PlannerClient(config.planner, token=_api_token(), timeout=config.deadline_s, retries=2, backoff_s=0.2)
    job_id = resumed_job_id
    how = "from the checkpoint" if resumed_stages is not None else "fixed"
    if job_id is None:
        try:
            public = register_job(
                client, request, sample_lengths=first_batch.lengths if request.num_stages is None else None
            )
            job_id = public.job_id
            stages, split = public.decisions.num_stages, list(public.decisions.layer_ranges)
            if request.num_stages is None:
                how = f"chosen by the planner service from the first batch ({public.decisions.sample_size} sequences)"
        except PlannerApiError as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                client.close()
                raise  # the service refused the job itself (an unknown strategy, a bad spec): a user error
            log.warning("planner service unavailable at start (%s); choosing P in-process", exc)
            stages = request.num_stages or 0
            if not stages:
                stages, split, how = choose_stages_in_process(request, first_batch)
    else:
        stages = request.num_stages or 0
    assert stages >= 1, "P must be known by now"
    job = request.with_stages(stages, split)
    return JobStart(ServicePlanSource(client, job_id, job, deadline_s=config.deadline_s), job, job_id, how)


def _api_token() -> str | None:
    token = os.environ.get("HELIX_API_TOKEN", "").strip()
    return token or None
