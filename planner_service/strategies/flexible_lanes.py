"""Flexible SP lanes for one pipeline degree: bucket, solve the lane ILP, deal sequences to lanes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner_service.plan_assembly import PlanningContext
from planner_service.solvers.bucketing import DEFAULT_NUM_BUCKETS, bucket_lengths
from planner_service.solvers.lane_assignment_milp import LaneSolution, solve_lanes
from planner_service.strategies.dynamic_lanes import LaneSpec, lane_problem, realize_lanes
from planner_service.strategies.lane_layout import valid_sp_degrees
from proto import PipelineSpec, SolverInfo


@dataclass(frozen=True, slots=True)
class FlexibleLanes:
    lanes: list[LaneSpec]
    solution: LaneSolution

    def solver_info(self, *, extra: str = "") -> SolverInfo:
        sol = self.solution
        status = {"optimal": "optimal", "feasible": "feasible"}.get(sol.status, "timeout-fallback")
        sizes: dict[int, int] = {}
        for lane in self.lanes:
            sizes[lane.sp_degree] = sizes.get(lane.sp_degree, 0) + 1
        layout = " + ".join(f"{n}x{s}" for s, n in sorted(sizes.items(), reverse=True))
        return SolverInfo(
            backend=sol.backend,
            status=status,  # type: ignore[arg-type]
            gap=sol.gap,
            solve_s=sol.solve_s,
            message=(
                f"lanes {layout}; model makespan {sol.makespan_s:.4f} s >= bound {sol.lower_bound_s:.4f} s "
                f"after {sol.probes} ILP probes{extra}"
            ),
        )


def flexible_lanes(
    ctx: PlanningContext, pipeline: PipelineSpec, *, sliced: bool, time_limit_s: float
) -> FlexibleLanes | None:
    """The lane layout and sequence assignment of the lane ILP; None when some sequence fits no lane."""
    block = ctx.cost.dp_size(pipeline)
    sizes = valid_sp_degrees(ctx.model, block)
    if not sizes:
        return None
    profile = ctx.cost.profile

    def cost(lengths: np.ndarray) -> np.ndarray:
        return profile.attn_s_per_token2 * lengths * lengths + profile.linear_s_per_token * lengths

    buckets = bucket_lengths(ctx.batch.lengths, cost, DEFAULT_NUM_BUCKETS)
    problem, models = lane_problem(ctx, pipeline, buckets, sizes, sliced=sliced)
    solution = solve_lanes(problem, backend=ctx.solver, time_limit_s=time_limit_s)
    if solution is None:
        return None
    return FlexibleLanes(realize_lanes(ctx, problem, solution, buckets, models), solution)
