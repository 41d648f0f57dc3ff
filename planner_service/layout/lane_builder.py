"""Building the lanes of one pipeline split, with every decision shared across identical lanes.

A search builds the same lane again and again (a neighbour differs from its parent in one or two lanes; a
uniform layout has many lanes whose chunks have the same shapes), and building one is the costly part of
evaluating a layout: chunking, the 1F1B schedule, the recompute choice and the plan objects. So a
`LaneBuilder` (one per planning call and pipeline split) keeps:

- built lanes by (SP degree, offset, sequences, chunking knobs, recompute mode), and
- recompute decisions by (SP degree, chunk shapes): two lanes whose chunks have the same segment structure
  (token ranges, slice chains, sequence lengths; not the sequence ids) get the same recompute counts, so a
  2048-device uniform layout solves a few recompute programs instead of hundreds.

Lanes run independently until the data-parallel sync, so a lane can also be priced alone (`score`: the
simulator on a plan of that one lane), which lets a local search price a neighbour by re-simulating only the
lanes it changed. Every build and score is charged to the call's `PlanningBudget` in deterministic work units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from planner_service.assembly import LaneDraft, PlanHeader, lane_of_draft, simulate_lanes
from planner_service.budget import UNITS_PER_BUILT_OP, UNITS_PER_BUILT_SEQUENCE, PlanningBudget
from planner_service.context import PlanningContext
from planner_service.layout.chunks import cost_balanced_chunks, costliest_last
from planner_service.layout.lanes import LaneSpec
from planner_service.layout.memory_fit import memory_token_cap
from planner_service.layout.recompute import RecomputeMode, lane_recompute
from proto import Batch, Chunk, Lane, PipelineSpec, SolverInfo
from proto.topology import Topology

ChunkSignature = tuple[tuple[tuple[int, int, int, int], ...], ...]
"""Per chunk, its segments as (sequence rank by first appearance, start, end, sequence length)."""


def chunk_signature(chunks: Sequence[Chunk], lengths: dict[int, int]) -> ChunkSignature:
    """What a lane's memory timeline and recompute choice depend on, with sequence ids renamed in order."""
    rename: dict[int, int] = {}
    return tuple(
        tuple(
            (rename.setdefault(seg.seq_id, len(rename)), seg.start, seg.end, lengths[seg.seq_id])
            for seg in chunk.segments
        )
        for chunk in chunks
    )


@dataclass(frozen=True, slots=True)
class BuiltLane:
    """A lane ready to assemble: the strategy's draft and the proto lane (lane id 0 until assembled)."""

    draft: LaneDraft
    lane: Lane

    @property
    def num_ops(self) -> int:
        return sum(len(ops) for ops in self.lane.schedule)


@dataclass(frozen=True, slots=True)
class Chunking:
    """About `chunks_per_stage` x P chunks of equal cost per lane; with `costliest_last` the costliest chunk of
    whole sequences runs last (its backward hides the gradient sync), else chunks run costliest first (the
    1F1B cool-down runs on the cheapest); `warmup_groups`: slice groups each stage keeps in flight beyond
    1F1B's chunks (`schedules.build_schedule`; 0: plain 1F1B warm-up)."""

    chunks_per_stage: int
    costliest_last: bool = False
    warmup_groups: int = 0


@dataclass(frozen=True, slots=True)
class ChunkKnobs:
    """Everything that turns a lane's sequences into chunks and recompute counts."""

    chunking: Chunking
    sliced: bool
    recompute: RecomputeMode


@dataclass(frozen=True, slots=True)
class LaneScore:
    """A lane simulated alone: when its stages' work and their share of the gradient sync end, when its
    pipeline finishes, whether its devices' peak memory fits, and its chunks (with per-chunk data-parallel
    collectives, a lane with fewer chunks than the busiest joins the rest of the rounds idle)."""

    end_s: float
    finish_s: float
    fits: bool
    num_chunks: int


class LaneBuilder:
    """Builds (and remembers) the lanes of one context and pipeline split for one planning call."""

    def __init__(self, ctx: PlanningContext, pipeline: PipelineSpec, budget: PlanningBudget) -> None:
        self.ctx = ctx
        self.pipeline = pipeline
        self.budget = budget
        cost = ctx.cost
        dp = cost.dp_size(pipeline)
        self.topology = Topology.of(ctx.cluster, pipeline.num_stages)
        self.stage_budgets = [
            cost.usable_memory_bytes - cost.model_state_bytes(p, pipeline, dp) for p in range(pipeline.num_stages)
        ]
        self.lengths = ctx.batch.length_of()
        self._caps: dict[int, int] = {}
        self._lanes: dict[tuple[object, ...], BuiltLane | None] = {}
        self._recompute: dict[tuple[object, ...], tuple[tuple[int, ...], ...] | None] = {}
        self._scores: dict[tuple[object, ...], LaneScore] = {}
        self.header: PlanHeader | None = None
        self.recompute_solves = 0
        """Recompute choices actually made (cache misses), for the solver message and the latency bench."""

    def token_cap(self, sp_degree: int) -> int:
        if sp_degree not in self._caps:
            p = self.pipeline.num_stages
            self._caps[sp_degree] = memory_token_cap(self.ctx.cost, self.pipeline, sp_degree, in_flight=p)
        return self._caps[sp_degree]

    def score(self, spec: LaneSpec, offset: int, knobs: ChunkKnobs) -> LaneScore | None:
        """The lane simulated alone (None when it cannot be built within memory)."""
        key = (spec.sp_degree, offset, spec.items, knobs, False)
        if key in self._scores:
            return self._scores[key]
        built = self.build(spec, offset, knobs)
        if built is None:
            return None
        ids = [seq_id for seq_id, _ in spec.items]
        alone = Batch(seq_ids=ids, lengths=[self.lengths[i] for i in ids]) if ids else self.ctx.batch
        plan = simulate_lanes(
            self.ctx,
            strategy="lane",
            pipeline=self.pipeline,
            lanes=[built.lane],
            solver=SolverInfo(),
            budget=self.budget,
            header=self.header,
            batch=alone,
        )
        predicted = plan.predicted
        fits = max(predicted.peak_memory_bytes, default=0.0) <= self.ctx.cluster.device_memory_bytes
        finish = max(predicted.lane_s, default=0.0)
        self._scores[key] = LaneScore(predicted.iteration_s, finish, fits, len(built.lane.chunks))
        return self._scores[key]

    def build(self, spec: LaneSpec, offset: int, knobs: ChunkKnobs, *, exact: bool = False) -> BuiltLane | None:
        """The lane of `spec` at `offset` with `knobs`; None when even full recompute does not fit memory."""
        key = (spec.sp_degree, offset, spec.items, knobs, exact)
        if key in self._lanes:
            return self._lanes[key]
        s, p_count = spec.sp_degree, self.pipeline.num_stages
        profile = self.ctx.cost.profile
        chunks = cost_balanced_chunks(
            profile,
            spec.items,
            target_chunks=knobs.chunking.chunks_per_stage * p_count,
            token_cap=self.token_cap(s),
            allow_slicing=knobs.sliced,
        )
        if knobs.chunking.costliest_last:
            chunks = costliest_last(profile, chunks, self.lengths)
        warmup = knobs.chunking.warmup_groups
        counts = self.recompute_for(chunks, s, offset, knobs.recompute, exact=exact, warmup_groups=warmup)
        built = None
        if counts is not None:
            draft = LaneDraft(sp_degree=s, offset=offset, chunks=tuple(chunks), recompute=counts, warmup_groups=warmup)
            built = BuiltLane(draft=draft, lane=lane_of_draft(self.topology, draft))
        self.budget.charge(UNITS_PER_BUILT_SEQUENCE * len(spec.items) + UNITS_PER_BUILT_OP * 2 * len(chunks) * p_count)
        self._lanes[key] = built
        return built

    def recompute_for(
        self,
        chunks: list[Chunk],
        sp_degree: int,
        offset: int,
        mode: RecomputeMode,
        *,
        exact: bool,
        warmup_groups: int = 0,
    ) -> tuple[tuple[int, ...], ...] | None:
        """Recompute counts per stage, shared by every lane with the same SP degree, chunk shapes and schedule."""
        key = (sp_degree, mode, exact, warmup_groups, chunk_signature(chunks, self.lengths))
        if key not in self._recompute:
            self.recompute_solves += 1
            limits = self.budget.solver_limits(share=0.05) if exact else None
            self._recompute[key] = lane_recompute(
                self.ctx,
                self.pipeline,
                sp_degree=sp_degree,
                offset=offset,
                chunks=chunks,
                lengths=self.lengths,
                budgets=self.stage_budgets,
                mode=mode,
                exact=exact,
                time_limit_s=limits.wall_s if limits else 0.0,
                deterministic_s=limits.deterministic_s if limits else math.inf,
                charge=self.budget.charge,
                warmup_groups=warmup_groups,
            )
        return self._recompute[key]
