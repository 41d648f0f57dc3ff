"""From a strategy's layout decisions to a complete, simulated `Plan`.

Strategies decide the pipeline split and, per lane, the SP degree, position, chunks and
recompute counts. Everything else (ranks, schedules, predictions, fingerprints, the id) is
derived here the same way for every strategy, so strategies compare apples to apples.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from planner_service.cost_model import CostModel
from planner_service.schedules import build_schedule
from planner_service.simulator import SimulationResult, simulate
from proto import (
    Batch,
    Chunk,
    ClusterSpec,
    Lane,
    ModelSpec,
    PipelineSpec,
    Plan,
    PlanOptions,
    Predicted,
    SolverInfo,
    ZeroStage,
)
from proto.fingerprint import fingerprint
from proto.topology import Topology


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


@dataclass(frozen=True, kw_only=True, slots=True)
class LaneDraft:
    """A strategy's decisions for one lane."""

    sp_degree: int
    offset: int
    """First SP position inside each stage block (a multiple of sp_degree)."""
    chunks: tuple[Chunk, ...]
    recompute: tuple[tuple[int, ...], ...]
    """recompute[stage][chunk]: layers of that stage recomputed for that chunk."""


MIN_ACTIVATION_SHARE = 0.25
"""A pipeline layout whose model states leave less than this share of usable memory for activations gets
the next ZeRO stage (see `options_that_fit`)."""


def options_that_fit(ctx: PlanningContext, pipeline: PipelineSpec) -> PlanningContext:
    """The context with the smallest ZeRO stage >= the job's whose model states leave room for activations.

    The job's ZeRO stage is a floor, not a ceiling: every strategy may shard model states further when a
    layout would otherwise have almost no memory for activations (ZeRO-1/2 cost the same sync volume as an
    all-reduce; the plan records the stage it needs so the executor applies it). This is a first guess from
    model states alone: `zero_stage_contexts` raises it further when the built plan does not fit.
    """
    for stage in range(ctx.options.zero_stage, 4):
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
    with model states sharded further before it is discarded."""
    for stage in range(ctx.options.zero_stage, 4):
        yield with_zero_stage(ctx, ZeroStage(stage))


def uniform_recompute(pipeline: PipelineSpec, num_chunks: int, full: bool) -> tuple[tuple[int, ...], ...]:
    """No recompute, or every layer of every stage recomputed (one policy for the whole lane)."""
    return tuple(
        tuple(pipeline.layers_of(p) if full else 0 for _ in range(num_chunks)) for p in range(pipeline.num_stages)
    )


def assemble_plan(
    ctx: PlanningContext,
    *,
    strategy: str,
    pipeline: PipelineSpec,
    drafts: Sequence[LaneDraft],
    solver: SolverInfo,
) -> tuple[Plan, SimulationResult]:
    """Build lanes with 1F1B schedules, simulate, and return the plan with its predictions and id."""
    topology = Topology.of(ctx.cluster, pipeline.num_stages)
    lanes = [
        Lane(
            lane_id=i,
            sp_degree=d.sp_degree,
            ranks=topology.lane_ranks(offset=d.offset, sp_degree=d.sp_degree),
            chunks=list(d.chunks),
            schedule=build_schedule(d.chunks, pipeline.num_stages),
            recompute=[list(r) for r in d.recompute],
        )
        for i, d in enumerate(sorted(drafts, key=lambda d: d.offset))
    ]
    draft_plan = Plan(
        strategy=strategy,
        cluster_name=ctx.cluster.name,
        model_name=ctx.model.name,
        cluster_fingerprint=fingerprint(ctx.cluster),
        model_fingerprint=fingerprint(ctx.model),
        batch_fingerprint=ctx.batch.fingerprint,
        options=ctx.options,
        pipeline=pipeline,
        lanes=lanes,
        predicted=Predicted(iteration_s=0.0, ideal_s=0.0),
        solver=solver,
    )
    result = simulate(draft_plan, ctx.batch, ctx.cost)
    return draft_plan.model_copy(update={"predicted": result.predicted}).with_id(), result


def fits_memory(plan: Plan, cluster: ClusterSpec) -> bool:
    return max(plan.predicted.peak_memory_bytes, default=0.0) <= cluster.device_memory_bytes
