"""`static`: the tuned fixed-layout baseline (Megatron-LM / DeepSpeed-Ulysses style), re-tuned for every batch.

One Ulysses SP degree s for every lane, one pipeline degree P, DP = N / (P*s) identical lanes,
sequences packed in data order into fixed micro-batches of M tokens (no slicing, so M is at
least the longest sequence), micro-batches dealt round-robin to the lanes, and one checkpoint
policy (none, or full recompute when none does not fit). The grid (P, s, M, policy) is
searched and the fastest memory-feasible layout in the simulator is kept: the baseline is the
best static configuration *for this very batch*, which flatters it, on purpose (the oracle; the
`megatron` strategy is what a job that tunes once actually runs).

The grid is ranked by a closed-form estimate (round-robin lane loads from a fitted chunk cost, plus the 1F1B
fill and drain) and simulated best-estimate first while the call's work budget lasts, so the baseline honours
the time limit at any scale; with the budget to simulate the whole grid it is exact. `static_search` is
shared with `helix` (the best static layout is always one of its candidates) and `megatron` (which tunes on a
sample with it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from planner_service.assembly import LaneDraft, PlanHeader, assemble_plan, finish_plan, fits_memory
from planner_service.budget import UNITS_PER_SEQUENCE_PASS, PlanningBudget
from planner_service.context import PlanningContext, options_that_fit, zero_stage_contexts
from planner_service.errors import InfeasibleWorkload
from planner_service.layout.chunks import pack_next_fit
from planner_service.layout.recompute import uniform_recompute
from planner_service.layout.work_model import BACKWARD_SHARE, SyncExposure, chunk_cost_fit
from proto import Chunk, FixedLayout, PipelineSpec, Plan, SolverInfo, SolverStatus
from proto.topology import Topology, valid_sp_degrees

MICRO_BATCH_MULTIPLIERS = (1, 2, 4)
"""Micro-batch budgets tried: the longest sequence rounded up to a power of two, times these."""
MAX_STATIC_PIPELINE_DEGREE = 16
"""Static layouts beyond P=16 are not used in practice for 7B-30B models (Megatron guidance)."""

StaticLayout = FixedLayout
"""A point of the static grid: (P, s, micro-batch tokens, full recompute)."""


def next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def static_layouts(ctx: PlanningContext, *, longest: int | None = None) -> list[StaticLayout]:
    """The grid the baseline searches (pipeline degree fixed when the job fixes it); micro-batches hold at least
    the `longest` sequence (default: the batch's)."""
    base = next_power_of_two(longest or max(ctx.batch.lengths))
    stages = ctx.pipeline_degrees(max_degree=MAX_STATIC_PIPELINE_DEGREE)
    return [
        StaticLayout(num_stages=p, sp_degree=s, micro_batch_tokens=base * m, full_recompute=full)
        for p in stages
        for s in valid_sp_degrees(ctx.model, Topology.of(ctx.cluster, p).stage_block_size)
        for m in MICRO_BATCH_MULTIPLIERS
        for full in (False, True)
    ]


def static_drafts(ctx: PlanningContext, layout: StaticLayout, pipeline: PipelineSpec) -> list[LaneDraft]:
    block = Topology.of(ctx.cluster, layout.num_stages).stage_block_size
    num_lanes = block // layout.sp_degree
    micro_batches = pack_next_fit(
        list(zip(ctx.batch.seq_ids, ctx.batch.lengths, strict=True)), layout.micro_batch_tokens
    )
    per_lane: list[list[Chunk]] = [[] for _ in range(num_lanes)]
    for i, chunk in enumerate(micro_batches):
        per_lane[i % num_lanes].append(chunk)
    return [
        LaneDraft(
            sp_degree=layout.sp_degree,
            offset=lane * layout.sp_degree,
            chunks=tuple(chunks),
            recompute=uniform_recompute(pipeline, len(chunks), layout.full_recompute),
        )
        for lane, chunks in enumerate(per_lane)
    ]


@dataclass(frozen=True, slots=True)
class RankedLayout:
    estimate_s: float
    layout: StaticLayout


def micro_batch_shapes(lengths: Sequence[int], budget: int) -> tuple[np.ndarray, np.ndarray]:
    """(attention pairs, tokens) of each next-fit micro-batch of `budget` tokens, without building chunks."""
    pairs: list[float] = []
    tokens: list[int] = []
    used, sq = 0, 0.0
    for n in lengths:
        if used and used + n > budget:
            pairs.append(sq)
            tokens.append(used)
            used, sq = 0, 0.0
        used += n
        sq += float(n) * n
    if used:
        pairs.append(sq)
        tokens.append(used)
    return np.array(pairs), np.array(tokens, dtype=np.float64)


def rank_static_layouts(ctx: PlanningContext, layouts: Sequence[StaticLayout]) -> list[RankedLayout]:
    """Layouts with their estimates, fastest first, leaving out those one micro-batch alone cannot fit.

    Estimate of a layout: its lanes' loads (micro-batches dealt round-robin, priced by `ChunkCostFit` on the
    stage with the most layers and on the last stage) plus (P - 1) times its costliest micro-batch (1F1B fill
    and drain), plus the data-parallel collectives a typical last backward op cannot hide."""
    shapes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    syncs: dict[tuple[int, int], SyncExposure] = {}
    ranked: list[RankedLayout] = []
    for layout in layouts:
        p_count, s = layout.num_stages, layout.sp_degree
        pipeline = ctx.split_for(p_count)
        p_ctx = options_that_fit(ctx, pipeline)
        if layout.micro_batch_tokens not in shapes:
            shapes[layout.micro_batch_tokens] = micro_batch_shapes(ctx.batch.lengths, layout.micro_batch_tokens)
        pairs, tokens = shapes[layout.micro_batch_tokens]
        if not micro_batch_fits(p_ctx, pipeline, layout, int(tokens.max())):
            continue
        lanes = p_ctx.cost.dp_size(pipeline) // s
        stage_costs = []
        last_op = 0.0
        for stage in {0, p_count - 1}:
            layers = pipeline.layers_of(stage)
            fit = chunk_cost_fit(
                p_ctx.cost,
                sp_degree=s,
                num_layers=layers,
                is_last_stage=stage == p_count - 1,
                recompute_layers=layers if layout.full_recompute else 0,
            )
            costs = fit(pairs, tokens)
            loads = np.bincount(np.arange(len(costs)) % lanes, weights=costs, minlength=lanes)
            stage_costs.append(float(loads.max()) + (p_count - 1) * float(costs.max()))
            last_op = max(last_op, BACKWARD_SHARE * float(costs.mean()))
        key = (p_count, int(p_ctx.options.zero_stage))
        if key not in syncs:
            syncs[key] = SyncExposure.of(p_ctx.cost, pipeline)
        ranked.append(RankedLayout(max(stage_costs) + syncs[key].exposed_s(last_op), layout))
    ctx.budget.charge(UNITS_PER_SEQUENCE_PASS * len(ctx.batch.lengths) * len(shapes))
    return sorted(ranked, key=lambda r: r.estimate_s)


def micro_batch_fits(ctx: PlanningContext, pipeline: PipelineSpec, layout: StaticLayout, tokens: int) -> bool:
    """A necessary condition: the largest micro-batch alone (with the layout's checkpointing) fits stage 0 and
    the last stage next to their model states, sharded as far as any ZeRO stage allows."""
    cost = ctx.cost
    dp = cost.dp_size(pipeline)
    for stage in {0, pipeline.num_stages - 1}:
        layers = pipeline.layers_of(stage)
        last = stage == pipeline.num_stages - 1
        states = min(z.cost.model_state_bytes(stage, pipeline, dp) for z in zero_stage_contexts(ctx))
        need = states + cost.chunk_activation_bytes(
            tokens,
            sp_degree=layout.sp_degree,
            num_layers=layers,
            recompute_layers=layers if layout.full_recompute else 0,
            is_last_stage=last,
        )
        if need > cost.usable_memory_bytes:
            return False
    return True


@dataclass(frozen=True, slots=True)
class StaticResult:
    """The simulated static plans (no ids), fastest first, and how much of the grid was simulated."""

    plans: list[tuple[Plan, StaticLayout]]
    simulated: int
    grid: int

    @property
    def complete(self) -> bool:
        return self.simulated == self.grid


def build_static(
    ctx: PlanningContext,
    layout: StaticLayout,
    *,
    strategy: str,
    budget: PlanningBudget,
    header: PlanHeader | None = None,
) -> Plan:
    """The simulated plan of one static layout at the ZeRO stage its model states suggest, or at the next
    stages when the built plan does not fit memory (the last one tried is returned: see `fits_memory`)."""
    pipeline = ctx.split_for(layout.num_stages)
    plan = None
    for layout_ctx in zero_stage_contexts(options_that_fit(ctx, pipeline)):
        budget.charge(UNITS_PER_SEQUENCE_PASS * len(ctx.batch.lengths))  # packing the micro-batches
        plan = assemble_plan(
            layout_ctx,
            strategy=strategy,
            pipeline=pipeline,
            drafts=static_drafts(layout_ctx, layout, pipeline),
            solver=SolverInfo(backend="grid-search", status=SolverStatus.OPTIMAL),
            budget=budget,
            header=header,
        )
        if fits_memory(plan, ctx.cluster):
            break
    assert plan is not None
    return plan


class StaticSearch:
    """The static grid ranked by estimate and simulated in that order, resumable: `helix` simulates the
    best-estimated few first and the rest of the grid later, with another share of its budget."""

    def __init__(
        self,
        ctx: PlanningContext,
        *,
        strategy: str = "static",
        layouts: Sequence[StaticLayout] | None = None,
        header: PlanHeader | None = None,
    ) -> None:
        self.ctx = ctx
        self.strategy = strategy
        self.ranked = rank_static_layouts(ctx, static_layouts(ctx) if layouts is None else layouts)
        self.header = header or PlanHeader.of(ctx)
        self.found: list[tuple[Plan, StaticLayout]] = []
        self.fits_without: set[tuple[int, int, int]] = set()
        self.simulated = 0

    def run(self, budget: PlanningBudget, *, at_most: int | None = None) -> StaticResult:
        """Simulate the next layouts while `budget` lasts (always until one fits), at most `at_most` of them."""
        stop = len(self.ranked) if at_most is None else min(len(self.ranked), self.simulated + at_most)
        while self.simulated < stop:
            if self.found and budget.exhausted():
                break
            layout = self.ranked[self.simulated].layout
            self.simulated += 1
            key = (layout.num_stages, layout.sp_degree, layout.micro_batch_tokens)
            if layout.full_recompute and key in self.fits_without:
                continue  # no recompute already fits; full recompute can only be slower
            plan = build_static(self.ctx, layout, strategy=self.strategy, budget=budget, header=self.header)
            if fits_memory(plan, self.ctx.cluster):
                if not layout.full_recompute:
                    self.fits_without.add(key)
                self.found.append((plan, layout))
        return self.result()

    def result(self) -> StaticResult:
        plans = sorted(self.found, key=lambda pl: pl[0].predicted.iteration_s)
        return StaticResult(plans, self.simulated, len(self.ranked))


def static_search(
    ctx: PlanningContext,
    budget: PlanningBudget,
    *,
    strategy: str = "static",
    layouts: Sequence[StaticLayout] | None = None,
    header: PlanHeader | None = None,
) -> StaticResult:
    """Simulate static layouts best-estimate first while `budget` lasts (always at least until one fits)."""
    return StaticSearch(ctx, strategy=strategy, layouts=layouts, header=header).run(budget)


def plan_static(ctx: PlanningContext) -> Plan:
    """Fastest feasible static layout for this batch; InfeasibleWorkload when none fits."""
    started = time.perf_counter()
    result = static_search(ctx, ctx.budget)
    if not result.plans:
        raise InfeasibleWorkload(
            f"static: no layout fits in {ctx.cluster.device_memory_bytes / 2**30:.1f} GiB per device "
            f"(longest sequence {max(ctx.batch.lengths)} tokens, {result.simulated} layouts tried)",
            field="lengths",
        )
    best, layout = result.plans[0]
    return finish_plan(best, static_solver_info(result, layout, time.perf_counter() - started))


def static_solver_info(result: StaticResult, layout: StaticLayout, solve_s: float) -> SolverInfo:
    done = "all" if result.complete else f"the {result.simulated} best-estimated of"
    return SolverInfo(
        backend="grid-search",
        status=SolverStatus.OPTIMAL if result.complete else SolverStatus.FEASIBLE,
        solve_s=solve_s,
        message=f"best of {done} {result.grid} static layouts: {describe_layout(layout)}",
    )


def describe_layout(layout: StaticLayout) -> str:
    return (
        f"P={layout.num_stages}, SP {layout.sp_degree}, micro-batches of {layout.micro_batch_tokens} tokens, "
        f"{'full' if layout.full_recompute else 'no'} recompute"
    )
