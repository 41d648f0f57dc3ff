"""From a strategy's layout decisions to a complete, simulated `Plan`.

Strategies decide the pipeline split and, per lane, the SP degree, position, chunks and
recompute counts. Everything else (ranks, schedules, predictions, fingerprints, the id) is
derived here the same way for every strategy, so strategies compare apples to apples.

Searches evaluate many plans and keep one, so `simulate_lanes` prices lanes already built (no Gantt
events, no plan id, charged to the call's budget) and `finish_plan` gives the kept one its id.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from planner_service.budget import UNITS_PER_LANE_OP, PlanningBudget, simulation_units
from planner_service.context import PlanningContext
from planner_service.schedules import build_schedule
from planner_service.simulator import simulate
from proto import (
    Batch,
    Chunk,
    ClusterSpec,
    Lane,
    PipelineSpec,
    Plan,
    Predicted,
    SolverInfo,
    SolverStatus,
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
    warmup_groups: int = 0
    """Slice groups each stage keeps in flight beyond 1F1B's chunks (`schedules.build_schedule`)."""


def lane_of_draft(topology: Topology, draft: LaneDraft, lane_id: int = 0) -> Lane:
    """The proto lane of a draft: ranks from the topology, the 1F1B schedule of its chunks (at its warm-up)."""
    return Lane(
        lane_id=lane_id,
        sp_degree=draft.sp_degree,
        ranks=topology.lane_ranks(offset=draft.offset, sp_degree=draft.sp_degree),
        chunks=list(draft.chunks),
        schedule=build_schedule(draft.chunks, topology.num_stages, draft.warmup_groups),
        recompute=[list(r) for r in draft.recompute],
    )


def lanes_of_drafts(ctx: PlanningContext, pipeline: PipelineSpec, drafts: Sequence[LaneDraft]) -> list[Lane]:
    """Proto lanes of a strategy's drafts, in rank order."""
    topology = Topology.of(ctx.cluster, pipeline.num_stages)
    return [lane_of_draft(topology, d, i) for i, d in enumerate(sorted(drafts, key=lambda d: d.offset))]


def assemble_plan(
    ctx: PlanningContext,
    *,
    strategy: str,
    pipeline: PipelineSpec,
    drafts: Sequence[LaneDraft],
    solver: SolverInfo,
    budget: PlanningBudget | None = None,
    header: PlanHeader | None = None,
) -> Plan:
    """Build lanes with 1F1B schedules and simulate: the plan with its predictions (`finish_plan` adds the id)."""
    lanes = lanes_of_drafts(ctx, pipeline, drafts)
    if budget is not None:
        budget.charge(UNITS_PER_LANE_OP * sum(len(ops) for lane in lanes for ops in lane.schedule))
    return simulate_lanes(
        ctx, strategy=strategy, pipeline=pipeline, lanes=lanes, solver=solver, budget=budget, header=header
    )


@dataclass(frozen=True, slots=True)
class PlanHeader:
    """The fields every plan of one planning call shares (fingerprints are hashed once per call)."""

    cluster_name: str
    model_name: str
    cluster_fingerprint: str
    model_fingerprint: str
    batch_fingerprint: str

    @classmethod
    def of(cls, ctx: PlanningContext) -> PlanHeader:
        return cls(
            cluster_name=ctx.cluster.name,
            model_name=ctx.model.name,
            cluster_fingerprint=fingerprint(ctx.cluster),
            model_fingerprint=fingerprint(ctx.model),
            batch_fingerprint=ctx.batch.fingerprint,
        )


def simulate_lanes(
    ctx: PlanningContext,
    *,
    strategy: str,
    pipeline: PipelineSpec,
    lanes: Sequence[Lane],
    solver: SolverInfo,
    budget: PlanningBudget | None = None,
    header: PlanHeader | None = None,
    batch: Batch | None = None,
) -> Plan:
    """The plan of `lanes` (numbered in rank order) with its simulated predictions, without an id yet.

    `batch` (default: the context's) may be the part of the batch the lanes run, to price some lanes alone."""
    ordered = sorted(lanes, key=lambda lane: lane.ranks[0][0])
    numbered = [lane if lane.lane_id == i else lane.model_copy(update={"lane_id": i}) for i, lane in enumerate(ordered)]
    head = header or PlanHeader.of(ctx)
    plan = Plan(
        strategy=strategy,
        cluster_name=head.cluster_name,
        model_name=head.model_name,
        cluster_fingerprint=head.cluster_fingerprint,
        model_fingerprint=head.model_fingerprint,
        batch_fingerprint=head.batch_fingerprint,
        options=ctx.options,
        pipeline=pipeline,
        lanes=numbered,
        predicted=Predicted(iteration_s=0.0, ideal_s=0.0),
        solver=solver,
    )
    priced = batch or ctx.batch
    result = simulate(plan, priced, ctx.cost, record_events=False)
    if budget is not None:
        ops = sum(len(ops) for lane in numbered for ops in lane.schedule)
        budget.charge(simulation_units(len(numbered), ops, len(priced.lengths)))
    return plan.model_copy(update={"predicted": result.predicted})


def heuristic_record(backend: str, started: float, message: str) -> SolverInfo:
    """The solver record of a plan built by a rule, not a search (`started`: `time.perf_counter()` at the
    call's start)."""
    return SolverInfo(
        backend=backend, status=SolverStatus.HEURISTIC, solve_s=time.perf_counter() - started, message=message
    )


def finish_plan(plan: Plan, solver: SolverInfo | None = None) -> Plan:
    """The kept plan with its final solver record and its content id."""
    return (plan.model_copy(update={"solver": solver}) if solver is not None else plan).with_id()


def fits_memory(plan: Plan, cluster: ClusterSpec) -> bool:
    """Whether the simulated peak of every device stays within the cluster's device memory."""
    return max(plan.predicted.peak_memory_bytes, default=0.0) <= cluster.device_memory_bytes
