"""The search the dynamic strategies (flexsp, infinipipe, helix) share: propose, build, refine, polish.

A `Proposal` is a layout not yet built (lanes and a pipeline split, ranked by an estimate); a `Recipe` is
everything needed to build it into a simulated plan; a `Candidate` is a built plan with the recipe that
rebuilds it. A `SearchSession` (one per planning call) builds recipes through one `LaneBuilder` per split, so
lanes and recompute decisions are shared by every candidate and neighbour of the call, and charges all work
to the call's `PlanningBudget`. Required proposals are built whatever the units left (only the wall-clock
safety net skips them), optional ones best-estimate first while units last; the fastest try other chunk
counts; the winner's recompute is re-solved by the recompute ILP (`polish`) and `finish` gives it its id,
its solver record and its gap to the lower bound on simulated time.

The tuning constants every dynamic strategy shares live here, so no strategy imports another's.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from planner_service.assembly import PlanHeader, finish_plan, fits_memory, simulate_lanes
from planner_service.budget import UNITS_PER_BUILT_OP, UNITS_PER_BUILT_SEQUENCE, PlanningBudget, simulation_units
from planner_service.context import PlanningContext, zero_stage_contexts
from planner_service.layout.lane_builder import Chunking, ChunkKnobs, LaneBuilder, LaneScore
from planner_service.layout.lanes import LaneSpec, buddy_offsets
from planner_service.layout.recompute import RecomputeMode
from planner_service.lower_bound import BudgetedBound, gap_to
from planner_service.simulator import simulate
from planner_service.simulator.weight_grad_placement import place_weight_grads
from planner_service.simulator.weight_grad_tail import with_weight_grad_tail
from proto import Lane, PipelineSpec, Plan, SolverInfo, SolverStatus, ZeroStage

PIPELINE_CHUNKINGS = (Chunking(4), Chunking(2), Chunking(8), Chunking(4, costliest_last=True))
"""Chunkings tried per lane with a pipeline (first is the default): more chunks per stage, smaller bubbles and
more per-chunk overhead; costliest last hides the gradient sync behind the last backward."""
SINGLE_STAGE_CHUNKINGS = (Chunking(1, costliest_last=True), Chunking(1))
"""Without a pipeline: as few chunks as memory allows, costliest last (or first)."""
MAX_DYNAMIC_PIPELINE_DEGREE = 16
"""Pipeline degrees searched per batch: every P the static baseline may use (a layout it can build, helix can)."""
CANDIDATES_BUILT = 3
"""Uniform (P, s) layouts `infinipipe` builds, best-estimated first."""
PRUNE_MARGIN = 0.1
"""Optional proposals and chunkings whose (corrected) estimate is this much slower than the fastest plan are
not built."""
POLISH_SHARE = 0.15
"""Share of a dynamic strategy's units kept for the recompute ILP on the winner."""
WARMUP_DEPTHS = (0, 1, 2)
"""Schedule warm-up depths (`Chunking.warmup_groups`: slice groups kept in flight per stage beyond 1F1B's chunks)
`helix` tries per lane when P > 1. Deeper fills the bubbles around slice chains and holds more activations. Depth
2 beat depth 1 on some 128K configs (a800 gpt-13b github: 17.47 vs 17.92 s); adding 4 changed none of
plan_quality's quick configs, so the search stops at 2."""
PLACEMENT_RETRIES = 2
"""Times a W-op placement whose simulated peak overflows is redone with that much less memory per stage (the
placement's own memory test is an estimate; the simulator's peak decides)."""
PLACEMENT_SIMULATIONS = 3.0
"""Units of a W-op placement and the simulation of its result, in simulations of the plan: the placement's replay
took 1.3-1.7 times a simulation (four helix plans of the plan_quality grid, P = 2 to 8, 144 to 4608 ops), charged
as 2. It used to be charged as P + 1, 5x its cost at P = 8, which let the safety net skip the placement."""
TAIL_SHARES = (1.0, 0.5, 0.25)
"""Lengths tried for a trailing W-op group (`weight_grad_tail`), as shares of the stage's gradient reduction: the
whole first, shorter ones while the simulated peak overflows (the group's operands are held to the step's end)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Recipe:
    """Everything needed to build (or rebuild) one candidate plan."""

    ctx: PlanningContext
    pipeline: PipelineSpec
    lanes: tuple[LaneSpec, ...]
    strategy: str
    chunking: Chunking
    sliced: bool
    recompute: RecomputeMode
    solver: SolverInfo
    lane_chunking: tuple[Chunking, ...] = ()
    """Per-lane chunking (empty: `chunking` for every lane); the improvement phase sets it."""

    def chunking_of(self, lane: int) -> Chunking:
        return self.lane_chunking[lane] if self.lane_chunking else self.chunking

    def knobs_of(self, lane: int) -> ChunkKnobs:
        return ChunkKnobs(chunking=self.chunking_of(lane), sliced=self.sliced, recompute=self.recompute)

    def with_lanes(self, lanes: Sequence[LaneSpec], lane_chunking: Sequence[Chunking] = ()) -> Recipe:
        return replace(self, lanes=tuple(lanes), lane_chunking=tuple(lane_chunking))


class NothingBuiltInTime(RuntimeError):
    """No candidate could be built before the wall-clock safety net: the caller returns its fallback plan."""


@dataclass(frozen=True, slots=True)
class Candidate:
    plan: Plan
    """Simulated, without an id until `finish`."""
    recipe: Recipe | None
    """How to rebuild it; None for a finished plan of another builder (static, greedy)."""

    @property
    def iteration_s(self) -> float:
        return self.plan.predicted.iteration_s


@dataclass(slots=True)
class Proposal:
    """A candidate layout not yet built: its estimate, the chunkings to try, and its recipe, made on first use
    (dealing thousands of sequences to lanes is worth doing only for the proposals that get built)."""

    estimate_s: float
    make_recipe: Callable[[], Recipe]
    knobs: tuple[Chunking, ...]
    num_stages: int
    key: tuple[object, ...]
    """What identifies the layout (family, split, sizes), so two families proposing it build it once."""
    made: Recipe | None = None

    @property
    def recipe(self) -> Recipe:
        if self.made is None:
            self.made = self.make_recipe()
        return self.made

    @classmethod
    def of(cls, estimate_s: float, recipe: Recipe, knobs: tuple[Chunking, ...], key: tuple[object, ...]) -> Proposal:
        """A proposal whose recipe is already made."""
        return cls(estimate_s, lambda: recipe, knobs, recipe.pipeline.num_stages, key, recipe)


def chunkings_for(num_stages: int) -> tuple[Chunking, ...]:
    """The chunkings tried at a pipeline degree (the first is the default)."""
    return PIPELINE_CHUNKINGS if num_stages > 1 else SINGLE_STAGE_CHUNKINGS


@dataclass(slots=True)
class SearchSession:
    """One planning call's search state: lane builders per split, the plan header, the budget."""

    ctx: PlanningContext
    budget: PlanningBudget
    header: PlanHeader = field(init=False)
    builders: dict[tuple[int, int], LaneBuilder] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.header = PlanHeader.of(self.ctx)

    def builder(self, recipe: Recipe) -> LaneBuilder:
        key = (recipe.pipeline.num_stages, int(recipe.ctx.options.zero_stage))
        if key not in self.builders:
            self.builders[key] = LaneBuilder(recipe.ctx, recipe.pipeline, self.budget)
        builder = self.builders[key]
        builder.budget = self.budget  # the phase now running is charged
        builder.header = self.header
        return builder

    def lane_scores(self, recipe: Recipe) -> list[LaneScore] | None:
        """Each lane of the recipe simulated alone (cached per lane), in recipe order; None if one cannot fit.

        The plan's simulated time is the slowest lane's `end_s` as long as lanes meet only in the gradient
        sync (the improvement phase checks its result with a whole-plan simulation)."""
        builder = self.builder(recipe)
        offsets = buddy_offsets([lane.sp_degree for lane in recipe.lanes])
        scores = []
        for i, (spec, offset) in enumerate(zip(recipe.lanes, offsets, strict=True)):
            score = builder.score(spec, offset, recipe.knobs_of(i))
            if score is None or not score.fits:
                return None
            scores.append(score)
        return scores

    def build(self, recipe: Recipe, *, exact: bool = False) -> Plan | None:
        """Chunks, schedules and recompute for every lane, then the simulated plan; None when memory cannot fit.

        With `exact` each (lane, stage) that needs recompute is solved by the recompute ILP (shared across
        lanes of the same shapes); otherwise by its greedy."""
        builder = self.builder(recipe)
        offsets = buddy_offsets([lane.sp_degree for lane in recipe.lanes])
        lanes = []
        for i, (spec, offset) in enumerate(zip(recipe.lanes, offsets, strict=True)):
            built = builder.build(spec, offset, recipe.knobs_of(i), exact=exact)
            if built is None:
                return None
            lanes.append(built.lane)
        plan = simulate_lanes(
            recipe.ctx,
            strategy=recipe.strategy,
            pipeline=recipe.pipeline,
            lanes=lanes,
            solver=recipe.solver,
            budget=self.budget,
            header=self.header,
        )
        return plan if fits_memory(plan, recipe.ctx.cluster) else None

    def candidate(self, recipe: Recipe) -> Candidate | None:
        """The recipe built at its ZeRO stage, or at the next stages when the built plan does not fit memory."""
        for ctx in zero_stage_contexts(recipe.ctx):
            staged = recipe if ctx is recipe.ctx else replace(recipe, ctx=ctx)
            plan = self.build(staged)
            if plan is not None:
                return Candidate(plan, staged)
        return None

    def build_units(self, recipe: Recipe) -> float:
        """Predicted units of building and simulating `recipe` from scratch (its ops: about chunks x P x 2)."""
        p = recipe.pipeline.num_stages
        builder = self.builder(recipe)
        ops = 0
        for i, lane in enumerate(recipe.lanes):
            if lane.items:
                tokens = sum(n for _, n in lane.items)
                chunks = max(
                    recipe.chunking_of(i).chunks_per_stage * p, -(-tokens // builder.token_cap(lane.sp_degree))
                )
                ops += 2 * p * min(chunks, len(lane.items) + chunks // 2)
        sequences = len(self.ctx.batch.lengths)
        built = ops * UNITS_PER_BUILT_OP + sequences * UNITS_PER_BUILT_SEQUENCE
        return built + simulation_units(len(recipe.lanes), ops, sequences)

    def search_knobs(
        self, recipe: Recipe, knobs: Sequence[Chunking], *, forced: bool = False, every: bool = False
    ) -> Candidate | None:
        """Build with each chunking (the first always when `forced`, all of them when `every`, as long as they can
        end before the safety net; the others while units last); the fastest."""
        best: Candidate | None = None
        for i, knob in enumerate(knobs):
            if not every and (i > 0 or not forced) and self.budget.exhausted():
                break
            if forced and best is not None and self.budget.out_of_time():
                break
            trial = replace(recipe, chunking=knob, lane_chunking=())
            if not self.budget.affordable(self.build_units(trial)):
                continue  # it cannot end in time: a cheaper proposal may
            found = self.candidate(trial)
            if found is not None and (best is None or found.iteration_s < best.iteration_s):
                best = found
        return best

    def build_proposals(
        self, required: Sequence[Proposal], optional: Sequence[Proposal], *, refine: int = 2
    ) -> list[Candidate]:
        """Every `required` proposal at its first chunking and the other chunkings of the `refine` fastest (skipped
        only by the safety net once one is built), then the `optional` ones by corrected estimate while units last;
        then the other chunkings of the new `refine` fastest and, while units last, of every required one and of
        the others within `PRUNE_MARGIN` of the fastest.

        Estimates err by a factor that depends mostly on the pipeline degree (bubbles, sends, slice chains), so
        each optional estimate is corrected by the smallest simulated/estimated ratio seen at its degree, and a
        proposal whose corrected estimate is more than `PRUNE_MARGIN` slower than the fastest plan is skipped."""
        built: list[tuple[Candidate, Proposal]] = []
        ratio: dict[int, float] = {}

        def record(found: Candidate | None, proposal: Proposal) -> None:
            if found is None:
                return
            built.append((found, proposal))
            p = proposal.num_stages
            if proposal.estimate_s > 0:
                ratio[p] = min(ratio.get(p, math.inf), found.iteration_s / proposal.estimate_s)

        def corrected(proposal: Proposal) -> float:
            return proposal.estimate_s * ratio.get(proposal.num_stages, 1.0)

        refined: set[int] = set()

        def refine_all(count: int, *, wanted: Callable[[Candidate, Proposal], bool]) -> None:
            """Other chunkings of the `count` fastest built so far, then of the `wanted` ones while units last."""
            built.sort(key=lambda cp: cp[0].iteration_s)
            for rank, (candidate, proposal) in enumerate(built):
                if id(proposal) in refined or len(proposal.knobs) < 2:
                    continue
                if rank < count or (wanted(candidate, proposal) and not self.budget.exhausted()):
                    refined.add(id(proposal))
                    better = self.search_knobs(proposal.recipe, proposal.knobs[1:], every=rank < count)
                    if better is not None and better.iteration_s < candidate.iteration_s:
                        built[rank] = (better, proposal)

        for proposal in required:
            if built and self.budget.out_of_time():
                break
            record(self.search_knobs(proposal.recipe, proposal.knobs[:1], forced=True), proposal)
        refine_all(refine, wanted=lambda c, p: False)  # the most promising first, in case time runs short
        waiting = list(optional)
        while waiting and not (built and self.budget.exhausted()) and not self.budget.tripped():
            waiting.sort(key=corrected)
            proposal = waiting.pop(0)
            best = min((c.iteration_s for c, _ in built), default=math.inf)
            if corrected(proposal) > best * (1 + PRUNE_MARGIN):
                break  # the rest are slower still
            record(self.search_knobs(proposal.recipe, proposal.knobs[:1], forced=not built), proposal)
        must = {id(p) for p in required}
        fastest_s = min((c.iteration_s for c, _ in built), default=math.inf)
        refine_all(refine, wanted=lambda c, p: id(p) in must or c.iteration_s <= fastest_s * (1 + PRUNE_MARGIN))
        return [candidate for candidate, _ in built]

    def reschedule(self, candidate: Candidate) -> Candidate:
        """The candidate with its slowest lanes at the schedule warm-up depth (`WARMUP_DEPTHS`) that makes each
        finish first alone, when the whole plan is then faster. Lanes are tried slowest first, and only while
        one could still lower the slowest end and units last."""
        recipe = candidate.recipe
        if recipe is None or recipe.pipeline.num_stages == 1 or self.budget.exhausted():
            return candidate
        scores = self.lane_scores(recipe)
        if scores is None:
            return candidate
        builder = self.builder(recipe)
        offsets = buddy_offsets([lane.sp_degree for lane in recipe.lanes])
        chunkings = [recipe.chunking_of(i) for i in range(len(recipe.lanes))]
        ends = [score.end_s for score in scores]
        reached = 0.0  # the slowest end of the lanes already tried, at their best depth
        for i in sorted(range(len(ends)), key=lambda i: (-ends[i], i)):
            if ends[i] <= reached or self.budget.exhausted():
                break  # this lane and the faster ones cannot lower the slowest end
            best = ends[i]
            for depth in WARMUP_DEPTHS:
                trial = replace(chunkings[i], warmup_groups=depth)
                if trial == chunkings[i]:
                    continue
                knobs = ChunkKnobs(chunking=trial, sliced=recipe.sliced, recompute=recipe.recompute)
                score = builder.score(recipe.lanes[i], offsets[i], knobs)
                if score is not None and score.fits and score.end_s < best:
                    best, chunkings[i] = score.end_s, trial
            reached = max(reached, best)
        if chunkings == [recipe.chunking_of(i) for i in range(len(recipe.lanes))]:
            return candidate
        trial_recipe = recipe.with_lanes(recipe.lanes, chunkings)
        plan = self.build(trial_recipe)
        if plan is None or plan.predicted.iteration_s >= candidate.iteration_s:
            return candidate
        return Candidate(plan, trial_recipe)

    def polish(self, candidate: Candidate) -> Candidate:
        """The candidate with its recompute re-solved by the recompute ILP, when that is at least as fast (skipped
        when it could not end before the safety net)."""
        plan, recipe = candidate.plan, candidate.recipe
        if (
            recipe is None
            or recipe.recompute != "adaptive"
            or not any(any(map(any, lane.recompute)) for lane in plan.lanes)
            or not self.budget.affordable(2 * self.build_units(recipe))
        ):
            return candidate
        exact = self.build(recipe, exact=True)
        if exact is None or exact.predicted.iteration_s > plan.predicted.iteration_s:
            return candidate
        message = f"{recipe.solver.message}; recompute by ILP ({recipe.ctx.solver})"
        solver = exact.solver.model_copy(update={"message": message})
        return Candidate(exact.model_copy(update={"solver": solver}), recipe)

    def with_deferred_weight_grads(self, candidate: Candidate) -> Candidate:
        """The candidate with `Plan.defer_weight_grads` when the executor can, the plan is at ZeRO-0/1, and the
        simulator then finds it faster and still within memory; else the candidate.

        With a pipeline, two placements of W ops are tried (`weight_grad_placement`): each right after its
        backward op, and in the gaps the stages would wait through, each placed again with less memory (at most
        `PLACEMENT_RETRIES` times) when its simulated peak overflows. At any P, the candidate and the best
        placement are also tried with a trailing group of W ops that hides the stage's gradient reduction
        (`weight_grad_tail`), shortened (`TAIL_SHARES`) while its simulated peak overflows. Every placement and
        simulation is charged to the budget."""
        plan = candidate.plan
        if not self.ctx.defer_weight_grads or plan.defer_weight_grads or plan.options.zero_stage > ZeroStage.OPTIMIZER:
            return candidate
        ops = sum(len(ops) for lane in plan.lanes for ops in lane.schedule)
        sequences = len(self.ctx.batch.lengths)
        units = simulation_units(len(plan.lanes), 2 * ops, sequences)
        placing = PLACEMENT_SIMULATIONS * units  # the placement's replay and the simulation of its result
        best = plan
        flagged = plan.model_copy(update={"defer_weight_grads": True})
        placements = ((False, "weight gradients after the send"), (True, "weight gradients in the gaps"))
        for queue, note in placements if plan.pipeline.num_stages > 1 else ():
            margin = [0.0] * plan.pipeline.num_stages
            for _ in range(1 + PLACEMENT_RETRIES):
                if not self.budget.affordable(placing):
                    break  # the cheaper tail tries below may still fit
                placed = place_weight_grads(flagged, self.ctx.batch, self.ctx.cost, queue=queue, margin_bytes=margin)
                placed = self._simulated(placed, placing)
                if fits_memory(placed, self.ctx.cluster):
                    if placed.predicted.iteration_s < best.predicted.iteration_s:
                        best = placed.model_copy(update={"solver": _noted(plan.solver, note)})
                    break
                margin = [m + over for m, over in zip(margin, self._overflow(placed), strict=True)]
        for base in [flagged] + ([best] if best is not plan else []):
            tried: list[Lane] | None = None
            for share in TAIL_SHARES:
                if not self.budget.affordable(2 * units):
                    break
                tailed = with_weight_grad_tail(base, self.ctx.cost, share=share)
                if tailed is base:
                    break  # no stage reduces gradients: nothing to hide
                if tailed.lanes == tried:
                    continue  # chunks too coarse for a shorter group: the same plan, which overflowed
                tried = tailed.lanes
                tailed = self._simulated(tailed, 2 * units)
                if fits_memory(tailed, self.ctx.cluster):
                    if tailed.predicted.iteration_s < best.predicted.iteration_s:
                        note = "weight gradients grouped at the end to hide the gradient reduction"
                        best = tailed.model_copy(update={"solver": _noted(base.solver, note)})
                    break
        return candidate if best is plan else Candidate(best, candidate.recipe)

    def _simulated(self, plan: Plan, units: float) -> Plan:
        predicted = simulate(plan, self.ctx.batch, self.ctx.cost, record_events=False).predicted
        self.budget.charge(units)
        return plan.model_copy(update={"predicted": predicted})

    def _overflow(self, plan: Plan) -> list[float]:
        """Per stage, how far its devices' simulated peak exceeds the device memory (0 where it fits)."""
        over = [0.0] * plan.pipeline.num_stages
        capacity = self.ctx.cluster.device_memory_bytes
        for lane in plan.lanes:
            for p, ranks in enumerate(lane.ranks):
                for r in ranks:
                    over[p] = max(over[p], plan.predicted.peak_memory_bytes[r] - capacity)
        return over

    def finish(self, candidate: Candidate, *, bound: BudgetedBound | None, note: str = "") -> Plan:
        """The kept candidate with its id and solver record: wall time, gap to the bound on simulated time."""
        plan = candidate.plan
        solver = plan.solver
        iteration = plan.predicted.iteration_s
        lower_bound_s = bound.value_s if bound is not None else None
        message = solver.message + note + warmup_note(candidate.recipe) + (bound.note if bound is not None else "")
        if self.budget.tripped():
            message += "; stopped by the wall-clock safety net (the plan may depend on the machine's load)"
        gap = gap_to(iteration, lower_bound_s)
        status = status_of(solver.status, self.budget, gap)
        if status != solver.status and not self.budget.tripped():
            message += (
                f"; feasible, not optimal: its last solver proved the optimum of its own model, but the plan is "
                f"{gap:.1%} above the bound on the simulated time"
            )
        return finish_plan(
            plan,
            solver.model_copy(
                update={
                    "gap": gap,
                    "lower_bound_s": lower_bound_s,
                    "solve_s": time.perf_counter() - self.started,
                    "message": message,
                    "status": status,
                }
            ),
        )


def _noted(solver: SolverInfo, note: str) -> SolverInfo:
    return solver.model_copy(update={"message": f"{solver.message}; {note}"})


def warmup_note(recipe: Recipe | None) -> str:
    """What the plan's schedules do beyond plain 1F1B, for its solver message ('' when nothing)."""
    if recipe is None:
        return ""
    depths = Counter(recipe.chunking_of(i).warmup_groups for i in range(len(recipe.lanes)))
    if not any(depths.keys() - {0}):
        return ""
    parts = ", ".join(f"depth {d} on {n} lane{'s' if n > 1 else ''}" for d, n in sorted(depths.items()))
    return f"; schedule warm-up in slice groups: {parts}"


OPTIMAL_GAP = 1e-4
"""Largest gap to the lower bound on the simulated time at which a search's plan is still called optimal (the
same relative tolerance as a MIP solver's default optimality gap)."""


def status_of(status: SolverStatus, budget: PlanningBudget, gap: float | None = None) -> SolverStatus:
    """The plan's status as a claim about the simulated time the user pays. A solver's `optimal` is about its
    own model; it stands only when the plan is within `OPTIMAL_GAP` of the bound on the simulated time (or
    when there is no bound to compare with). A search stopped by the safety net has no proof of anything it
    would have found with its units."""
    if status != SolverStatus.OPTIMAL:
        return status
    if budget.tripped() or (gap is not None and gap > OPTIMAL_GAP):
        return SolverStatus.FEASIBLE
    return status


def fastest(candidates: Sequence[Candidate | None]) -> list[Candidate]:
    """The candidates that exist, fastest first (ties keep their order: the build order is deterministic)."""
    return sorted((c for c in candidates if c is not None), key=lambda c: c.iteration_s)


def finalize(
    session: SearchSession,
    candidates: Sequence[Candidate | None],
    *,
    bound: BudgetedBound | None,
    polish_all: bool,
    reschedule: bool = False,
    defer: bool = False,
    note: str = "",
) -> Plan | None:
    """The fastest candidate after polishing (the fastest always; with `polish_all` the next ones while units
    last, so a long limit polishes them all and the choice does not hinge on the order). With `reschedule`, the
    candidates within `PRUNE_MARGIN` of the fastest are first given their lanes' best schedule warm-up depth
    (`SearchSession.reschedule`, fastest first while units last): that can change which one is fastest. With
    `defer`, each polished candidate is also tried with deferred weight gradients
    (`SearchSession.with_deferred_weight_grads`)."""
    found = fastest(candidates)
    if not found:
        if session.budget.tripped():
            raise NothingBuiltInTime("no candidate could be built within the time limit")
        return None
    if reschedule:
        near = found[0].iteration_s * (1 + PRUNE_MARGIN)
        found = fastest([session.reschedule(c) if c.iteration_s <= near else c for c in found])

    def polished(candidate: Candidate) -> Candidate:
        done = session.polish(candidate)
        return session.with_deferred_weight_grads(done) if defer else done

    best = polished(found[0])
    for candidate in found[1:] if polish_all else ():
        if session.budget.exhausted():
            break
        polished_one = polished(candidate)
        if polished_one.iteration_s < best.iteration_s:
            best = polished_one
    return session.finish(best, bound=bound, note=note)
