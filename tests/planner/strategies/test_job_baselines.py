"""The baselines users run: `megatron` (one layout for the whole job) and `dcp` (Megatron-LM's dynamic CP).

Guards against a `megatron` that re-tunes per batch (it would be the `static` oracle, not what a job runs), a
job layout lost between the job-level choice and later batches, and a `dcp` whose groups are not power-of-two
lanes sized by the sequences they carry.
"""

from __future__ import annotations

import pytest

from planner_service.job_layout import tune_fixed_layout
from planner_service.pipeline_degree import choose_pipeline_degree
from planner_service.planner import make_plan
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.strategies.dcp import allot_groups, balance_groups, group_size_needed
from planner_service.strategies.static import static_layouts
from planner_service.workloads import load_workload
from proto import Batch, FixedLayout, Plan, PlanOptions, validate_plan

CLUSTER = resolve_cluster("a800-80g-4x8")
MODEL = resolve_model("llama2-7b")


def sample(seed: int, size: int = 48) -> Batch:
    return load_workload(lengths_path=None, dataset="github", batch_size=size, seed=seed, max_len=32768)


def layout_of(plan: Plan) -> tuple[int, set[int], bool]:
    full = all(
        all(r == plan.pipeline.layers_of(p) for r in lane.recompute[p])
        for lane in plan.lanes
        for p in range(plan.pipeline.num_stages)
        if lane.chunks
    )
    return plan.pipeline.num_stages, {lane.sp_degree for lane in plan.lanes}, full


def test_megatron_runs_the_jobs_layout_on_every_batch() -> None:
    """Tuned once on three sample batches, the layout is the one every later batch runs, and the plan
    records it; static re-tunes per batch and may pick another."""
    layout = tune_fixed_layout(cluster=CLUSTER, model=MODEL, samples=[sample(1), sample(2), sample(3)])
    assert layout in static_layouts_for(sample(1), sample(2), sample(3))
    options = PlanOptions(fixed_layout=layout)
    for seed in (11, 12):
        batch = sample(seed)
        plan = make_plan(batch=batch, cluster=CLUSTER, model=MODEL, strategy="megatron", options=options)
        validate_plan(plan, batch, CLUSTER, MODEL)
        p, sizes, _ = layout_of(plan)
        assert (p, sizes) == (layout.num_stages, {layout.sp_degree})
        assert plan.options.fixed_layout == layout
        assert plan.solver.message.startswith("the job's fixed layout")


def static_layouts_for(*batches: Batch) -> list[FixedLayout]:
    from planner_service.context import PlanningContext
    from planner_service.cost_model import CostModel

    ctx = PlanningContext(batch=batches[0], cluster=CLUSTER, model=MODEL, cost=CostModel.from_specs(CLUSTER, MODEL))
    return static_layouts(ctx, longest=max(max(b.lengths) for b in batches))


def test_megatron_without_a_job_layout_tunes_on_the_batch_and_says_so() -> None:
    batch = sample(5)
    plan = make_plan(batch=batch, cluster=CLUSTER, model=MODEL, strategy="megatron")
    assert "tuned on this batch" in plan.solver.message
    assert plan.options.fixed_layout is not None
    static = make_plan(batch=batch, cluster=CLUSTER, model=MODEL, strategy="static", time_limit_s=30.0)
    assert plan.predicted.iteration_s == pytest.approx(static.predicted.iteration_s)  # tuned on it: the oracle


def test_megatron_reuses_the_tunings_plan_as_a_fresh_build_would_make_it() -> None:
    """Without a job layout the tuning already built this batch with the winner: the plan it returns must be the
    one the job's layout gives when passed explicitly (lanes, prices, options: all but the solver record, whose
    message says where the layout came from), built once."""
    batch = sample(5)
    tuned = make_plan(batch=batch, cluster=CLUSTER, model=MODEL, strategy="megatron")
    layout = tuned.options.fixed_layout
    assert layout is not None
    given = make_plan(
        batch=batch, cluster=CLUSTER, model=MODEL, strategy="megatron", options=PlanOptions(fixed_layout=layout)
    )
    assert tuned.model_dump(exclude={"plan_id", "solver"}) == given.model_dump(exclude={"plan_id", "solver"})
    assert tuned.strategy == "megatron" and "tuned on this batch" in tuned.solver.message


def test_megatron_refuses_a_layout_for_another_pipeline_degree() -> None:
    layout = FixedLayout(num_stages=2, sp_degree=4, micro_batch_tokens=32768)
    with pytest.raises(ValueError, match="fixed_layout has P=2"):
        make_plan(
            batch=sample(1), cluster=CLUSTER, model=MODEL, strategy="megatron", num_stages=4,
            options=PlanOptions(fixed_layout=layout),
        )  # fmt: skip


def test_the_job_level_choice_carries_megatrons_layout() -> None:
    """Choosing P for a megatron job tunes its layout on the sample; the job's options then carry it."""
    choice = choose_pipeline_degree(
        cluster=CLUSTER,
        model=MODEL,
        strategy="megatron",
        plan_at=lambda batch, p: make_plan(
            batch=batch, cluster=CLUSTER, model=MODEL, strategy="megatron", num_stages=p, time_limit_s=1.0
        ),
        sample_lengths=sample(7).lengths,
    )
    assert choice.fixed_layout is not None and choice.fixed_layout.num_stages == choice.num_stages
    assert choice.job_options(PlanOptions()).fixed_layout == choice.fixed_layout


def test_group_size_is_the_next_power_of_two_of_the_tokens_per_rank() -> None:
    sizes = [1, 2, 4, 8, 16]
    assert [group_size_needed(n, 1000, sizes) for n in (1, 1000, 1001, 3000, 4000, 4001, 99999)] == [
        1, 1, 2, 4, 4, 8, 16,
    ]  # fmt: skip


def test_groups_fill_the_block_and_sequences_go_to_their_size() -> None:
    """Work per class 8 (size 4) and 4 (size 1) on 8 GPUs: a group each first (4 + 1), then more of the class
    with the most work per GPU; the last idle GPUs double the smallest group."""
    groups = allot_groups({4: 8.0, 1: 4.0}, 8, [1, 2, 4, 8])
    assert sum(g.size for g in groups) == 8
    assert all(g.size in (1, 2, 4, 8) for g in groups)
    need = {0: 4, 1: 4, 2: 1, 3: 1, 4: 1}
    balanced = balance_groups([(0, 9000), (1, 8000), (2, 900), (3, 800), (4, 700)], groups, need)
    placed = {seq: g.size for g in balanced for seq, _ in g.items}
    assert placed[0] >= 4 and placed[1] >= 4
    assert sorted(placed) == [0, 1, 2, 3, 4]


def test_dcp_plans_power_of_two_lanes_at_a_fixed_pipeline_degree() -> None:
    batch = sample(9)
    for stages in (None, 2):
        plan = make_plan(batch=batch, cluster=CLUSTER, model=MODEL, strategy="dcp", num_stages=stages)
        validate_plan(plan, batch, CLUSTER, MODEL)
        assert plan.solver.status == "heuristic", plan.solver.message
        assert all(lane.sp_degree & (lane.sp_degree - 1) == 0 for lane in plan.lanes)
        assert all(len(chunk.segments) == 1 for lane in plan.lanes for chunk in lane.chunks)
        if stages:
            assert plan.pipeline.num_stages == stages


@pytest.mark.parametrize("stages", [1, 2, 4])
def test_dcp_checkpointing_test_agrees_with_the_memory_timeline(stages: int) -> None:
    """dcp decides each group's checkpointing with a quick sufficient test before walking the memory timeline;
    its answer must be the timeline's (`lanes_fit`) for every group: random groups of whole sequences, short
    and long, on lanes of 1 to 8 devices, so that some fit, some need recompute and some pass only the walk."""
    import numpy as np

    from planner_service.assembly import LaneDraft, lane_of_draft
    from planner_service.context import PlanningContext, options_that_fit
    from planner_service.cost_model import CostModel
    from planner_service.layout.recompute import no_recompute_bound, uniform_recompute
    from planner_service.strategies.dcp import fits_without_recompute
    from planner_service.strategies.greedy import lanes_fit
    from proto import Chunk, PipelineSpec, Segment
    from proto.topology import Topology

    rng = np.random.default_rng(stages)
    lengths = [int(n) for n in rng.integers(256, 96 * 1024, size=400)]
    batch = Batch(seq_ids=list(range(len(lengths))), lengths=lengths)
    ctx = PlanningContext(batch=batch, cluster=CLUSTER, model=MODEL, cost=CostModel.from_specs(CLUSTER, MODEL))
    pipeline = PipelineSpec.even(MODEL.num_layers, stages)
    p_ctx = options_that_fit(ctx, pipeline)
    topology = Topology.of(CLUSTER, stages)
    length_of = batch.length_of()
    outcomes: set[tuple[bool, bool]] = set()
    for _ in range(60):
        size = int(rng.choice([1, 2, 4, 8]))
        members = rng.choice(len(lengths), size=int(rng.integers(1, 9)), replace=False)
        chunks = tuple(Chunk(segments=[Segment(seq_id=int(i), start=0, end=lengths[i])]) for i in members)
        draft = LaneDraft(
            sp_degree=size, offset=0, chunks=chunks, recompute=uniform_recompute(pipeline, len(chunks), False)
        )
        lane = lane_of_draft(topology, draft)
        fits = lanes_fit(p_ctx, pipeline, [lane], length_of)
        assert fits_without_recompute(p_ctx, pipeline, lane, length_of) == fits, (size, [lengths[i] for i in members])
        all_held = max(
            no_recompute_bound(p_ctx.cost, pipeline, p, size, chunks)
            + p_ctx.cost.model_state_bytes(p, pipeline, p_ctx.cost.dp_size(pipeline))
            for p in range(stages)
        )
        outcomes.add((fits, all_held <= p_ctx.cost.usable_memory_bytes))
    assert (False, False) in outcomes and (True, False) in outcomes  # groups needing recompute; fits, not trivially
