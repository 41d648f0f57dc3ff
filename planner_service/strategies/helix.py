"""`helix`: 3D dynamic parallelism: flexible SP lanes x elastic pipeline x data parallelism.

Every other strategy's plan is a point of helix's space, so helix builds them as candidates and can only
improve on them:

1. the best static layouts (`static_search`, the same grid and ranking as `static`, best-estimated first, while
   its share of the budget lasts);
2. FlexSP's layout (the lane ILP on FlexSP's cost model, P = 1), InfiniPipe's uniform P > 1 layouts, and the
   greedy fallback plan, each built exactly as its own strategy builds it;
3. its own proposals: the lane ILP on a model of what the simulator charges (recompute forced by memory,
   fill and drain, chunk overheads), for every candidate P including P = 1; every uniform layout at every P
   the static baseline may use (P = 1 uniform lanes too); and the best static layout's lanes rebuilt with
   balanced chunks and adaptive recompute; those with a pipeline are also refined at the deepest schedule
   warm-up (`with_warmup_knobs`);
4. an improvement phase (`improvement.improve`: re-scheduling, moves, swaps, re-chunking, splits and merges,
   and ILP repairs of large neighbourhoods, all judged by the simulator) from the best candidates until the
   work budget is spent;
5. each winner's lanes at their best schedule warm-up depth (`SearchSession.reschedule`), the recompute ILP on
   them, deferred weight gradients where they make the plan faster and it still fits
   (`SearchSession.with_deferred_weight_grads`), and the gap to a lower bound on the simulated time.

All of it is charged to the call's deterministic work budget (shares below), so the same input gives the
same plan on a busy machine; with the budget to finish phases 1-2 (a generous limit), helix is never slower
than static, flexsp, infinipipe or greedy.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace

from planner_service.context import PlanningContext
from planner_service.errors import InfeasibleWorkload, PlanningError
from planner_service.improvement import improve
from planner_service.layout.layer_split import searched_splits
from planner_service.lower_bound import budgeted_lower_bound
from planner_service.proposals import (
    dynamic_pipeline_degrees,
    flexible_proposals,
    seeded_proposal,
    single_stage_flexible_proposal,
    split_key,
    uniform_proposals,
)
from planner_service.search import (
    CANDIDATES_BUILT,
    WARMUP_DEPTHS,
    Candidate,
    Proposal,
    SearchSession,
    fastest,
    finalize,
)
from planner_service.strategies.greedy import plan_greedy
from planner_service.strategies.static import StaticSearch
from proto import Plan

log = logging.getLogger(__name__)

STATIC_SHARE = 0.2
"""Share of the units for the static grid, spent first (best-estimated layouts first; the best static layout
seeds a proposal). Spent after the proposals instead, it found nothing: the proposals and their ILPs use every
unit they are given, so helix saw 3 of static's 80 layouts and lost to static by 12% (gpt-30b, a100-40g-8x8,
commoncrawl, 2 s)."""
PROPOSAL_SHARE = 0.4
"""Share of the units left for the lane ILPs and building the proposals."""
POLISH_RESERVE = 0.15
"""Share of the units left kept for the recompute ILP on the winners; the improvement phase gets the rest."""
GREEDY_UNITS_PER_SEQUENCE = 0.03
"""What the greedy plan costs per sequence (dealing, packing, one simulation; ~30 us measured at 16384)."""
START_SHARE = 0.5
"""Share of the improvement phase's units left that one start may use (a walk that reaches a local optimum
sooner leaves the rest to the next start)."""


def plan_helix(ctx: PlanningContext) -> Plan:
    root = ctx.budget
    bound = budgeted_lower_bound(ctx, ctx.pipeline_degrees(), root, searched_splits)  # first: inside the limit
    session = SearchSession(ctx, root)
    static = StaticSearch(ctx, strategy="helix", header=session.header)
    first = static.run(root.child(STATIC_SHARE))  # the static grid, best-estimated first, while its share lasts
    candidates: list[Candidate] = [Candidate(plan, None) for plan, _ in first.plans[:1]]

    session.budget = root.child(PROPOSAL_SHARE)
    required, optional = proposals(session, first.plans[0][0] if first.plans else None)
    candidates += session.build_proposals(required, optional, refine=CANDIDATES_BUILT)
    greedy_units = GREEDY_UNITS_PER_SEQUENCE * len(ctx.batch.lengths)
    if not candidates or (not root.exhausted() and root.affordable(greedy_units)):  # it competes while time is left
        with contextlib.suppress(PlanningError):
            candidates.append(Candidate(plan_greedy(ctx, strategy="helix"), recipe=None))
            root.charge(greedy_units)
    rest = static.run(root.child(STATIC_SHARE))  # what is left of the grid, if the proposals left units
    candidates += [Candidate(plan, None) for plan, _ in rest.plans[:1]]

    if log.isEnabledFor(logging.DEBUG):
        for c in fastest(candidates):
            log.debug("candidate %.4f s P=%d: %s", c.iteration_s, c.plan.pipeline.num_stages, c.plan.solver.message)
        log.debug("units spent before improvement: %.0f of %.0f", root.spent, root.units)
    steps = 0
    improve_budget = root.child(1 - POLISH_RESERVE)
    for start in improvement_starts(candidates):
        if improve_budget.exhausted():
            break
        improved, made = improve(session, start, improve_budget.child(START_SHARE))
        steps += made
        log.debug(
            "improved %.4f -> %.4f s in %d steps (units %.0f)",
            start.iteration_s,
            improved.iteration_s,
            made,
            root.spent,
        )
        if improved is not start:
            candidates.append(improved)

    session.budget = root
    note = f"; improvement phase: {steps} simulated improvements" if steps else ""
    plan = finalize(
        session, candidates, bound=bound, polish_all=True, reschedule=True, defer=ctx.defer_weight_grads, note=note
    )
    if plan is None:
        raise InfeasibleWorkload(
            f"helix: no layout fits the longest sequence ({max(ctx.batch.lengths)} tokens) in memory", field="lengths"
        )
    return plan


def proposals(session: SearchSession, best_static: Plan | None) -> tuple[list[Proposal], list[Proposal]]:
    """(required, optional): what flexsp and infinipipe build, the best-estimated fidelity-ILP and uniform
    layouts and the static seed are required; every other proposal is built best-estimate first."""
    ctx = session.ctx
    required: list[Proposal] = []
    optional: list[Proposal] = []
    if not ctx.num_stages or ctx.num_stages == 1:
        flexsp = single_stage_flexible_proposal(session, strategy="helix", recompute="lane-uniform", share=0.3)
        required += [flexsp] if flexsp else []
    degrees = dynamic_pipeline_degrees(ctx, include_one=True)
    uniform = uniform_proposals(ctx, strategy="helix", degrees=degrees, splits=searched_splits)
    uniform.sort(key=lambda p: p.estimate_s)
    if ctx.num_stages != 1:  # InfiniPipe's candidates: the best-estimated uniform layouts with a pipeline, at its split
        required += [p for p in uniform if p.num_stages > 1 and at_peer_split(ctx, p)][:CANDIDATES_BUILT]
    flexible = flexible_proposals(session, strategy="helix", degrees=degrees, splits=searched_splits)
    flexible.sort(key=lambda p: p.estimate_s)
    if best_static is not None:
        required.append(seeded_proposal(ctx, best_static, strategy="helix", label="best static layout, rebuilt"))
    required += flexible[:1] + uniform[:1]
    optional += flexible[1:] + uniform[1:]
    required = sorted(distinct(required), key=lambda p: p.estimate_s)  # the most promising first, under pressure
    optional = [p for p in distinct(optional) if p.key not in {r.key for r in required}]
    return with_warmup_knobs(required), with_warmup_knobs(optional)


def at_peer_split(ctx: PlanningContext, proposal: Proposal) -> bool:
    """The proposal's layers are split as the other strategies split them (`PlanningContext.split_for`: the job's
    split, else the even one), so it is a plan InfiniPipe itself would build."""
    return proposal.key[-1] == split_key(ctx.split_for(proposal.num_stages))


def with_warmup_knobs(found: list[Proposal]) -> list[Proposal]:
    """The proposals with a pipeline also refined at deeper schedule warm-ups (`WARMUP_DEPTHS`) of their first
    chunking: which layout wins depends on how much of its chain bubbles the schedule can fill, so the depth is
    tried while layouts are compared, not only on the winner."""
    out = []
    for proposal in found:
        if proposal.num_stages > 1:
            first = proposal.knobs[0]
            deeper = (replace(first, warmup_groups=max(WARMUP_DEPTHS)),)
            proposal = replace(proposal, knobs=proposal.knobs + deeper)
        out.append(proposal)
    return out


def distinct(found: list[Proposal]) -> list[Proposal]:
    """The proposals without repeats (the same layout proposed by two families is built once)."""
    seen: set[tuple[object, ...]] = set()
    out = []
    for proposal in found:
        if proposal.key not in seen:
            seen.add(proposal.key)
            out.append(proposal)
    return out


def improvement_starts(candidates: list[Candidate]) -> list[Candidate]:
    """Rebuildable candidates to improve, one per layout shape (split, lane sizes): the fastest with uniform
    lanes and the fastest with mixed sizes first (the two families reach different optima), then the rest,
    fastest first."""
    first: list[Candidate] = []
    rest: list[Candidate] = []
    kinds: set[bool] = set()
    shapes: set[tuple[int, tuple[int, ...]]] = set()
    for candidate in fastest(candidates):
        if candidate.recipe is None:
            continue
        sizes = tuple(sorted(lane.sp_degree for lane in candidate.recipe.lanes))
        shape = (candidate.plan.pipeline.num_stages, sizes)
        if shape in shapes:
            continue
        shapes.add(shape)
        mixed = len(set(sizes)) > 1
        (rest if mixed in kinds else first).append(candidate)
        kinds.add(mixed)
    return first + rest
