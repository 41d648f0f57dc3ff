"""Flexible SP lanes for one pipeline degree: bucket, solve the lane ILP, deal sequences to lanes."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from planner_service.plan_assembly import PlanningContext
from planner_service.solvers.bucketing import DEFAULT_NUM_BUCKETS, Bucket, bucket_lengths
from planner_service.solvers.lane_assignment_milp import LaneSolution, solve_lanes
from planner_service.strategies.dynamic_lanes import LaneSpec, lane_problem, realize_lanes
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
