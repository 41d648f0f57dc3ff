"""The improvement phase: local and large-neighbourhood search on the simulator's own prices, anytime.

The lane ILP optimises a model of the simulator; the plan is judged by the simulator. Starting from the
best candidates, this phase evaluates neighbours of the current layout *by simulating them* and keeps a
neighbour when it is faster (or as fast with a better-balanced set of lanes, so that several equally slow
lanes can be drained one after the other). Neighbourhoods, all around the slowest lane:

1. re-schedule it: another schedule warm-up depth (`search.WARMUP_DEPTHS`, P > 1 only);
2. move one of its costliest sequences to one of the least-loaded lanes;
3. swap one of them with a cheaper sequence of a least-loaded lane, the one that balances the two best;
4. re-chunk it (another chunking at its warm-up depth), or every lane at once;
5. split it into two lanes of half the size, or merge it with the least-loaded lane of its size;
6. repair: free it and the least-loaded lanes (sizes summing to a block of devices) and re-solve the lane
   ILP (simulator-fidelity model) for their sequences on their devices (large-neighbourhood search).

A neighbour is priced by simulating only the lanes it changed, each alone (`SearchSession.lane_scores`):
lanes meet only in the gradient sync, so the slowest lane alone gives the plan's time. The walk is checked
with a whole-plan simulation every `VERIFY_EVERY` improvements and at the end, and the best checked layout is
returned, so a simulator whose lanes interact more cannot make the phase return a slower plan than its start.
First improvement, in a fixed order, until no neighbour improves or the budget's units run out: every step
is charged in work units, so the result does not depend on the machine's speed or load.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from planner_service.budget import PlanningBudget, solver_units
from planner_service.layout.flexible_lanes import flexible_lanes
from planner_service.layout.lane_builder import Chunking, LaneScore
from planner_service.layout.lanes import LaneSpec
from planner_service.layout.memory_fit import sequence_fits
from planner_service.layout.work_model import WorkModel, work_model
from planner_service.search import WARMUP_DEPTHS, Candidate, Recipe, SearchSession, chunkings_for
from proto.topology import valid_sp_degrees

log = logging.getLogger(__name__)

SEQUENCES_TRIED = 4
"""Costliest sequences of the slowest lane tried by the move and swap neighbourhoods."""
TARGET_LANES = 3
"""Least-loaded lanes tried as destinations."""
REPAIR_LANES = (3, 7)
"""Lanes freed with the slowest one by the repair neighbourhood, smallest neighbourhood first."""
IMPROVEMENT_EPS = 1e-9
"""Relative improvement a neighbour must bring to be kept (rounding noise is not progress)."""
VERIFY_EVERY = 8
"""Improvements between two whole-plan simulations of the walk."""


@dataclass(frozen=True, slots=True)
class Score:
    """Simulated iteration time, then the spread of lane times (lexicographic, both minimised)."""

    iteration_s: float
    spread: float

    @classmethod
    def of(cls, lanes: Sequence[LaneScore], idle_round_s: float = 0.0) -> Score:
        """Lanes priced alone: the slowest end, each lane's end lengthened by the per-chunk collective rounds
        it joins idle (ZeRO-2/3: as many as the busiest lane has chunks more than it)."""
        finish = np.array([lane.finish_s for lane in lanes], dtype=np.float64)
        most = max(lane.num_chunks for lane in lanes)
        end = max(lane.end_s + (most - lane.num_chunks) * idle_round_s for lane in lanes)
        return cls(end, float((finish * finish).sum()))

    def beats(self, other: Score) -> bool:
        if self.iteration_s < other.iteration_s * (1 - IMPROVEMENT_EPS):
            return True
        return self.iteration_s <= other.iteration_s * (1 + IMPROVEMENT_EPS) and self.spread < other.spread * (
            1 - IMPROVEMENT_EPS
        )


class Neighbourhoods:
    """The neighbours of one recipe, in a fixed order (see the module docstring)."""

    def __init__(self, session: SearchSession, recipe: Recipe, scores: Sequence[LaneScore]) -> None:
        self.session = session
        self.recipe = recipe
        self.ctx = recipe.ctx
        self.pipeline = recipe.pipeline
        self.times = [score.end_s for score in scores]
        self.models: dict[int, WorkModel] = {}
        self.fits: dict[tuple[int, int], bool] = {}
        self.block = self.ctx.cost.dp_size(self.pipeline)
        self.valid_sizes = set(valid_sp_degrees(self.ctx.model, self.block))
        lanes = self.recipe.lanes
        self.chunks = [self.recipe.chunking_of(i) for i in range(len(lanes))]
        self.last = ""
        self.slowest = max(range(len(lanes)), key=lambda i: (self.times[i], -i))
        self.lightest = sorted((i for i in range(len(lanes)) if i != self.slowest), key=lambda i: (self.times[i], i))

    # ---- helpers ------------------------------------------------------------------------------------------
    def work(self, sp_degree: int, length: int) -> float:
        if sp_degree not in self.models:
            self.models[sp_degree] = work_model(self.ctx.cost, self.pipeline, sp_degree)
        return float(self.models[sp_degree](np.array([float(length)]))[0])

    def fits_on(self, length: int, sp_degree: int) -> bool:
        key = (length, sp_degree)
        if key not in self.fits:
            self.fits[key] = sequence_fits(self.ctx.cost, self.pipeline, length, sp_degree, sliced=self.recipe.sliced)
        return self.fits[key]

    def replaced(self, changes: dict[int, LaneSpec], added: Sequence[tuple[LaneSpec, Chunking]] = ()) -> Recipe:
        """The recipe with lanes replaced (`changes`), removed (an empty lane of size 0) or added."""
        lanes: list[tuple[LaneSpec, Chunking]] = []
        for i, lane in enumerate(self.recipe.lanes):
            new = changes.get(i, lane)
            if new.sp_degree:
                lanes.append((new, self.chunks[i]))
        lanes.extend(added)
        order = sorted(range(len(lanes)), key=lambda i: (-lanes[i][0].sp_degree, i))
        return self.recipe.with_lanes([lanes[i][0] for i in order], [lanes[i][1] for i in order])

    def costliest(self, lane: LaneSpec) -> list[tuple[int, int]]:
        return sorted(lane.items, key=lambda item: (-item[1], item[0]))[:SEQUENCES_TRIED]

    # ---- neighbourhoods ---------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Recipe]:
        yield from self.reschedules()
        yield from self.moves()
        yield from self.swaps()
        yield from self.rechunks()
        yield from self.splits_and_merges()
        yield from self.repairs()

    def moves(self) -> Iterator[Recipe]:
        self.last = "moves"
        c = self.slowest
        lanes = self.recipe.lanes
        if len(lanes[c].items) < 2:
            return
        for item in self.costliest(lanes[c]):
            for t in self.lightest[:TARGET_LANES]:
                if not self.fits_on(item[1], lanes[t].sp_degree):
                    continue
                source = LaneSpec(lanes[c].sp_degree, tuple(x for x in lanes[c].items if x != item))
                target = LaneSpec(lanes[t].sp_degree, (*lanes[t].items, item))
                yield self.replaced({c: source, t: target})

    def swaps(self) -> Iterator[Recipe]:
        self.last = "swaps"
        c = self.slowest
        lanes = self.recipe.lanes
        for item in self.costliest(lanes[c]):
            for t in self.lightest[:TARGET_LANES]:
                s_c, s_t = lanes[c].sp_degree, lanes[t].sp_degree
                gap = self.times[c] - self.times[t]
                best, best_miss = None, gap
                for other in lanes[t].items:
                    if other[1] >= item[1] or not self.fits_on(item[1], s_t) or not self.fits_on(other[1], s_c):
                        continue
                    shift_c = self.work(s_c, item[1]) - self.work(s_c, other[1])
                    shift_t = self.work(s_t, item[1]) - self.work(s_t, other[1])
                    miss = abs(gap - shift_c - shift_t)  # what is left of the imbalance after the swap
                    if miss < best_miss:
                        best, best_miss = other, miss
                if best is not None:
                    source = LaneSpec(s_c, tuple(best if x == item else x for x in lanes[c].items))
                    target = LaneSpec(s_t, tuple(item if x == best else x for x in lanes[t].items))
                    yield self.replaced({c: source, t: target})

    def reschedules(self) -> Iterator[Recipe]:
        """The slowest lane's chunking at another schedule warm-up depth."""
        self.last = "reschedules"
        c = self.slowest
        if self.pipeline.num_stages == 1:
            return
        for depth in WARMUP_DEPTHS:
            if depth != self.chunks[c].warmup_groups:
                chunks = list(self.chunks)
                chunks[c] = replace(self.chunks[c], warmup_groups=depth)
                yield self.recipe.with_lanes(self.recipe.lanes, chunks)

    def rechunks(self) -> Iterator[Recipe]:
        """Another chunking for the slowest lane (at its warm-up depth), then for every lane at once."""
        self.last = "rechunks"
        c = self.slowest
        depth = self.chunks[c].warmup_groups
        knobs = [replace(knob, warmup_groups=depth) for knob in chunkings_for(self.pipeline.num_stages)]
        for knob in knobs:
            if knob != self.chunks[c]:
                chunks = list(self.chunks)
                chunks[c] = knob
                yield self.recipe.with_lanes(self.recipe.lanes, chunks)
        for knob in knobs:
            if any(k != knob for k in self.chunks):
                yield self.recipe.with_lanes(self.recipe.lanes, [knob] * len(self.chunks))

    def splits_and_merges(self) -> Iterator[Recipe]:
        self.last = "splits_and_merges"
        c = self.slowest
        lanes = self.recipe.lanes
        s = lanes[c].sp_degree
        half = s // 2
        if s > 1 and half in self.valid_sizes and all(self.fits_on(n, half) for _, n in lanes[c].items):
            halves: list[list[tuple[int, int]]] = [[], []]
            heap = [(0.0, 0), (0.0, 1)]
            for item in sorted(lanes[c].items, key=lambda x: (-x[1], x[0])):
                load, h = heapq.heappop(heap)
                halves[h].append(item)
                heapq.heappush(heap, (load + self.work(half, item[1]), h))
            yield self.replaced(
                {c: LaneSpec(0, ())},
                [
                    (LaneSpec(half, tuple(halves[0])), self.chunks[c]),
                    (LaneSpec(half, tuple(halves[1])), self.chunks[c]),
                ],
            )
        partner = next((t for t in self.lightest if lanes[t].sp_degree == s), None)
        if partner is not None and 2 * s in self.valid_sizes:
            merged = LaneSpec(2 * s, lanes[c].items + lanes[partner].items)
            yield self.replaced({c: LaneSpec(0, ()), partner: LaneSpec(0, ())}, [(merged, self.chunks[c])])

    def repairs(self) -> Iterator[Recipe]:
        self.last = "repairs"
        c = self.slowest
        lanes = self.recipe.lanes
        index_of = {seq_id: i for i, seq_id in enumerate(self.ctx.batch.seq_ids)}
        budget: PlanningBudget = self.session.budget
        for extra in REPAIR_LANES:
            freed = [c, *self.lightest[:extra]]
            if len(freed) < 2:
                return
            devices = sum(lanes[i].sp_degree for i in freed)
            indices = [index_of[seq_id] for i in freed for seq_id, _ in lanes[i].items]
            if not indices or budget.exhausted():
                return
            found = flexible_lanes(
                self.ctx,
                self.pipeline,
                sliced=self.recipe.sliced,
                limits=budget.solver_limits(0.1),
                fidelity=True,
                chunks_per_stage=self.recipe.chunking.chunks_per_stage,
                indices=indices,
                block_size=devices,
            )
            if found is None:
                continue
            sol = found.solution
            budget.charge(solver_units(sol.deterministic_s, sol.probes, sol.entries))
            yield self.replaced(
                dict.fromkeys(freed, LaneSpec(0, ())),
                [(lane, self.recipe.chunking) for lane in found.lanes],
            )
            if extra >= len(self.lightest):
                return


def improve(session: SearchSession, start: Candidate, budget: PlanningBudget) -> tuple[Candidate, int]:
    """The best layout the neighbourhoods reach from `start` within `budget`, and how many steps improved it."""
    if start.recipe is None:
        return start, 0
    previous_budget = session.budget
    session.budget = budget
    try:
        return walk(session, start, budget)
    finally:
        session.budget = previous_budget


def walk(session: SearchSession, start: Candidate, budget: PlanningBudget) -> tuple[Candidate, int]:
    assert start.recipe is not None
    recipe = start.recipe
    pipeline, cost = recipe.pipeline, recipe.ctx.cost
    idle = max(cost.collective_times(p, pipeline).idle_round_s for p in range(pipeline.num_stages))
    scores = session.lane_scores(recipe)
    if scores is None:
        return start, 0
    score = Score.of(scores, idle)
    best, steps, checked = start, 0, 0
    while not budget.exhausted():
        hood = Neighbourhoods(session, recipe, scores)
        for neighbour in hood:
            if budget.exhausted():
                break
            found = session.lane_scores(neighbour)
            if found is not None and (better := Score.of(found, idle)).beats(score):
                log.debug("step %d: %.4f -> %.4f s (%s)", steps, score.iteration_s, better.iteration_s, hood.last)
                recipe, scores, score = neighbour, found, better
                steps += 1
                break
        else:
            break  # a local optimum of every neighbourhood
        if steps - checked >= VERIFY_EVERY:
            checked = steps
            verified = session.candidate(recipe)
            if verified is None or verified.iteration_s >= best.iteration_s:
                return best, steps  # the lanes alone mislead here: keep the best checked layout
            best = verified
    if steps > checked:
        verified = session.candidate(recipe)
        if verified is not None and verified.iteration_s < best.iteration_s:
            best = verified
    return best, steps
