"""Flexible SP lanes for one pipeline degree: bucket the lengths, solve the lane ILP, deal sequences to lanes.

The lane ILP (`solvers.lane_assignment_milp`) over length buckets picks how many lanes of each size and how
many sequences of each bucket go to each size; the members of a bucket then go to size classes (longest to
the biggest lanes) and are dealt to the lanes of a class longest-processing-time first.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from planner_service.context import PlanningContext
from planner_service.layout.lanes import LaneSpec, deal_longest_first
from planner_service.layout.memory_fit import sequence_fits
from planner_service.layout.work_model import WorkModel, work_model
from planner_service.solvers.bucketing import DEFAULT_NUM_BUCKETS, Bucket, bucket_lengths
from planner_service.solvers.lane_assignment_milp import LaneProblem, LaneSolution, solve_lanes
from proto import PipelineSpec, SolverInfo, SolverStatus
from proto.topology import valid_sp_degrees


@dataclass(frozen=True, slots=True)
class FlexibleLanes:
    lanes: list[LaneSpec]
    solution: LaneSolution

    def solver_info(self, *, extra: str = "") -> SolverInfo:
        sol = self.solution
        status = {"optimal": SolverStatus.OPTIMAL, "feasible": SolverStatus.FEASIBLE}.get(
            sol.status, SolverStatus.TIMEOUT_FALLBACK
        )
        sizes: dict[int, int] = {}
        for lane in self.lanes:
            sizes[lane.sp_degree] = sizes.get(lane.sp_degree, 0) + 1
        layout = " + ".join(f"{n}x{s}" for s, n in sorted(sizes.items(), reverse=True))
        return SolverInfo(
            backend=sol.backend,
            status=status,
            gap=sol.gap,
            solve_s=sol.solve_s,
            message=(
                f"lanes {layout}; model makespan {sol.makespan_s:.4f} s >= bound {sol.lower_bound_s:.4f} s "
                f"after {sol.probes} ILP probes{extra}"
            ),
        )


@functools.lru_cache(maxsize=16)
def quadratic_buckets(lengths: tuple[int, ...], a2: float, a1: float, num_buckets: int) -> tuple[Bucket, ...]:
    """Buckets under cost a2*L^2 + a1*L, memoised: a planning call asks once per candidate pipeline degree."""
    return tuple(bucket_lengths(lengths, lambda x: a2 * x * x + a1 * x, num_buckets))


def lane_problem(
    ctx: PlanningContext,
    pipeline: PipelineSpec,
    buckets: Sequence[Bucket],
    sizes: Sequence[int],
    *,
    sliced: bool,
) -> tuple[LaneProblem, dict[int, WorkModel]]:
    """The lane ILP's inputs: per (bucket, size) mean and worst work, `inf` where the bucket does not fit."""
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


def flexible_lanes(
    ctx: PlanningContext, pipeline: PipelineSpec, *, sliced: bool, time_limit_s: float
) -> FlexibleLanes | None:
    """The lane layout and sequence assignment of the lane ILP; None when some sequence fits no lane."""
    block = ctx.cost.dp_size(pipeline)
    sizes = valid_sp_degrees(ctx.model, block)
    if not sizes:
        return None
    profile = ctx.cost.profile
    buckets = quadratic_buckets(
        tuple(ctx.batch.lengths), profile.attn_s_per_token2, profile.linear_s_per_token, DEFAULT_NUM_BUCKETS
    )
    problem, models = lane_problem(ctx, pipeline, buckets, sizes, sliced=sliced)
    solution = solve_lanes(problem, backend=ctx.solver, time_limit_s=time_limit_s)
    if solution is None:
        return None
    return FlexibleLanes(realize_lanes(ctx, problem, solution, buckets, models), solution)
