"""A trailing group of W ops (`weight_grad_tail`): the stage's gradient reduction hides behind it.

Guards against a group whose window the simulator does not open (the reduction still starting at the last W), a
first stage whose group does not join its last B op, a tail builder that loses, duplicates or misplaces W ops,
and one that defers the first stage's last chunk (which gains nothing there).
"""

from __future__ import annotations

import pytest

from planner_service.cost_model import CostModel
from planner_service.schedules.pipeline_schedule import op_of
from planner_service.simulator import simulate
from planner_service.simulator.weight_grad_tail import tail_schedule, with_weight_grad_tail
from proto import Batch, Chunk, Lane, PipelineSpec, Segment, validate_plan
from tests.cost_model.hand_specs import hand_cluster, hand_plan, ops
from tests.simulator.test_simulator import FLAT, MODEL

SYNC_S = 4.0
"""The stage's gradient reduction, set by the all-reduce bandwidth below."""


def _plan(order: str, *, stages: int = 1) -> tuple:
    """Two lanes (data-parallel degree 2) of four 1000-token chunks, one layer per stage, F = B - W = W = 1 s,
    and every lane's stage-0 order `order` (the 1F1B order of the others)."""
    cluster = hand_cluster(1, 2 * stages)
    model = MODEL.model_copy(update={"num_layers": stages, "tie_embeddings": False})
    batch = Batch.from_lengths([1000] * 8)
    pipeline = PipelineSpec.even(stages, stages)
    profile = FLAT.model_copy(
        update={"p2p_latency_s": 0.0, "allreduce_latency_intra_s": 0.0, "grad_bucket_bytes": 4096}
    )
    probe = CostModel.from_specs(cluster, model, profile)
    sync = probe.collective_times(0, pipeline).step_sync.duration_s
    profile = profile.model_copy(update={"allreduce_bw_intra": profile.allreduce_bw_intra * sync / SYNC_S})
    cost = CostModel.from_specs(cluster, model, profile)
    lanes = []
    for lane_id in range(2):
        chunks = [Chunk(segments=[Segment(seq_id=4 * lane_id + i, start=0, end=1000)]) for i in range(4)]
        schedule = [ops(order)] + [ops("F0 B0 F1 B1 F2 B2 F3 B3") for _ in range(stages - 1)]
        ranks = [[lane_id + 2 * p] for p in range(stages)]
        recompute = [[0] * 4 for _ in range(stages)]
        lanes.append(Lane(lane_id=lane_id, sp_degree=1, ranks=ranks, chunks=chunks, schedule=schedule,
                          recompute=recompute))  # fmt: skip
    plan = hand_plan(cluster, model, batch, pipeline, lanes)
    return plan.model_copy(update={"defer_weight_grads": "W" in order}), batch, cluster, model, cost


def test_reduction_hides_behind_the_trailing_group_and_its_b() -> None:
    """P = 1: the reduction (4 s in buckets of 4 KiB, one bucket's share left after the last gradients) starts
    with the last B op (10-12 s) and ends at 14 s without W ops. With W0-W2 after B3 the first stage's group joins
    B3 (7-12 s): the gradients become final evenly over 5 s and the reduction ends one bucket's share after the
    step's 12 s."""
    plain, batch, cluster, model, cost = _plan("F0 B0 F1 B1 F2 B2 F3 B3")
    times = cost.collective_times(0, plain.pipeline)
    share = times.step_bucket_share
    assert times.step_sync.duration_s == pytest.approx(SYNC_S) and share < 0.05  # many small buckets
    assert simulate(plain, batch, cost).predicted.iteration_s == pytest.approx(10 + share * 2 + SYNC_S)
    tail, *_ = _plan("F0 B0 F1 B1 F2 B2 F3 B3 W0 W1 W2")
    predicted = simulate(tail, batch, cost).predicted
    assert predicted.iteration_s == pytest.approx(max(12 + share * SYNC_S, 7 + share * 5 + SYNC_S))
    assert predicted.iteration_s < 12.5
    validate_plan(tail.model_copy(update={"predicted": predicted}), batch, cluster, model)


def test_a_later_stage_group_opens_its_window_at_its_first_w() -> None:
    """Stage 1 of two sends its input gradients, so its group runs after its last B op: its gradients become
    final over the W ops alone. A group's window is its whole run, not its last W."""
    plan, batch, _, _, cost = _plan("F0 F1 B0 F2 B1 F3 B2 B3", stages=2)
    flagged = plan.model_copy(update={"defer_weight_grads": True})
    lanes = [
        lane.model_copy(update={"schedule": [lane.schedule[0], ops("F0 B0 F1 B1 F2 B2 F3 B3 W0 W1 W2 W3")]})
        for lane in flagged.lanes
    ]
    tail = flagged.model_copy(update={"lanes": lanes})
    events = [e for e in simulate(tail, batch, cost).events if e.stage == 1 and e.lane_id == 0]
    first_w = min(e.start_s for e in events if e.kind == "W")
    last_w = max(e.end_s for e in events if e.kind == "W")
    sync = [e for e in events if e.kind == "SYNC"]
    share = cost.collective_times(1, tail.pipeline).step_bucket_share
    assert min(e.start_s for e in sync) == pytest.approx(first_w + share * (last_w - first_w))


def test_tail_builder_takes_the_last_chunks_until_the_reduction_is_covered() -> None:
    """W ops of the last chunks by backward order move (or are added) to the end, in that order, until their
    seconds reach the target; the first stage leaves its last B's chunk whole; other W ops stay where they are."""
    order = ops("F0 B0 W0 F1 B1 F2 B2 W2 F3 B3")
    w = [1.0, 1.0, 1.0, 1.0]
    assert tail_schedule(order, w, 2.0, first_stage=False) == ops("F0 B0 W0 F1 B1 F2 B2 F3 B3 W2 W3")
    assert tail_schedule(order, w, 2.0, first_stage=True) == ops("F0 B0 W0 F1 B1 F2 B2 F3 B3 W1 W2")
    assert tail_schedule(order, w, 10.0, first_stage=True) == ops("F0 B0 F1 B1 F2 B2 F3 B3 W0 W1 W2")
    assert tail_schedule(order, [1.0, 0.0, 0.0, 1.0], 2.0, first_stage=True) == ops("F0 B0 F1 B1 F2 B2 W2 F3 B3 W0")
    assert tail_schedule(order, w, 0.0, first_stage=False) == order


def test_with_weight_grad_tail_is_valid_and_faster_when_the_reduction_is_exposed() -> None:
    """On the P = 1 plan above the builder groups enough W ops to cover the 4 s reduction and the plan gets
    faster; a shorter share gives a shorter group; every plan it returns validates."""
    plain, batch, cluster, model, cost = _plan("F0 B0 F1 B1 F2 B2 F3 B3")
    flagged = plain.model_copy(update={"defer_weight_grads": True})
    base_s = simulate(plain, batch, cost).predicted.iteration_s
    tail = with_weight_grad_tail(flagged, cost)
    assert tail.lanes[0].schedule[0] == ops("F0 B0 F1 B1 F2 B2 F3 B3 W0 W1 W2")
    predicted = simulate(tail, batch, cost).predicted
    assert predicted.iteration_s < base_s - 1.0
    validate_plan(tail.model_copy(update={"predicted": predicted}), batch, cluster, model)
    short = with_weight_grad_tail(flagged, cost, share=0.25)
    assert short.lanes[0].schedule[0][-1] == op_of("W", 2) and len(short.lanes[0].schedule[0]) == 9
    with pytest.raises(ValueError, match="defer_weight_grads"):
        with_weight_grad_tail(plain, cost)
