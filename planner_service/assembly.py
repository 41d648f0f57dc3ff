"""From a strategy's layout decisions to a complete, simulated `Plan`.

Strategies decide the pipeline split and, per lane, the SP degree, position, chunks and
recompute counts. Everything else (ranks, schedules, predictions, fingerprints, the id) is
derived here the same way for every strategy, so strategies compare apples to apples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from planner_service.context import PlanningContext
from planner_service.schedules import build_schedule
from planner_service.simulator import SimulationResult, simulate
from proto import (
    Chunk,
    ClusterSpec,
    Lane,
    PipelineSpec,
    Plan,
    Predicted,
    SolverInfo,
)
from proto.fingerprint import fingerprint
from proto.topology import Topology


@dataclass(frozen=True, kw_only=True, slots=True)
class LaneDraft:
    """A strategy's decisions for one lane."""

    sp_degree: int
    offset: int
    """First SP position inside each stage block (a multiple of sp_degree)."""
    chunks: tuple[Chunk, ...]
    recompute: tuple[tuple[int, ...], ...]
    """recompute[stage][chunk]: layers of that stage recomputed for that chunk."""


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
    """Whether the simulated peak of every device stays within the cluster's device memory."""
    return max(plan.predicted.peak_memory_bytes, default=0.0) <= cluster.device_memory_bytes
