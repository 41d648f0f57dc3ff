"""Schedule warm-up depth as a search knob: deeper warm-up fills the bubbles around slice chains, the search
keeps it only when the simulator says it pays, and the plan's schedules are those of the depth it records.

Guards against a re-scheduling step that returns a slower plan, a lane whose recompute was chosen for another
schedule than the one it runs (memory would be checked against the wrong op order), and the chain bubbles
coming back unnoticed.
"""

from __future__ import annotations

from dataclasses import replace

from planner_service.budget import PlanningBudget
from planner_service.context import PlanningContext
from planner_service.cost_model import CostModel
from planner_service.improvement import improve
from planner_service.layout.lane_builder import Chunking
from planner_service.layout.lanes import LaneSpec
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.report import plan_summary
from planner_service.schedules import build_schedule, max_in_flight
from planner_service.search import WARMUP_DEPTHS, Candidate, Proposal, Recipe, SearchSession, finalize
from planner_service.strategies.helix import with_warmup_knobs
from proto import Batch, Op, PipelineSpec, SolverInfo

CLUSTER = resolve_cluster("a800-80g-4x8")
MODEL = resolve_model("llama2-7b")
CHAINS = Batch.from_lengths([64000, 48000, 40000, 32000, 4000, 3000, 2500, 2000, 1500, 1000, 800, 600])
"""Four sequences long enough to be sliced into chains at P = 4 on a lane of 8, and short ones between."""


def recipe_of(batch: Batch, chunking: Chunking, units: float = 5_000.0) -> Recipe:
    ctx = PlanningContext(
        batch=batch,
        cluster=CLUSTER,
        model=MODEL,
        cost=CostModel.from_specs(CLUSTER, MODEL),
        budget=PlanningBudget(units=units, wall_end=1e18),
    )
    items = tuple(zip(batch.seq_ids, batch.lengths, strict=True))
    return Recipe(
        ctx=ctx,
        pipeline=PipelineSpec.even(MODEL.num_layers, 4),
        lanes=(LaneSpec(8, items),),
        strategy="helix",
        chunking=chunking,
        sliced=True,
        recompute="adaptive",
        solver=SolverInfo(),
    )


def built(batch: Batch, chunking: Chunking) -> tuple[SearchSession, Candidate]:
    """A fresh search session and the candidate it builds for one lane of `batch` at `chunking`."""
    recipe = recipe_of(batch, chunking)
    session = SearchSession(recipe.ctx, recipe.ctx.budget)
    found = session.candidate(recipe)
    assert found is not None
    return session, found


def schedules_match_depths(recipe: Recipe, session: SearchSession) -> bool:
    plan = session.build(recipe)
    assert plan is not None
    p = recipe.pipeline.num_stages
    return all(
        lane.schedule == build_schedule(lane.chunks, p, recipe.chunking_of(i).warmup_groups)
        for i, lane in enumerate(plan.lanes)
    )


def test_a_deeper_warmup_fills_the_bubbles_around_slice_chains() -> None:
    """The same lane and chunks, simulated at depth 0 and 1: with four chains the deeper warm-up is faster, and
    its bubble fraction smaller."""
    times = {}
    for depth in (0, 1):
        _, found = built(CHAINS, Chunking(4, warmup_groups=depth))
        assert len({seg.seq_id for c in found.plan.lanes[0].chunks for seg in c.segments}) == len(CHAINS.lengths)
        times[depth] = (found.iteration_s, found.plan.predicted.bubble_fraction)
    assert times[1][0] < times[0][0]
    assert times[1][1] < times[0][1]


def test_reschedule_is_never_slower_and_records_the_depth_its_schedules_use() -> None:
    session, start = built(CHAINS, Chunking(4))
    found = session.reschedule(start)
    assert found.iteration_s < start.iteration_s  # the chains make a deeper warm-up pay here
    assert found.recipe is not None and found.recipe.chunking_of(0).warmup_groups > 0
    assert schedules_match_depths(found.recipe, session)
    assert max(found.plan.predicted.peak_memory_bytes) <= CLUSTER.device_memory_bytes


def test_reschedule_leaves_a_lane_without_chains_alone_when_nothing_pays() -> None:
    """Equal short sequences, one per chunk: depth 1 is plain 1F1B again and depth 2 only holds more, at the same
    time; a depth is kept only for a strictly faster lane, so the candidate comes back as it was."""
    session, start = built(Batch.from_lengths([4000] * 16), Chunking(4))
    assert session.reschedule(start) is start


def test_the_improvement_phase_reaches_a_deeper_warmup() -> None:
    """One lane (no moves or swaps to make): the walk's re-schedule neighbourhood finds the deeper depth."""
    session, start = built(CHAINS, Chunking(4))
    improved, steps = improve(session, start, session.budget)
    assert steps > 0 and improved.iteration_s < start.iteration_s
    assert improved.recipe is not None
    assert any(improved.recipe.chunking_of(i).warmup_groups for i in range(len(improved.recipe.lanes)))
    assert schedules_match_depths(improved.recipe, session)
    again = replace(improved.recipe, lane_chunking=())  # depth 0 everywhere: the start's schedule again
    rebuilt = session.build(again)
    assert rebuilt is not None and rebuilt.predicted.iteration_s > improved.iteration_s


def test_finalize_reschedules_the_near_candidates_before_it_picks_one() -> None:
    """A candidate 5% slower than the fastest at plain 1F1B wins once its chains get a deeper warm-up: the choice
    is made after re-scheduling, not before, even when only the fastest would be polished (`polish_all` off, as
    when the units run out); without `reschedule` the other one is kept."""
    session, chained = built(CHAINS, Chunking(4))
    faster = chained.plan.predicted.model_copy(update={"iteration_s": chained.iteration_s / 1.05})
    rival = Candidate(chained.plan.model_copy(update={"predicted": faster, "strategy": "rival"}), None)
    kept = finalize(session, [chained, rival], bound=None, polish_all=True)
    assert kept is not None and kept.strategy == "rival"
    picked = finalize(session, [chained, rival], bound=None, polish_all=False, reschedule=True)
    assert picked is not None and picked.strategy == "helix"
    assert picked.predicted.iteration_s < rival.iteration_s
    assert "schedule warm-up in slice groups: depth " in picked.solver.message  # the plan says what it runs
    assert "warm-up" not in kept.solver.message


def test_helix_refines_its_pipeline_proposals_at_the_deepest_warmup_too() -> None:
    recipe = recipe_of(CHAINS, Chunking(4))
    with_pipe = Proposal.of(1.0, recipe, (Chunking(4), Chunking(2)), ("a",))
    single = Proposal.of(1.0, replace(recipe, pipeline=PipelineSpec.even(MODEL.num_layers, 1)), (Chunking(1),), ("b",))
    out = with_warmup_knobs([with_pipe, single])
    assert out[0].knobs == (Chunking(4), Chunking(2), Chunking(4, warmup_groups=max(WARMUP_DEPTHS)))
    assert out[1].knobs == (Chunking(1),)


def test_inspect_shows_how_many_chunks_a_lane_holds_in_flight() -> None:
    """`helix inspect` reports each lane's most chunks in flight on a stage: the deeper warm-up holds more."""
    held = {}
    for depth in (0, 2):
        _, found = built(CHAINS, Chunking(4, warmup_groups=depth))
        held[depth] = plan_summary(found.plan)["lanes"][0]["max_in_flight"]
        assert held[depth] == max(max_in_flight(ops) for ops in found.plan.lanes[0].schedule)
    assert held[2] > held[0] >= 4  # plain 1F1B holds at least P chunks on stage 0
    assert max_in_flight([Op(kind="F", chunk=0), Op(kind="F", chunk=1), Op(kind="B", chunk=0)]) == 2
