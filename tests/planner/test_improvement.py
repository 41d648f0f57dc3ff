"""The improvement phase and the simulator-fidelity lane model.

Guards against an improvement phase that returns a plan slower than its start (or one whose reported time is
not the simulator's), a lane model that still ignores the recompute memory forces on long sequences, and a
lane ILP that ignores per-lane overheads it is given.
"""

from __future__ import annotations

import numpy as np
import pytest

from planner_service.budget import PlanningBudget
from planner_service.context import PlanningContext, options_that_fit
from planner_service.cost_model import CostModel
from planner_service.improvement import improve
from planner_service.layout.lane_builder import Chunking
from planner_service.layout.lanes import LaneSpec
from planner_service.layout.work_model import simulated_work
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.search import Recipe, SearchSession
from planner_service.solvers.lane_assignment_milp import LaneProblem, solve_lanes
from proto import Batch, PipelineSpec, SolverInfo

CLUSTER = resolve_cluster("a800-80g-4x8")
MODEL = resolve_model("llama2-7b")


def context(batch: Batch, units: float = 5_000.0) -> PlanningContext:
    return PlanningContext(
        batch=batch,
        cluster=CLUSTER,
        model=MODEL,
        cost=CostModel.from_specs(CLUSTER, MODEL),
        budget=PlanningBudget(units=units, wall_end=1e18),
    )


def recipe_of(ctx: PlanningContext, num_stages: int, lanes: tuple[LaneSpec, ...], chunking: Chunking) -> Recipe:
    return Recipe(
        ctx=ctx,
        pipeline=PipelineSpec.even(MODEL.num_layers, num_stages),
        lanes=lanes,
        strategy="helix",
        chunking=chunking,
        sliced=num_stages > 1,
        recompute="adaptive",
        solver=SolverInfo(),
    )


def test_improvement_balances_a_lopsided_layout_and_reports_the_simulated_time() -> None:
    """Two lanes of 16 devices at P = 1, every sequence on the first: moving work to the idle lane must help,
    and the plan returned is priced by a whole-plan simulation (not by the per-lane walk)."""
    batch = Batch.from_lengths([8000, 7000, 6000, 5000, 4000, 3000, 2000, 1000] * 2)
    ctx = context(batch)
    items = tuple(zip(batch.seq_ids, batch.lengths, strict=True))
    recipe = recipe_of(ctx, 1, (LaneSpec(16, items), LaneSpec(16, ())), Chunking(1, costliest_last=True))
    session = SearchSession(ctx, ctx.budget)
    start = session.candidate(recipe)
    assert start is not None
    improved, steps = improve(session, start, ctx.budget)
    assert steps > 0 and improved.iteration_s < start.iteration_s
    assert improved.recipe is not None
    again = session.build(improved.recipe)
    assert again is not None and again.predicted.iteration_s == pytest.approx(improved.iteration_s, rel=1e-12)
    assert all(lane.items for lane in improved.recipe.lanes)


def test_improvement_never_returns_a_slower_plan() -> None:
    batch = Batch.from_lengths([20000, 9000, 3000, 800, 600, 120, 5000, 4000])
    ctx = context(batch, units=300.0)
    items = tuple(zip(batch.seq_ids, batch.lengths, strict=True))
    recipe = recipe_of(ctx, 2, (LaneSpec(8, items[:4]), LaneSpec(8, items[4:])), Chunking(4))
    session = SearchSession(ctx, ctx.budget)
    start = session.candidate(recipe)
    assert start is not None
    improved, _ = improve(session, start, ctx.budget)
    assert improved.iteration_s <= start.iteration_s


def test_memory_forces_recompute_on_long_sequences_in_the_lane_model() -> None:
    """One device without a pipeline holds a 4K sequence's activations, not a 64K one's: the model charges the
    long one recompute (at least one layer's forward), the short one none."""
    pipeline = PipelineSpec.even(MODEL.num_layers, 1)
    cost = options_that_fit(context(Batch.from_lengths([1])), pipeline).cost  # model states sharded to fit
    work = simulated_work(cost, pipeline, 1, sliced=False, chunks_per_stage=1)
    forced = work.forced_recompute_s(np.array([4096.0, 65536.0]))
    assert forced[0] == 0.0 and forced[1] > 0.0
    assert work(np.array([65536.0]))[0] > (work.work.a * 65536.0 + work.work.b) * 65536.0


def test_lane_overheads_change_the_ilp_optimum() -> None:
    """Two sequences of work 1 on a block of 2: two lanes of 1 finish at 1, one lane of 2 at 2 x 1 / 2 = 1 too,
    but each busy lane pays an overhead of 0.5 for size 1 and 0 for size 2: one lane of 2 (makespan 1) beats
    two of 1 (1.5)."""
    problem = LaneProblem(
        block_size=2,
        sizes=(1, 2),
        counts=(2,),
        mean_work=((1.0, 0.5),),
        max_work=((1.0, 0.5),),
        lane_overhead=(0.5, 0.0),
    )
    solution = solve_lanes(problem, time_limit_s=5.0, tolerance=1e-6)
    assert solution is not None
    assert solution.lane_counts == (0, 1)
    assert solution.makespan_s == pytest.approx(1.0)
