"""The search the dynamic strategies (flexsp, infinipipe, helix) share: propose, build, refine, polish.

A `Proposal` is a layout not yet built (lanes and a pipeline split, ranked by a work-model estimate); a
`Recipe` is everything needed to build it into a simulated plan (`build_dynamic_plan`); a `Candidate` is
a built plan with the recipe that rebuilds it. Proposals are built best-estimate first within a `Deadline`;
the fastest candidates try other chunk counts (`search_knobs`), and the winners' recompute is re-solved
by the recompute ILP (`polish`, `finalize`).

The tuning constants every dynamic strategy shares live here, so no strategy imports another's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from planner_service.assembly import LaneDraft, assemble_plan, fits_memory
from planner_service.context import PlanningContext, zero_stage_contexts
from planner_service.layout.chunks import cost_balanced_chunks
from planner_service.layout.lanes import LaneSpec, buddy_offsets
from planner_service.layout.memory_fit import memory_token_cap
from planner_service.layout.recompute import RecomputeMode, lane_recompute
from proto import PipelineSpec, Plan, SolverInfo

SEARCH_SHARE = 0.75
"""Share of a strategy's time limit spent searching; the rest is kept for polishing the winner's recompute
with the ILP and validating, so a call returns close to its limit."""
LANE_SOLVER_SHARE = 0.6
"""Share of the time left given to the lane ILP (the rest builds and simulates plans)."""
MAX_DYNAMIC_PIPELINE_DEGREE = 8
"""Pipeline degrees searched per batch (both papers evaluate P <= 8 for 7B-30B models)."""
CHUNKS_PER_STAGE = (4, 2, 8)
"""Chunks per pipeline stage tried per lane (first is the default): more chunks, smaller bubbles, more overhead."""
CANDIDATES_BUILT = 3
"""Uniform (P, s) layouts built and simulated, best-estimated first."""


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


@dataclass(frozen=True, slots=True)
class Proposal:
    """A candidate layout not yet built: its work-model estimate, its recipe and the chunk counts to try."""

    estimate_s: float
    recipe: Recipe
    knobs: tuple[int, ...]


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
        chunks = cost_balanced_chunks(
            cost.profile,
            lane_spec.items,
            target_chunks=recipe.chunks_per_stage * p_count,
            token_cap=memory_token_cap(cost, pipeline, s, in_flight=p_count),
            allow_slicing=recipe.sliced,
        )
        counts = lane_recompute(
            ctx,
            pipeline,
            sp_degree=s,
            offset=offset,
            chunks=chunks,
            lengths=lengths,
            budgets=budgets,
            mode=recipe.recompute,
            exact=exact_recompute,
            time_limit_s=recompute_time_limit_s,
        )
        if counts is None:
            return None
        drafts.append(LaneDraft(sp_degree=s, offset=offset, chunks=tuple(chunks), recompute=counts))
    plan, _ = assemble_plan(ctx, strategy=recipe.strategy, pipeline=pipeline, drafts=drafts, solver=recipe.solver)
    return plan if fits_memory(plan, ctx.cluster) else None


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
