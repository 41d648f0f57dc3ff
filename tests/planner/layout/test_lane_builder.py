"""The lane builder: recompute decisions shared by lanes of the same shapes, lanes priced alone.

Guards against a search that solves the same recompute program once per lane (hundreds at 2048 devices),
a shared decision applied to a lane whose chunks differ, and a per-lane price that disagrees with the
simulator's price of the whole plan (the improvement phase walks on per-lane prices).
"""

from __future__ import annotations

import pytest

from planner_service.budget import PlanningBudget
from planner_service.context import PlanningContext
from planner_service.cost_model import CostModel
from planner_service.layout.lane_builder import Chunking, ChunkKnobs, LaneBuilder, chunk_signature
from planner_service.layout.lanes import LaneSpec, buddy_offsets
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.search import Recipe, SearchSession
from proto import Batch, Chunk, PipelineSpec, Segment, SolverInfo

CLUSTER = resolve_cluster("a800-80g-4x8")
MODEL = resolve_model("llama2-7b")


def context(batch: Batch) -> PlanningContext:
    budget = PlanningBudget(units=1e9, wall_end=1e18)
    return PlanningContext(
        batch=batch, cluster=CLUSTER, model=MODEL, cost=CostModel.from_specs(CLUSTER, MODEL), budget=budget
    )


def test_chunk_signature_ignores_sequence_ids_but_not_shapes() -> None:
    lengths = {7: 100, 8: 50, 9: 100, 10: 50, 11: 60}
    a = [Chunk(segments=[Segment(seq_id=7, start=0, end=100)]), Chunk(segments=[Segment(seq_id=8, start=0, end=50)])]
    b = [Chunk(segments=[Segment(seq_id=9, start=0, end=100)]), Chunk(segments=[Segment(seq_id=10, start=0, end=50)])]
    c = [Chunk(segments=[Segment(seq_id=9, start=0, end=100)]), Chunk(segments=[Segment(seq_id=11, start=0, end=60)])]
    assert chunk_signature(a, lengths) == chunk_signature(b, lengths)
    assert chunk_signature(a, lengths) != chunk_signature(c, lengths)


def test_identical_lanes_share_one_recompute_decision() -> None:
    """Eight lanes of two 60K-token sequences each on P = 4 (recompute needed): one decision, eight lanes."""
    batch = Batch.from_lengths([60000] * 16)
    ctx = context(batch)
    pipeline = PipelineSpec.even(MODEL.num_layers, 4)
    builder = LaneBuilder(ctx, pipeline, ctx.budget)
    knobs = ChunkKnobs(Chunking(4), sliced=True, recompute="adaptive")
    built = [builder.build(LaneSpec(1, ((2 * i, 60000), (2 * i + 1, 60000))), i, knobs) for i in range(8)]
    assert all(b is not None for b in built)
    assert builder.recompute_solves == 1
    recompute = {b.draft.recompute for b in built if b is not None}
    assert len(recompute) == 1 and any(any(r) for r in recompute.pop())  # shared, and memory did force some


def test_lanes_priced_alone_give_the_plans_simulated_time() -> None:
    """The slowest lane alone is the plan's time (lanes meet only in the gradient sync)."""
    batch = Batch.from_lengths([30000, 20000, 9000, 4000, 3000, 2000, 800, 500, 300, 100, 64, 32])
    ctx = context(batch)
    pipeline = PipelineSpec.even(MODEL.num_layers, 2)
    items = list(zip(batch.seq_ids, batch.lengths, strict=True))
    lanes = (LaneSpec(8, tuple(items[:2])), LaneSpec(4, tuple(items[2:6])), LaneSpec(4, tuple(items[6:])))
    recipe = Recipe(
        ctx=ctx,
        pipeline=pipeline,
        lanes=lanes,
        strategy="helix",
        chunking=Chunking(4),
        sliced=True,
        recompute="adaptive",
        solver=SolverInfo(),
    )
    assert buddy_offsets([lane.sp_degree for lane in lanes]) == [0, 8, 12]
    session = SearchSession(ctx, ctx.budget)
    scores = session.lane_scores(recipe)
    whole = session.candidate(recipe)
    assert scores is not None and whole is not None
    assert max(s.end_s for s in scores) == pytest.approx(whole.iteration_s, rel=1e-12)
    assert sorted(s.finish_s for s in scores) == pytest.approx(sorted(whole.plan.predicted.lane_s), rel=1e-12)
