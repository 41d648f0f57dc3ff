"""The families of layouts the dynamic strategies propose, each with an estimate of its simulated time.

- `uniform_proposals`: every uniform SP x PP layout (one SP degree for every lane) the longest sequence fits;
  P > 1 is InfiniPipe's space (sliced), P = 1 the uniform Ulysses lanes without a pipeline.
- `flexible_proposals`: lanes of different sizes chosen by the lane ILP, for every candidate P (P = 1 unsliced).
- `single_stage_flexible_proposal`: FlexSP's layout (the lane ILP on FlexSP's own cost model, P = 1,
  lane-wide checkpointing), which `helix` also builds exactly as `flexsp` does.
- `seeded_proposal`: the lanes of a plan another builder made (the best static layout), rebuilt with
  balanced chunks and adaptive recompute, so the improvement phase can start from it.

Strategies pick and combine families (`helix` takes them all); building and searching are in `search`.
"""

from __future__ import annotations

import functools

import numpy as np

from planner_service.budget import UNITS_PER_SEQUENCE_PASS, UNITS_PER_SOLVER_CALL, solver_units
from planner_service.context import PlanningContext, options_that_fit
from planner_service.layout.flexible_lanes import FlexibleLanes, flexible_lanes, lane_sizes_text
from planner_service.layout.lanes import LaneSpec, uniform_lanes
from planner_service.layout.layer_split import SplitChoice, job_split
from planner_service.layout.memory_fit import sequence_fits
from planner_service.layout.recompute import RecomputeMode
from planner_service.layout.work_model import (
    BACKWARD_SHARE,
    SimulatedWork,
    SyncExposure,
    simulated_work,
    work_model,
)
from planner_service.search import (
    CANDIDATES_BUILT,
    MAX_DYNAMIC_PIPELINE_DEGREE,
    Proposal,
    Recipe,
    SearchSession,
    chunkings_for,
)
from planner_service.solvers.lane_assignment_milp import MAX_PROBES
from proto import PipelineSpec, Plan, SolverInfo, SolverStatus
from proto.topology import valid_sp_degrees


def dynamic_pipeline_degrees(ctx: PlanningContext, *, include_one: bool) -> list[int]:
    """The job's fixed P, else every candidate P up to `MAX_DYNAMIC_PIPELINE_DEGREE` (P = 1 if asked)."""
    if ctx.num_stages:
        return [ctx.num_stages] if include_one or ctx.num_stages > 1 else []
    return [p for p in ctx.pipeline_degrees(max_degree=MAX_DYNAMIC_PIPELINE_DEGREE) if include_one or p > 1]


def estimate_lanes(ctx: PlanningContext, pipeline: PipelineSpec, lanes: list[LaneSpec], *, sliced: bool) -> float:
    """Estimated simulated time of lanes: the busiest lane's `SimulatedWork` (compute, all-to-alls, forced
    recompute, fill and drain, chunk overheads) plus the collectives its last backward op cannot hide."""
    knob = chunkings_for(pipeline.num_stages)[0].chunks_per_stage
    exposure = SyncExposure.of(ctx.cost, pipeline)
    models: dict[int, SimulatedWork] = {}
    worst = 0.0
    for lane in lanes:
        s = lane.sp_degree
        if s not in models:
            models[s] = simulated_work(ctx.cost, pipeline, s, sliced=sliced, chunks_per_stage=knob, sync_exposed_s=0)
        if lane.items:
            work = float(models[s](np.array([n for _, n in lane.items], dtype=np.float64)).sum())
            last_op = BACKWARD_SHARE * work / (knob * pipeline.num_stages * models[s].stretch)
            worst = max(worst, work + models[s].chunk_overhead_s + exposure.exposed_s(last_op))
    ctx.budget.charge(UNITS_PER_SEQUENCE_PASS * len(ctx.batch.lengths))
    return worst


def uniform_recipe(ctx: PlanningContext, pipeline: PipelineSpec, sp_degree: int, *, strategy: str, note: str) -> Recipe:
    """Every lane of size s, sequences dealt longest-processing-time first by the work model."""
    p = pipeline.num_stages
    lanes = uniform_lanes(ctx, pipeline, sp_degree, work_model(ctx.cost, pipeline, sp_degree))
    return Recipe(
        ctx=ctx,
        pipeline=pipeline,
        lanes=tuple(lanes),
        strategy=strategy,
        chunking=chunkings_for(p)[0],
        sliced=p > 1,
        recompute="adaptive",
        solver=SolverInfo(backend="enumeration", status=SolverStatus.FEASIBLE, message=note),
    )


def uniform_proposals(
    ctx: PlanningContext, *, strategy: str, degrees: list[int], splits: SplitChoice = job_split
) -> list[Proposal]:
    """Every uniform (P, s) layout of `degrees` (at each layer split of `splits`) the longest sequence fits, with its
    estimate: the average lane's `SimulatedWork` or the costliest sequence's, whichever is larger (lanes are dealt
    only when built)."""
    longest = max(ctx.batch.lengths)
    lengths = np.array(ctx.batch.lengths, dtype=np.float64)
    out: list[Proposal] = []
    for pipeline in (split for p in degrees for split in splits(ctx, p)):
        p = pipeline.num_stages
        p_ctx = options_that_fit(ctx, pipeline)
        sliced = p > 1
        block = p_ctx.cost.dp_size(pipeline)
        exposure = SyncExposure.of(p_ctx.cost, pipeline)
        knob = chunkings_for(p)[0].chunks_per_stage
        for s in valid_sp_degrees(ctx.model, block):
            if not sequence_fits(p_ctx.cost, pipeline, longest, s, sliced=sliced):
                continue
            model = simulated_work(p_ctx.cost, pipeline, s, sliced=sliced, chunks_per_stage=knob, sync_exposed_s=0)
            work = model(lengths)
            lane_work = max(float(work.sum()) / (block // s), float(work.max()))
            last_op = BACKWARD_SHARE * lane_work / (knob * p * model.stretch)
            estimate = lane_work + model.chunk_overhead_s + exposure.exposed_s(last_op)
            note = f"uniform SP {s} x P {p}{split_note(pipeline)} (estimate {estimate:.4f} s)"
            out.append(
                Proposal(
                    estimate,
                    functools.partial(uniform_recipe, p_ctx, pipeline, s, strategy=strategy, note=note),
                    chunkings_for(p),
                    p,
                    ("uniform", p, s, split_key(pipeline)),
                )
            )
    ctx.budget.charge(UNITS_PER_SEQUENCE_PASS * len(lengths) * len(out))
    return out


def lanes_recipe(
    session: SearchSession,
    ctx: PlanningContext,
    pipeline: PipelineSpec,
    *,
    strategy: str,
    fidelity: bool,
    share: float,
    recompute: RecomputeMode = "adaptive",
) -> tuple[Recipe, FlexibleLanes] | None:
    """The lane ILP's layout at one split as a recipe (None when some sequence fits no lane, or when it could
    not end before the safety net), charged."""
    p = pipeline.num_stages
    sliced = p > 1
    setup = UNITS_PER_SEQUENCE_PASS * len(ctx.batch.lengths)  # bucketing and dealing every sequence
    if not session.budget.affordable(setup + UNITS_PER_SOLVER_CALL * MAX_PROBES):
        return None
    found = flexible_lanes(
        ctx,
        pipeline,
        sliced=sliced,
        limits=session.budget.solver_limits(share),
        fidelity=fidelity,
        chunks_per_stage=chunkings_for(p)[0].chunks_per_stage,
    )
    if found is None:
        return None
    sol = found.solution
    session.budget.charge(solver_units(sol.deterministic_s, sol.probes, sol.entries) + setup)
    model = "simulator-fidelity" if fidelity else "work-model"
    recipe = Recipe(
        ctx=ctx,
        pipeline=pipeline,
        lanes=tuple(found.lanes),
        strategy=strategy,
        chunking=chunkings_for(p)[0],
        sliced=sliced,
        recompute=recompute,
        solver=found.solver_info(extra=f"; P={p}{split_note(pipeline)}, {model} lane ILP"),
    )
    return recipe, found


def flexible_proposals(
    session: SearchSession,
    *,
    strategy: str,
    degrees: list[int],
    fidelity: bool = True,
    splits: SplitChoice = job_split,
) -> list[Proposal]:
    """Lane-ILP layouts for every P of `degrees` at each layer split of `splits`, the ILP charging what the
    simulator charges (`fidelity`)."""
    ctx = session.ctx
    out: list[Proposal] = []
    pipelines = [split for p in degrees for split in splits(ctx, p)]
    for i, pipeline in enumerate(pipelines):
        p = pipeline.num_stages
        p_ctx = options_that_fit(ctx, pipeline)
        made = lanes_recipe(
            session, p_ctx, pipeline, strategy=strategy, fidelity=fidelity, share=0.5 / max(1, len(pipelines) - i)
        )
        if made is None:
            continue
        recipe, found = made
        estimate = estimate_lanes(p_ctx, pipeline, found.lanes, sliced=p > 1) if fidelity else found.estimate_s
        out.append(Proposal.of(estimate, recipe, chunkings_for(p), ("flexible", p, fidelity, split_key(pipeline))))
    return out


def split_key(pipeline: PipelineSpec) -> tuple[tuple[int, int], ...]:
    """A proposal's layer split, for telling proposals apart."""
    return tuple(pipeline.layer_ranges)


def split_note(pipeline: PipelineSpec) -> str:
    """', layers 5/5/.../2' for a split other than the even one (what the plan's message says about it)."""
    if pipeline == PipelineSpec.even(pipeline.num_layers, pipeline.num_stages):
        return ""
    return ", layers " + "/".join(str(pipeline.layers_of(p)) for p in range(pipeline.num_stages))


def single_stage_flexible_proposal(
    session: SearchSession, *, strategy: str, recompute: RecomputeMode, share: float = 0.6
) -> Proposal | None:
    """FlexSP's layout: the lane ILP on its own cost model, P = 1, unsliced; None when some sequence fits no lane."""
    ctx = session.ctx
    pipeline = ctx.split_for(1)
    made = lanes_recipe(
        session,
        options_that_fit(ctx, pipeline),
        pipeline,
        strategy=strategy,
        fidelity=False,
        share=share,
        recompute=recompute,
    )
    if made is None:
        return None
    recipe, found = made
    return Proposal.of(found.estimate_s, recipe, chunkings_for(1), ("flexible", 1, False, recompute))


def seeded_proposal(ctx: PlanningContext, plan: Plan, *, strategy: str, label: str) -> Proposal:
    """The lanes of `plan` (same split, sizes and sequences) as a recipe: balanced chunks, adaptive recompute."""
    pipeline = plan.pipeline
    p_ctx = options_that_fit(ctx, pipeline)
    lengths = ctx.batch.length_of()
    lanes = []
    for lane in sorted(plan.lanes, key=lambda lane: lane.ranks[0][0]):
        seen: dict[int, None] = {}
        for chunk in lane.chunks:
            for seg in chunk.segments:
                seen.setdefault(seg.seq_id, None)
        lanes.append(LaneSpec(lane.sp_degree, tuple((i, lengths[i]) for i in seen)))
    p = pipeline.num_stages
    recipe = Recipe(
        ctx=p_ctx,
        pipeline=pipeline,
        lanes=tuple(sorted(lanes, key=lambda lane: -lane.sp_degree)),
        strategy=strategy,
        chunking=chunkings_for(p)[0],
        sliced=p > 1,
        recompute="adaptive",
        solver=SolverInfo(
            backend="local-search",
            status=SolverStatus.FEASIBLE,
            message=f"{label} ({lane_sizes_text(lanes)}, P={p})",
        ),
    )
    return Proposal.of(plan.predicted.iteration_s, recipe, chunkings_for(p), ("seeded", label, p))


def infinipipe_proposals(ctx: PlanningContext, *, strategy: str) -> list[Proposal]:
    """InfiniPipe's candidates: the `CANDIDATES_BUILT` best-estimated uniform layouts with P > 1."""
    degrees = dynamic_pipeline_degrees(ctx, include_one=False)
    ranked = sorted(uniform_proposals(ctx, strategy=strategy, degrees=degrees), key=lambda p: p.estimate_s)
    return ranked[:CANDIDATES_BUILT]
