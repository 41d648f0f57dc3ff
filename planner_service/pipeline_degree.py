"""The job-level choice of the pipeline degree P (DESIGN §7, step 1), once per job.

P is fixed for a job's lifetime (changing it moves weights), so it is chosen before the first step: plan a
sample batch at every candidate P and keep the fastest feasible plan, ties to the smaller P. A job without
sample lengths uses a synthetic sample, truncated at `DEFAULT_SAMPLE_MAX_LENS` in turn (longest first): the
sample only stands in for typical batches, so one too-long outlier must not make every P infeasible.

Synchronous and free of I/O so the CLI, the service and the training loop make the same decision. The
caller supplies the planner at a given P (`plan_at`, with its own strategy, options, profile and limits)
and how the per-P plans are run (`map_fn`: the builtin `map` runs them one by one; the service passes its
bounded solve pool's map so they run concurrently).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from planner_service.errors import InfeasibleWorkload, PlanningError
from planner_service.workloads import sample_synthetic
from proto import Batch, ClusterSpec, FixedLayout, ModelSpec, PipelineSpec, Plan, PlanOptions
from proto.topology import pipeline_degree_candidates

SampleSource = Literal["sample_lengths", "synthetic", "fixed"]
"""Where the batch that chose P came from ('fixed' when the caller fixed P)."""

DEFAULT_SAMPLE_MAX_LENS = (32768, 8192, 2048)
"""Truncation lengths of the synthetic sample, tried in this order until some P can run it."""
SYNTHETIC_SAMPLE_SEED = 0
"""The synthetic sample is the same for every job with the same dataset and size (reproducible decisions)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SyntheticSample:
    """The stand-in sample for a job registered without sample lengths."""

    dataset: str = "github"
    """A corpus of `planner_service.workloads.sample_synthetic`."""
    size: int = 64
    """Sequences in the sample."""


@dataclass(frozen=True, slots=True)
class DecisionSample:
    source: SampleSource
    batch: Batch


@dataclass(frozen=True, slots=True)
class DegreeTrial:
    """One candidate P planned for a sample: its plan when feasible, else why not."""

    num_stages: int
    plan: Plan | None
    message: str = ""

    @property
    def feasible(self) -> bool:
        return self.plan is not None

    @property
    def iteration_s(self) -> float | None:
        return self.plan.predicted.iteration_s if self.plan is not None else None

    @property
    def solver_status(self) -> str | None:
        return self.plan.solver.status.value if self.plan is not None else None


@dataclass(frozen=True, kw_only=True, slots=True)
class PipelineDegreeChoice:
    """The job's pipeline degree, its layer split, and the evidence it was chosen on."""

    num_stages: int
    layer_ranges: list[tuple[int, int]]
    sample_source: SampleSource
    sample_size: int
    trials: tuple[DegreeTrial, ...] = ()
    """Every candidate P tried on the deciding sample (empty when P was fixed)."""
    fixed_layout: FixedLayout | None = None
    """For a strategy with one layout per job (`megatron`): the layout the winning plan ran, tuned on the sample;
    the job keeps it in its options (`job_options`) so every later batch runs it."""

    def job_options(self, options: PlanOptions) -> PlanOptions:
        """The job's options with this choice's fixed layout (unchanged when the strategy has none)."""
        if self.fixed_layout is None:
            return options
        return options.model_copy(update={"fixed_layout": self.fixed_layout})


PlanAtDegree = Callable[[Batch, int], Plan]
"""The job's planner for a batch at a fixed pipeline degree; raises `PlanningError` when it cannot plan."""
MapFn = Callable[[Callable[[int], DegreeTrial], Sequence[int]], Iterable[DegreeTrial]]
"""Runs the per-P trials and returns them in the order of the degrees (e.g. `map`, or a pool's map)."""


def check_fixed_degree(cluster: ClusterSpec, model: ModelSpec, num_stages: int) -> None:
    """A caller-fixed P must divide the devices and leave every stage at least one layer."""
    if cluster.num_devices % num_stages or num_stages > model.num_layers:
        raise PlanningError(
            f"num_stages ({num_stages}) must divide the {cluster.num_devices} devices and be at most num_layers "
            f"({model.num_layers})",
            field="num_stages",
        )


def decision_samples(sample_lengths: Sequence[int] | None, synthetic: SyntheticSample) -> list[DecisionSample]:
    """The caller's sample, else the synthetic one truncated at each of `DEFAULT_SAMPLE_MAX_LENS`."""
    if sample_lengths is not None:
        return [DecisionSample("sample_lengths", Batch.from_lengths(list(sample_lengths)))]
    raw = sample_synthetic(synthetic.dataset, synthetic.size, np.random.default_rng(SYNTHETIC_SAMPLE_SEED))
    return [
        DecisionSample("synthetic", Batch.from_lengths([min(n, cap) for n in raw])) for cap in DEFAULT_SAMPLE_MAX_LENS
    ]


def try_degree(plan_at: PlanAtDegree, batch: Batch, num_stages: int, strategy: str) -> DegreeTrial:
    """Plan `batch` at P = `num_stages`; infeasible when the planner refuses or plans another P."""
    try:
        plan = plan_at(batch, num_stages)
    except PlanningError as exc:
        return DegreeTrial(num_stages, None, str(exc))
    if plan.pipeline.num_stages != num_stages:  # a strategy that fixes its own P (e.g. P = 1) ignored the request
        return DegreeTrial(num_stages, None, f"strategy {strategy} planned P={plan.pipeline.num_stages} instead")
    return DegreeTrial(num_stages, plan)


def fastest_feasible(trials: Sequence[DegreeTrial]) -> DegreeTrial | None:
    """The decision rule: the fastest feasible plan, ties to the smaller P."""
    scored = [(t.plan.predicted.iteration_s, t.num_stages, t) for t in trials if t.plan is not None]
    return min(scored, key=lambda st: st[:2])[2] if scored else None


def choose_pipeline_degree(
    *,
    cluster: ClusterSpec,
    model: ModelSpec,
    strategy: str,
    plan_at: PlanAtDegree,
    sample_lengths: Sequence[int] | None = None,
    num_stages: int | None = None,
    synthetic: SyntheticSample | None = None,
    map_fn: MapFn = map,
) -> PipelineDegreeChoice:
    """P for a job: `num_stages` when the caller fixes it, else the fastest feasible candidate on the sample.

    Raises `PlanningError` (field num_stages) for a fixed P that cannot split the cluster, and
    `InfeasibleWorkload` when no candidate P can run any sample.
    """
    candidates = pipeline_degree_candidates(cluster.num_devices, model.num_layers)
    if num_stages is not None:
        check_fixed_degree(cluster, model, num_stages)
        split = PipelineSpec.even(model.num_layers, num_stages)
        return PipelineDegreeChoice(
            num_stages=num_stages, layer_ranges=split.layer_ranges, sample_source="fixed", sample_size=0
        )
    trials: tuple[DegreeTrial, ...] = ()
    for sample in decision_samples(sample_lengths, synthetic or SyntheticSample()):
        trials = tuple(map_fn(functools.partial(try_degree, plan_at, sample.batch, strategy=strategy), candidates))
        best = fastest_feasible(trials)
        if best is not None and best.plan is not None:
            return PipelineDegreeChoice(
                num_stages=best.plan.pipeline.num_stages,
                layer_ranges=best.plan.pipeline.layer_ranges,
                sample_source=sample.source,
                sample_size=len(sample.batch.lengths),
                trials=trials,
                fixed_layout=best.plan.options.fixed_layout,
            )
    reasons = "; ".join(f"P={t.num_stages}: {t.message}" for t in trials)
    raise InfeasibleWorkload(
        f"no pipeline degree of {candidates} can run the sample batch ({reasons})",
        field="sample_lengths" if sample_lengths is not None else "cluster",
    )
