"""What a strategy plans from: one batch, the cluster, the model, the cost model and the job's limits.

`options_that_fit` lives here because it answers a question about the context itself (which ZeRO stage the
job's options must be raised to for a pipeline split), asked by every strategy before it lays out lanes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from planner_service.budget import PlanningBudget
from planner_service.cost_model import CostModel
from proto import Batch, ClusterSpec, CostProfile, ModelSpec, PipelineSpec, PlanOptions, ZeroStage
from proto.topology import pipeline_degree_candidates


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanningContext:
    """Everything a strategy needs to plan one batch."""

    batch: Batch
    cluster: ClusterSpec
    model: ModelSpec
    cost: CostModel
    options: PlanOptions = field(default_factory=PlanOptions)
    time_limit_s: float = 2.0
    solver: str = "cpsat"
    num_stages: int | None = None
    """Pipeline degree fixed by the job (None: the strategy chooses)."""
    layer_split: PipelineSpec | None = None
    """The job's layer split at `num_stages`, when the job fixes one (its executors built their stage modules from
    it): every strategy plans on it. None: the even split, or the strategy's own choice (`helix`)."""
    defer_weight_grads: bool = True
    """The executor can run W ops (`Plan.defer_weight_grads`, its capabilities):
    `helix` then tries it on its winners."""
    budget: PlanningBudget = field(default=None)  # type: ignore[assignment]  # set in __post_init__
    """The call's work budget (deterministic units + wall-clock safety net), shared by every context derived
    from this one; by default the one `time_limit_s` gives."""

    def __post_init__(self) -> None:
        split = self.layer_split
        if split is not None and (self.num_stages != split.num_stages or split.num_layers != self.model.num_layers):
            raise ValueError(
                f"layer split {split.layer_ranges} is not a split of {self.model.num_layers} layers into "
                f"num_stages={self.num_stages} stages"
            )
        if self.budget is None:
            budget = PlanningBudget.for_limit(self.time_limit_s, num_sequences=len(self.batch.lengths))
            object.__setattr__(self, "budget", budget)

    @classmethod
    def of(
        cls,
        *,
        batch: Batch,
        cluster: ClusterSpec,
        model: ModelSpec,
        options: PlanOptions,
        profile: CostProfile | None = None,
        time_limit_s: float = 2.0,
        solver: str = "cpsat",
        num_stages: int | None = None,
        layer_split: PipelineSpec | None = None,
        budget: PlanningBudget | None = None,
        defer_weight_grads: bool = True,
    ) -> PlanningContext:
        """The context of a planning call: the cost model bound to the specs, profile and options; the budget
        of `time_limit_s` unless the caller brings its own."""
        return cls(
            batch=batch,
            cluster=cluster,
            model=model,
            cost=CostModel.from_specs(cluster, model, profile=profile, options=options),
            options=options,
            time_limit_s=time_limit_s,
            solver=solver,
            num_stages=num_stages,
            layer_split=layer_split,
            defer_weight_grads=defer_weight_grads,
            budget=budget,  # type: ignore[arg-type]  # None: __post_init__ makes the limit's
        )

    def split_for(self, num_stages: int) -> PipelineSpec:
        """The layer split at P = `num_stages`: the job's own when it fixes one, else the even split."""
        if self.layer_split is not None and self.layer_split.num_stages == num_stages:
            return self.layer_split
        return PipelineSpec.even(self.model.num_layers, num_stages)

    def pipeline_degrees(self, *, max_degree: int | None = None) -> list[int]:
        """The job's fixed P, else every candidate P (at most `max_degree`) in increasing order."""
        if self.num_stages:
            return [self.num_stages]
        return pipeline_degree_candidates(self.cluster.num_devices, self.model.num_layers, max_degree=max_degree)


MIN_ACTIVATION_SHARE = 0.25
"""A pipeline layout whose model states leave less than this share of usable memory for activations gets
the next ZeRO stage (see `options_that_fit`)."""


def options_that_fit(ctx: PlanningContext, pipeline: PipelineSpec) -> PlanningContext:
    """The context with the smallest ZeRO stage >= the job's whose model states leave room for activations.

    The job's ZeRO stage is a floor and `max_zero_stage` the ceiling: every strategy may shard model states
    further when a layout would otherwise have almost no memory for activations (ZeRO-1/2 cost the same sync
    volume as an all-reduce; the plan records the stage it needs). An executor that shards once per job sets
    the ceiling to its own stage. This is a first guess from model states alone: `zero_stage_contexts` raises
    it further when the built plan does not fit.
    """
    for stage in range(ctx.options.zero_stage, ctx.options.max_zero_stage + 1):
        raised = with_zero_stage(ctx, ZeroStage(stage))
        dp = raised.cost.dp_size(pipeline)
        states = max(raised.cost.model_state_bytes(p, pipeline, dp) for p in range(pipeline.num_stages))
        if states <= (1 - MIN_ACTIVATION_SHARE) * raised.cost.usable_memory_bytes:
            return raised
    return ctx


def with_zero_stage(ctx: PlanningContext, stage: ZeroStage) -> PlanningContext:
    """`ctx` with model states sharded to `stage`, the job's other options kept."""
    if stage == ctx.options.zero_stage:
        return ctx
    options = ctx.options.model_copy(update={"zero_stage": stage})
    return replace(ctx, options=options, cost=replace(ctx.cost, options=options))


def zero_stage_contexts(ctx: PlanningContext) -> Iterator[PlanningContext]:
    """`ctx`, then `ctx` at each higher ZeRO stage: a layout whose built plan does not fit memory is tried again
    with model states sharded further (up to the job's `max_zero_stage`) before it is discarded."""
    for stage in range(ctx.options.zero_stage, ctx.options.max_zero_stage + 1):
        yield with_zero_stage(ctx, ZeroStage(stage))
