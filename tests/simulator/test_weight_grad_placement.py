"""W-op placement (`weight_grad_placement`): on a uniform pipeline it reaches the zero-bubble bound of its
schedule family by hand, it always yields a valid plan, and it keeps queued operands out of memory it lacks.

Guards against W ops placed before their B, lost or duplicated, a placement that ignores memory, and one that
fills no gap (no faster than running each chunk's weight gradients right after its send).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import assume, given

from planner_service.cost_model import CostModel
from planner_service.schedules import build_schedule
from planner_service.schedules.pipeline_schedule import op_of
from planner_service.simulator import simulate
from planner_service.simulator.weight_grad_placement import place_weight_grads, without_weight_grad_ops
from proto import Batch, Chunk, Lane, PipelineSpec, Segment, validate_plan
from tests.cost_model.hand_specs import hand_cluster, hand_plan
from tests.simulator.test_simulator import FLAT, MODEL, random_plan, seeds

UNIFORM = FLAT.model_copy(update={"p2p_latency_s": 0.0})
"""1 ms per token and layer forward, backward twice that, weight gradients half the backward; free sends."""


def _uniform(num_stages: int, num_chunks: int) -> tuple:
    """`num_chunks` chunks of 1000 tokens on one lane of one device per stage, one layer per stage:
    F = B - W = W = 1 s."""
    cluster = hand_cluster(1, num_stages)
    model = MODEL.model_copy(update={"num_layers": num_stages})
    batch = Batch.from_lengths([1000] * num_chunks)
    chunks = [Chunk(segments=[Segment(seq_id=i, start=0, end=1000)]) for i in range(num_chunks)]
    lane = Lane(
        lane_id=0,
        sp_degree=1,
        ranks=[[p] for p in range(num_stages)],
        chunks=chunks,
        schedule=build_schedule(chunks, num_stages),
        recompute=[[0] * num_chunks for _ in range(num_stages)],
    )
    plan = hand_plan(cluster, model, batch, PipelineSpec.even(num_stages, num_stages), [lane])
    return plan, batch, cluster, model, CostModel.from_specs(cluster, model, UNIFORM)


@pytest.mark.parametrize(("num_stages", "num_chunks"), [(4, 8), (8, 16), (8, 8)])
def test_uniform_pipeline_by_hand(num_stages: int, num_chunks: int) -> None:
    """P stages, m chunks, F = B - W = W = 1 s, free sends: 1F1B takes 3(m + P - 1) s; weight gradients after
    each send save one W per stage boundary, 3m + 2(P - 1); W ops in the gaps save a second one, 3m + (P - 1)
    (the zero-bubble ZB-H1 figure, at 1F1B's in-flight chunks)."""
    plan, batch, cluster, model, cost = _uniform(num_stages, num_chunks)
    p, m = num_stages, num_chunks
    assert simulate(plan, batch, cost).predicted.iteration_s == pytest.approx(3 * (m + p - 1))
    flagged = plan.model_copy(update={"defer_weight_grads": True})
    inline = place_weight_grads(flagged, batch, cost, queue=False)
    first, *later = inline.lanes[0].schedule
    assert first == plan.lanes[0].schedule[0]  # the first stage sends nothing: nothing to gain there
    assert all(ops[ops.index(op) + 1] == op_of("W", op.chunk) for ops in later for op in ops if op.kind == "B")
    assert simulate(inline, batch, cost).predicted.iteration_s == pytest.approx(3 * m + 2 * (p - 1))
    placed = place_weight_grads(flagged, batch, cost)
    predicted = simulate(placed, batch, cost).predicted
    assert predicted.iteration_s == pytest.approx(3 * m + (p - 1))
    validate_plan(placed.model_copy(update={"predicted": predicted}), batch, cluster, model)


def test_placement_keeps_operands_out_of_memory_it_lacks() -> None:
    """Memory decides per chunk: with room, W ops are queued into the gaps; with no room at all, no chunk is split,
    and none is either when the W operands alone fit no device (a B ends holding them, whenever its W runs)."""
    plan, batch, _, _, cost = _uniform(4, 8)
    flagged = plan.model_copy(update={"defer_weight_grads": True})
    roomy = place_weight_grads(flagged, batch, cost)
    assert any(ops[ops.index(op) - 1] != op_of("B", op.chunk) for ops in roomy.lanes[0].schedule for op in ops
               if op.kind == "W")  # fmt: skip
    room = cost.cluster.device_memory_bytes - cost.memory_reserve_bytes
    huge = [room] * 4
    none = place_weight_grads(flagged, batch, cost, margin_bytes=huge)
    assert none.lanes[0].schedule == plan.lanes[0].schedule
    # GEMM inputs of 100 MB per token fit no device: a B that queues them for its W, even one right after it, ends
    # holding them (they replace only the layers' activations), so no chunk is split
    bulky = {"deferred_grad_bytes_per_token_layer": 1.0, "deferred_input_bytes_per_token_layer": 1e8}
    unsplit = place_weight_grads(flagged, batch, replace(cost, profile=cost.profile.model_copy(update=bulky)))
    assert unsplit.lanes[0].schedule == plan.lanes[0].schedule


@given(seeds)
def test_placed_random_plans_are_valid(seed: int) -> None:
    """Random valid plans with a pipeline: the placed plan passes validation (every W after its B, at most one
    per chunk and stage, no deadlock), keeps every F and B in order, and is placed the same way twice."""
    assume(random_plan(seed)[2].num_devices % 2 == 0)
    plan, batch, cluster, model, cost = random_plan(seed, num_stages=2)
    cost = replace(cost, profile=cost.profile.model_copy(update={"deferred_grad_bytes_per_token_layer": 8.0}))
    inline = plan.model_copy(update={"defer_weight_grads": True})
    placed = place_weight_grads(inline, batch, cost)
    assert place_weight_grads(inline, batch, cost) == placed
    predicted = simulate(placed, batch, cost).predicted
    validate_plan(placed.model_copy(update={"predicted": predicted.model_copy(update={"peak_memory_bytes": []})}),
                  batch, cluster, model)  # fmt: skip
    for before, after in zip(inline.lanes, placed.lanes, strict=True):
        assert without_weight_grad_ops(after).schedule == before.schedule
