"""Flexible SP lanes for one pipeline degree: bucket the lengths, solve the lane ILP, deal sequences to lanes.

The lane ILP (`solvers.lane_assignment_milp`) over length buckets picks how many lanes of each size and how
many sequences of each bucket go to each size; the members of a bucket then go to size classes (longest to
the biggest lanes) and are dealt to the lanes of a class longest-processing-time first.

Two cost models for the ILP: the work model (compute and all-to-alls, what FlexSP's paper optimises), or
with `fidelity` what the simulator charges on top (`work_model.SimulatedWork`: recompute forced by memory,
pipeline fill and drain, per-chunk overheads shared by packed sequences). The improvement phase also solves
it on a part of the batch and of the stage block (`indices`, `block_size`) to repair a neighbourhood.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from planner_service.budget import SolverLimits
from planner_service.context import PlanningContext
from planner_service.layout.lanes import LaneSpec, deal_longest_first
from planner_service.layout.memory_fit import sequence_fits
from planner_service.layout.work_model import SimulatedWork, WorkModel, exposed_sync_s, simulated_work, work_model
from planner_service.solvers.bucketing import DEFAULT_NUM_BUCKETS, Bucket, bucket_lengths
from planner_service.solvers.lane_assignment_milp import LaneProblem, LaneSolution, solve_lanes
from proto import PipelineSpec, SolverInfo, SolverStatus
from proto.topology import valid_sp_degrees


@dataclass(frozen=True, slots=True)
class FlexibleLanes:
    lanes: list[LaneSpec]
    solution: LaneSolution
    sync_exposed_s: float = 0.0
    """The split's exposed gradient sync (with `fidelity`), to add to the makespan when comparing splits."""

    @property
    def estimate_s(self) -> float:
        """The model's iteration estimate: the makespan plus the exposed gradient sync."""
        return self.solution.makespan_s + self.sync_exposed_s

    def solver_info(self, *, extra: str = "") -> SolverInfo:
        sol = self.solution
        status = {"optimal": SolverStatus.OPTIMAL, "feasible": SolverStatus.FEASIBLE}.get(
            sol.status, SolverStatus.TIMEOUT_FALLBACK
        )
        return SolverInfo(
            backend=sol.backend,
            status=status,
            gap=sol.gap,
            solve_s=sol.solve_s,
            message=(
                f"lanes {lane_sizes_text(self.lanes)}; lane model makespan {sol.makespan_s:.4f} s >= bound "
                f"{sol.lower_bound_s:.4f} s (model gap {sol.gap:.1%}) after {sol.probes} ILP probes{extra}"
            ),
        )


def lane_sizes_text(lanes: Sequence[LaneSpec]) -> str:
    """'2x8 + 4x1': lanes per size, biggest first."""
    sizes: dict[int, int] = {}
    for lane in lanes:
        sizes[lane.sp_degree] = sizes.get(lane.sp_degree, 0) + 1
    return " + ".join(f"{n}x{s}" for s, n in sorted(sizes.items(), reverse=True))


@functools.lru_cache(maxsize=16)
def quadratic_buckets(lengths: tuple[int, ...], a2: float, a1: float, num_buckets: int) -> tuple[Bucket, ...]:
    """Buckets under cost a2*L^2 + a1*L, memoised: a planning call asks once per candidate pipeline degree."""
    return tuple(bucket_lengths(lengths, lambda x: a2 * x * x + a1 * x, num_buckets))


def lane_problem(
    ctx: PlanningContext,
    pipeline: PipelineSpec,
    buckets: Sequence[Bucket],
    sizes: Sequence[int],
    lengths: np.ndarray,
    *,
    block_size: int,
    sliced: bool,
    fidelity: dict[int, SimulatedWork] | None,
) -> LaneProblem:
    """The lane ILP's inputs: per (bucket, size) mean and worst work, `inf` where the bucket does not fit."""
    models = {s: work_model(ctx.cost, pipeline, s) for s in sizes}
    charged = {s: (fidelity[s] if fidelity else models[s]) for s in sizes}
    fits_cache: dict[tuple[int, int], bool] = {}

    def fits(length: int, s: int) -> bool:
        key = (length, s)
        if key not in fits_cache:
            fits_cache[key] = sequence_fits(ctx.cost, pipeline, length, s, sliced=sliced)
        return fits_cache[key]

    mean_work, max_work = [], []
    for bucket in buckets:
        members = lengths[list(bucket.members)]
        longest = np.array([bucket.max_length], dtype=np.float64)
        mean_row, max_row = [], []
        for s in sizes:
            ok = fits(bucket.max_length, s)
            mean_row.append(float(charged[s](members).mean()) if ok else math.inf)
            max_row.append(float(charged[s](longest)[0]) if ok else math.inf)
        mean_work.append(tuple(mean_row))
        max_work.append(tuple(max_row))
    return LaneProblem(
        block_size=block_size,
        sizes=tuple(sizes),
        counts=tuple(b.count for b in buckets),
        mean_work=tuple(mean_work),
        max_work=tuple(max_work),
        lane_overhead=tuple(fidelity[s].chunk_overhead_s for s in sizes) if fidelity else (),
    )


def realize_lanes(
    ctx: PlanningContext,
    problem: LaneProblem,
    solution: LaneSolution,
    buckets: Sequence[Bucket],
    indices: Sequence[int],
    models: dict[int, WorkModel],
) -> list[LaneSpec]:
    """Concrete lanes: bucket members go to size classes (longest to the biggest lanes), then LPT per class.

    Bucket members index `indices`, which index the batch."""
    per_class: dict[int, list[int]] = {k: [] for k in range(len(problem.sizes))}
    lengths = ctx.batch.lengths
    for q, bucket in enumerate(buckets):
        members = sorted((indices[m] for m in bucket.members), key=lambda i: (-lengths[i], i))
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


def flexible_lanes(
    ctx: PlanningContext,
    pipeline: PipelineSpec,
    *,
    sliced: bool,
    limits: SolverLimits,
    fidelity: bool = False,
    chunks_per_stage: int = 1,
    indices: Sequence[int] | None = None,
    block_size: int | None = None,
) -> FlexibleLanes | None:
    """The lane layout and sequence assignment of the lane ILP; None when some sequence fits no lane.

    `indices` (default: the whole batch) are the sequences to place on `block_size` devices (default: the
    stage block); `fidelity` charges what the simulator charges (`SimulatedWork` at `chunks_per_stage`).
    """
    block = block_size or ctx.cost.dp_size(pipeline)
    sizes = [s for s in valid_sp_degrees(ctx.model, block) if block % s == 0]
    if not sizes:
        return None
    chosen = list(range(len(ctx.batch.lengths))) if indices is None else list(indices)
    subset = tuple(ctx.batch.lengths[i] for i in chosen)
    profile = ctx.cost.profile
    buckets = quadratic_buckets(subset, profile.attn_s_per_token2, profile.linear_s_per_token, DEFAULT_NUM_BUCKETS)
    sync = exposed_sync_s(ctx.cost, pipeline) if fidelity else 0.0
    charged = (
        {
            s: simulated_work(
                ctx.cost, pipeline, s, sliced=sliced, chunks_per_stage=chunks_per_stage, sync_exposed_s=sync
            )
            for s in sizes
        }
        if fidelity
        else None
    )
    problem = lane_problem(
        ctx,
        pipeline,
        buckets,
        sizes,
        np.array(subset, dtype=np.float64),
        block_size=block,
        sliced=sliced,
        fidelity=charged,
    )
    solution = solve_lanes(
        problem, backend=ctx.solver, time_limit_s=limits.wall_s, deterministic_s=limits.deterministic_s
    )
    if solution is None:
        return None
    models = {s: work_model(ctx.cost, pipeline, s) for s in sizes}
    lanes = realize_lanes(ctx, problem, solution, buckets, chosen, models)
    return FlexibleLanes(lanes, solution, sync)
