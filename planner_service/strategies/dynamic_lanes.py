"""Shared machinery of the dynamic strategies (flexsp, infinipipe, helix).

1. Per lane size s, a per-sequence work model w_s(L) (forward+backward of one stage, compute / s
   plus Ulysses all-to-alls at the bandwidth of that size's placement) and a memory-fit test.
2. The lane ILP (`solvers.lane_assignment_milp`) over length buckets picks how many lanes of each
   size and how many sequences of each bucket go to each size; sequences are then dealt to the
   lanes of a size longest-processing-time first.
3. Each lane's sequences become chunks (`elastic_pipeline`), a 1F1B schedule, and recompute counts
   (`solvers.recompute_ilp`, or one lane-wide policy for flexsp), then the whole plan is simulated.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from planner_service.cost_model import ChunkShape, CostModel
from planner_service.plan_assembly import LaneDraft, PlanningContext, assemble_plan, fits_memory, zero_stage_contexts
from planner_service.schedules import build_schedule
from planner_service.simulator.memory_timeline import stage_memory
from planner_service.solvers.bucketing import Bucket
from planner_service.solvers.lane_assignment_milp import LaneProblem, LaneSolution
from planner_service.solvers.recompute_ilp import choose_recompute, greedy_recompute
from planner_service.strategies.elastic_pipeline import build_lane_chunks, memory_token_cap, sequence_fits
from proto import Chunk, Lane, PipelineSpec, Plan, SolverInfo

RecomputeMode = Literal["adaptive", "lane-uniform"]
Items = tuple[tuple[int, int], ...]
"""(seq_id, length) pairs of one lane."""


@dataclass(frozen=True, slots=True)
class LaneSpec:
    sp_degree: int
    items: Items


@dataclass(frozen=True, slots=True)
class WorkModel:
    """w_s(L) = a*L^2 + b*L + c: per-stage fwd+bwd seconds of a whole sequence on a lane of size s."""

    sp_degree: int
    a: float
    b: float
    c: float

    def __call__(self, lengths: np.ndarray) -> np.ndarray:
        return (self.a * lengths + self.b) * lengths + self.c


def work_model(cost: CostModel, pipeline: PipelineSpec, sp_degree: int) -> WorkModel:
    """Fit the quadratic exactly from three evaluations of the cost model (its terms are quadratic in L)."""
    layers = max(pipeline.layers_of(p) for p in range(pipeline.num_stages))
    spans = sp_degree > cost.cluster.devices_per_node
    xs = [1024.0 * sp_degree, 2048.0 * sp_degree, 4096.0 * sp_degree]
    ys = [
        cost.chunk_cost_s(
            ChunkShape.from_segments([(0, int(x))]), sp_degree=sp_degree, num_layers=layers, spans_nodes=spans
        )
        for x in xs
    ]
    a, b, c = np.polyfit(xs, ys, 2)
    return WorkModel(sp_degree, float(a), float(b), float(c))


def lane_problem(
    ctx: PlanningContext,
    pipeline: PipelineSpec,
    buckets: Sequence[Bucket],
    sizes: Sequence[int],
    *,
    sliced: bool,
) -> tuple[LaneProblem, dict[int, WorkModel]]:
    lengths = np.array(ctx.batch.lengths, dtype=np.float64)
    models = {s: work_model(ctx.cost, pipeline, s) for s in sizes}
    fits_cache: dict[tuple[int, int], bool] = {}

    def fits(length: int, s: int) -> bool:
        key = (length, s)
        if key not in fits_cache:
            fits_cache[key] = sequence_fits(ctx.cost, pipeline, length, s, sliced=sliced)
        return fits_cache[key]

    mean_work, max_work = [], []
    for bucket in buckets:
        members = lengths[list(bucket.members)]
        mean_row, max_row = [], []
        for s in sizes:
            if fits(bucket.max_length, s):
                mean_row.append(float(models[s](members).mean()))
                max_row.append(float(models[s](np.array([bucket.max_length], dtype=np.float64))[0]))
            else:
                mean_row.append(math.inf)
                max_row.append(math.inf)
        mean_work.append(tuple(mean_row))
        max_work.append(tuple(max_row))
    block = ctx.cost.dp_size(pipeline)
    problem = LaneProblem(
        block_size=block,
        sizes=tuple(sizes),
        counts=tuple(b.count for b in buckets),
        mean_work=tuple(mean_work),
        max_work=tuple(max_work),
    )
    return problem, models


def realize_lanes(
    ctx: PlanningContext,
    problem: LaneProblem,
    solution: LaneSolution,
    buckets: Sequence[Bucket],
    models: dict[int, WorkModel],
) -> list[LaneSpec]:
    """Concrete lanes: bucket members go to size classes (longest to the biggest lanes), then LPT per class."""
    per_class: dict[int, list[int]] = {k: [] for k in range(len(problem.sizes))}
    lengths = ctx.batch.lengths
    for q, bucket in enumerate(buckets):
        members = sorted(bucket.members, key=lambda i: (-lengths[i], i))
        pos = 0
        for k in sorted(range(len(problem.sizes)), key=lambda k: -problem.sizes[k]):
            take = solution.assignment[q][k]
            per_class[k].extend(members[pos : pos + take])
            pos += take
    lanes: list[LaneSpec] = []
    for k, s in enumerate(problem.sizes):
        n = solution.lane_counts[k]
        if n == 0:
            continue
        lanes.extend(deal_longest_first(ctx, per_class[k], s, models[s], n))
    return lanes


def deal_longest_first(
    ctx: PlanningContext, indices: Sequence[int], sp_degree: int, model: WorkModel, num_lanes: int
) -> list[LaneSpec]:
    """LPT: the batch's sequences `indices`, costliest first, each to the least-loaded of `num_lanes` lanes."""
    lengths = ctx.batch.lengths
    work = model(np.array([lengths[i] for i in indices], dtype=np.float64)) if indices else np.zeros(0)
    heap = [(0.0, lane) for lane in range(num_lanes)]
    dealt: list[list[tuple[int, int]]] = [[] for _ in range(num_lanes)]
    for j in np.argsort(-work, kind="stable"):
        load, lane = heapq.heappop(heap)
        i = indices[int(j)]
        dealt[lane].append((ctx.batch.seq_ids[i], lengths[i]))
        heapq.heappush(heap, (load + float(work[j]), lane))
    return [LaneSpec(sp_degree, tuple(items)) for items in dealt]


def uniform_lanes(ctx: PlanningContext, pipeline: PipelineSpec, sp_degree: int, model: WorkModel) -> list[LaneSpec]:
    """Every lane of size s; sequences dealt longest-processing-time first."""
    num_lanes = ctx.cost.dp_size(pipeline) // sp_degree
    return deal_longest_first(ctx, range(len(ctx.batch.lengths)), sp_degree, model, num_lanes)


def buddy_offsets(sizes: Sequence[int]) -> list[int]:
    """Aligned offsets for power-of-two lane sizes: place the biggest first, consecutively."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    offsets = [0] * len(sizes)
    pos = 0
    for i in order:
        offsets[i] = pos
        pos += sizes[i]
    return offsets


@dataclass(frozen=True, kw_only=True, slots=True)
class Recipe:
    """Everything needed to build (or rebuild) one candidate plan."""

    ctx: PlanningContext
    pipeline: PipelineSpec
    lanes: tuple[LaneSpec, ...]
    strategy: str
    chunks_per_stage: int
    sliced: bool
    recompute: RecomputeMode
    solver: SolverInfo


@dataclass(frozen=True, slots=True)
class Candidate:
    plan: Plan
    recipe: Recipe | None
    """How to rebuild it with exact recompute; None for a finished plan (e.g. the greedy one)."""


def build_dynamic_plan(recipe: Recipe, *, exact_recompute: bool, recompute_time_limit_s: float = 0.2) -> Plan | None:
    """Chunks, schedules and recompute for every lane, then the simulated plan; None when memory cannot fit even
    with model states sharded further (`zero_stage_contexts`).

    With `exact_recompute` each (lane, stage) that needs recompute is solved by the recompute ILP;
    otherwise by its greedy (used while searching knobs, the ILP polishes the winner).
    """
    for ctx in zero_stage_contexts(recipe.ctx):
        plan = _build_dynamic_plan_at(replace(recipe, ctx=ctx), exact_recompute, recompute_time_limit_s)
        if plan is not None:
            return plan
    return None


def _build_dynamic_plan_at(recipe: Recipe, exact_recompute: bool, recompute_time_limit_s: float) -> Plan | None:
    ctx, pipeline = recipe.ctx, recipe.pipeline
    cost = ctx.cost
    p_count = pipeline.num_stages
    dp = cost.dp_size(pipeline)
    budgets = [cost.usable_memory_bytes - cost.model_state_bytes(p, pipeline, dp) for p in range(p_count)]
    lengths = ctx.batch.length_of()
    offsets = buddy_offsets([lane.sp_degree for lane in recipe.lanes])
    drafts = []
    for lane_spec, offset in zip(recipe.lanes, offsets, strict=True):
        s = lane_spec.sp_degree
        cap = memory_token_cap(cost, pipeline, s, in_flight=p_count)
        chunks = build_lane_chunks(
            cost.profile,
            lane_spec.items,
            target_chunks=recipe.chunks_per_stage * p_count,
            token_cap=cap,
            allow_slicing=recipe.sliced,
        )
        counts = lane_recompute(
            ctx,
            pipeline,
            s,
            offset,
            chunks,
            lengths,
            budgets,
            recipe.recompute,
            exact_recompute,
            recompute_time_limit_s,
        )
        if counts is None:
            return None
        drafts.append(LaneDraft(sp_degree=s, offset=offset, chunks=tuple(chunks), recompute=counts))
    plan, _ = assemble_plan(ctx, strategy=recipe.strategy, pipeline=pipeline, drafts=drafts, solver=recipe.solver)
    return plan if fits_memory(plan, ctx.cluster) else None


def lane_recompute(
    ctx: PlanningContext,
    pipeline: PipelineSpec,
    sp_degree: int,
    offset: int,
    chunks: list[Chunk],
    lengths: dict[int, int],
    budgets: list[float],
    mode: RecomputeMode,
    exact: bool,
    time_limit_s: float,
) -> tuple[tuple[int, ...], ...] | None:
    """Recompute counts per stage of one lane, or None when even full recompute does not fit."""
    cost = ctx.cost
    p_count = pipeline.num_stages
    tokens = [c.num_tokens for c in chunks]
    zero = (0,) * len(chunks)
    if all(
        no_recompute_bound(cost, pipeline, p, sp_degree, chunks) <= budgets[p] for p in range(p_count)
    ):  # every chunk held at once still fits: no need to walk the schedule
        return tuple(zero for _ in range(p_count))
    lane = Lane(
        lane_id=0,
        sp_degree=sp_degree,
        ranks=[[offset + i for i in range(sp_degree)] for _ in range(p_count)],
        chunks=chunks,
        schedule=build_schedule(chunks, p_count),
        recompute=[[0] * len(chunks) for _ in range(p_count)],
    )
    spans = sp_degree > ctx.cluster.devices_per_node
    layer_s = [sum(cost.layer_terms(c, sp_degree=sp_degree, spans_nodes=spans)[:2]) for c in chunks]
    out = []
    for p in range(p_count):
        memory = stage_memory(lane, pipeline, p, cost, lengths, tokens)
        if memory.peak(zero) <= budgets[p]:
            out.append(zero)
            continue
        full = (pipeline.layers_of(p),) * len(chunks)
        if memory.peak(full) > budgets[p]:
            return None
        if mode == "lane-uniform":
            out.append(full)
        elif exact:
            out.append(
                choose_recompute(memory, layer_s, budgets[p], backend=ctx.solver, time_limit_s=time_limit_s).counts
            )
        else:
            out.append(greedy_recompute(memory, layer_s, budgets[p]) or full)
    return tuple(out)


SEARCH_SHARE = 0.75
"""Share of a strategy's time limit spent searching; the rest is kept for polishing the winner's recompute
with the ILP and validating, so a call returns close to its limit."""


def no_recompute_bound(
    cost: CostModel, pipeline: PipelineSpec, stage: int, sp_degree: int, chunks: list[Chunk]
) -> float:
    """An upper bound on a lane's activation-side peak on `stage` without recompute: every chunk held at once
    (with the prefix K/V its attention saves), dK/dV accumulators for every token, and the largest chunk's working
    memory (`StageMemory.peak` <= this)."""
    layers = pipeline.layers_of(stage)
    last = stage == pipeline.num_stages - 1
    held = sum(
        cost.chunk_activation_bytes(c, sp_degree=sp_degree, num_layers=layers, is_last_stage=last)
        + cost.kv_bytes(c.num_tokens, sp_degree, layers)
        for c in chunks
    )
    working = max((cost.transient_bytes(c, sp_degree=sp_degree, is_last_stage=last) for c in chunks), default=0.0)
    return held + working


class Deadline:
    """Wall-clock budget shared by the steps of one planning call."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.perf_counter() + seconds

    @classmethod
    def for_search(cls, time_limit_s: float) -> Deadline:
        return cls(time_limit_s * SEARCH_SHARE)

    def left(self) -> float:
        return max(0.0, self.end - time.perf_counter())

    def expired(self) -> bool:
        return self.left() <= 0.0

    def overrun(self) -> bool:
        """Past the deadline by its whole budget again: even the steps that are normally forced are skipped."""
        return time.perf_counter() > self.end + self.seconds

    def share(self, fraction: float) -> float:
        return self.left() * fraction


def pipelined_estimate_s(per_stage_s: float, num_stages: int, chunks_per_stage: int) -> float:
    """Per-stage work stretched by the 1F1B fill and drain: (P - 1) of the m = chunks_per_stage * P chunks."""
    return per_stage_s * (1 + (num_stages - 1) / (chunks_per_stage * num_stages))


@dataclass(frozen=True, slots=True)
class Proposal:
    """A candidate layout not yet built: its work-model estimate, its recipe and the chunk counts to try."""

    estimate_s: float
    recipe: Recipe
    knobs: tuple[int, ...]


def build_best_first(
    proposals: Sequence[Proposal], deadline: Deadline, *, min_builds: int = 1, refine: int = 2
) -> list[Candidate]:
    """`build_proposals` of the `min_builds` best estimates first, then of the rest while time is left."""
    ranked = sorted(proposals, key=lambda p: p.estimate_s)
    return build_proposals(ranked[:min_builds], ranked[min_builds:], deadline, refine=refine)


def build_proposals(
    required: Sequence[Proposal], optional: Sequence[Proposal], deadline: Deadline, *, refine: int = 2
) -> list[Candidate]:
    """Build every `required` proposal at its first chunk count, then the `optional` ones in order of estimate
    until the deadline; then try the other chunk counts, fastest first: on the `refine` fastest unless the
    deadline is overrun (each knob after the first only while time is left), on the others while the deadline
    has not passed."""
    built: list[tuple[Candidate, Proposal]] = []
    queue = [*required, *sorted(optional, key=lambda p: p.estimate_s)]
    for i, proposal in enumerate(queue):
        if i >= len(required) and deadline.expired():
            break
        candidate = search_knobs(proposal.recipe, proposal.knobs[:1], deadline)
        if candidate is not None:
            built.append((candidate, proposal))
    built.sort(key=lambda cp: cp[0].plan.predicted.iteration_s)
    out = []
    for rank, (candidate, proposal) in enumerate(built):
        forced = rank < refine and not deadline.overrun()
        if len(proposal.knobs) > 1 and (forced or not deadline.expired()):
            better = search_knobs(proposal.recipe, proposal.knobs[1:], deadline)
            if better is not None and better.plan.predicted.iteration_s < candidate.plan.predicted.iteration_s:
                candidate = better
        out.append(candidate)
    return out


def search_knobs(recipe: Recipe, knobs: Sequence[int], deadline: Deadline) -> Candidate | None:
    """Build with each chunk count (always the first, the rest while time is left); keep the fastest."""
    best: Candidate | None = None
    for i, knob in enumerate(knobs):
        if i > 0 and deadline.expired():
            break
        trial = replace(recipe, chunks_per_stage=knob)
        plan = build_dynamic_plan(trial, exact_recompute=False)
        if plan is not None and (best is None or plan.predicted.iteration_s < best.plan.predicted.iteration_s):
            best = Candidate(plan, trial)
    return best


def polish(candidate: Candidate, time_limit_s: float) -> Plan:
    """The candidate with its recompute re-solved by the recompute ILP, when that is at least as fast."""
    plan, recipe = candidate.plan, candidate.recipe
    if (
        recipe is None
        or recipe.recompute != "adaptive"
        or not any(any(map(any, lane.recompute)) for lane in plan.lanes)
    ):
        return plan
    stages = sum(1 for lane in plan.lanes for r in lane.recompute if any(r))
    exact = build_dynamic_plan(recipe, exact_recompute=True, recompute_time_limit_s=max(0.02, time_limit_s / stages))
    if exact is None or exact.predicted.iteration_s > plan.predicted.iteration_s:
        return plan
    message = f"{exact.solver.message}; recompute by ILP ({recipe.ctx.solver})"
    return exact.model_copy(update={"solver": exact.solver.model_copy(update={"message": message})}).with_id()


def finalize(candidates: Sequence[Candidate | None], deadline: Deadline) -> Plan | None:
    """The fastest candidate after polishing: the fastest is always polished, the next ones while the search
    deadline has not passed (so a long limit polishes them all and the choice does not hinge on the order)."""
    found = sorted((c for c in candidates if c is not None), key=lambda c: c.plan.predicted.iteration_s)
    if not found:
        return None
    reserve = found[0].recipe.ctx.time_limit_s * (1 - SEARCH_SHARE) if found[0].recipe else 0.0
    best = polish(found[0], deadline.left() + reserve)
    for candidate in found[1:]:
        if deadline.expired():
            break
        polished = polish(candidate, deadline.left())
        if polished.predicted.iteration_s < best.predicted.iteration_s:
            best = polished
    return best
