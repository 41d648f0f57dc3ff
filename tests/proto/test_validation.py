"""validate_plan accepts a correct plan and rejects each kind of broken plan with a precise message.

Guards against executors applying plans that would lose tokens, overlap devices, or hang.
"""

from __future__ import annotations

import pytest

from proto import Batch, Chunk, Lane, Op, Plan, PlanValidationError, Predicted, Segment, ZeroStage, validate_plan
from tests.proto.plan_factory import BATCH, CLUSTER, MODEL, two_stage_plan


def replace_lane(plan: Plan, index: int, **changes: object) -> Plan:
    lanes = list(plan.lanes)
    lanes[index] = lanes[index].model_copy(update=changes)
    return plan.model_copy(update={"lanes": lanes})


def assert_rejected(plan: Plan, *fragments: str) -> None:
    with pytest.raises(PlanValidationError) as info:
        validate_plan(plan, BATCH, CLUSTER, MODEL)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_valid_plan_passes() -> None:
    validate_plan(two_stage_plan(), BATCH, CLUSTER, MODEL)


def test_missing_tokens_named() -> None:
    plan = two_stage_plan()
    chunks = [Chunk(segments=[Segment(seq_id=0, start=0, end=50)]), plan.lanes[0].chunks[1]]
    assert_rejected(replace_lane(plan, 0, chunks=chunks), "sequence 0: tokens [50, 60) are missing")


def test_duplicated_tokens_named() -> None:
    plan = two_stage_plan()
    chunks = [Chunk(segments=[Segment(seq_id=0, start=0, end=70)]), plan.lanes[0].chunks[1]]
    assert_rejected(replace_lane(plan, 0, chunks=chunks), "sequence 0: tokens [60, 70) are duplicated")


def test_sequence_missing_entirely() -> None:
    plan = two_stage_plan()
    chunks = [Chunk(segments=[Segment(seq_id=1, start=0, end=30)])]
    assert_rejected(replace_lane(plan, 1, chunks=chunks), "sequence 2 (length 20) is in no chunk")


def test_overlapping_lanes_and_idle_ranks() -> None:
    plan = replace_lane(two_stage_plan(), 1, ranks=[[0], [2]])
    assert_rejected(plan, "rank 0 is in lane 0 and lane 1", "ranks [1, 3] belong to no lane")


def test_sp_degree_must_divide_heads() -> None:
    model = MODEL.model_copy(update={"num_heads": 6, "hidden_size": 60, "num_kv_heads": 2})
    from proto.fingerprint import fingerprint

    plan = two_stage_plan().model_copy(update={"model_fingerprint": fingerprint(model)})
    plan = replace_lane(plan, 0, sp_degree=4, ranks=[[0, 1, 2, 3], [0, 1, 2, 3]])
    with pytest.raises(PlanValidationError) as info:
        validate_plan(plan, BATCH, CLUSTER, model)
    assert "lane 0: SP degree 4 does not divide num_heads (6)" in str(info.value)


def test_misaligned_sp_group() -> None:
    cluster_plan = two_stage_plan()
    lanes = [
        Lane(
            lane_id=0,
            sp_degree=2,
            ranks=[[1, 2]],
            chunks=[Chunk(segments=[Segment(seq_id=i, start=0, end=n)]) for i, n in enumerate(BATCH.lengths)],
            schedule=[[Op(kind=k, chunk=c) for c in range(3) for k in "FB"]],
            recompute=[[0, 0, 0]],
        ),
        Lane(lane_id=1, sp_degree=1, ranks=[[0]], chunks=[], schedule=[[]], recompute=[[]]),
        Lane(lane_id=2, sp_degree=1, ranks=[[3]], chunks=[], schedule=[[]], recompute=[[]]),
    ]
    from proto import PipelineSpec

    plan = cluster_plan.model_copy(update={"lanes": lanes, "pipeline": PipelineSpec.even(4, 1)})
    assert_rejected(plan, "lane 0 stage 0: ranks [1, 2] are not an aligned block of 2")


def test_slice_forward_order_violated() -> None:
    plan = two_stage_plan()
    bad = [Op(kind="F", chunk=1), Op(kind="F", chunk=0), Op(kind="B", chunk=0), Op(kind="B", chunk=1)]
    lane = plan.lanes[0]
    plan = replace_lane(plan, 0, schedule=[bad, lane.schedule[1]])
    assert_rejected(plan, "lane 0 stage 0: F1 runs before F0 but holds a later slice of sequence 0")


def test_slice_backward_order_violated() -> None:
    plan = two_stage_plan()
    bad = [Op(kind="F", chunk=0), Op(kind="F", chunk=1), Op(kind="B", chunk=0), Op(kind="B", chunk=1)]
    plan = replace_lane(plan, 0, schedule=[plan.lanes[0].schedule[0], bad])
    assert_rejected(plan, "lane 0 stage 1: B0 runs before B1 but holds an earlier slice of sequence 0")


def test_deadlock_detected() -> None:
    """Stage 0 waits for B1's gradient before sending F1's activation that stage 1 needs: a hang."""
    plan = two_stage_plan()
    lane = plan.lanes[1]
    chunks = [
        Chunk(segments=[Segment(seq_id=1, start=0, end=30)]),
        Chunk(segments=[Segment(seq_id=2, start=0, end=20)]),
    ]
    stage0 = [Op(kind="F", chunk=0), Op(kind="B", chunk=1), Op(kind="F", chunk=1), Op(kind="B", chunk=0)]
    stage1 = [Op(kind="F", chunk=0), Op(kind="F", chunk=1), Op(kind="B", chunk=1), Op(kind="B", chunk=0)]
    plan = replace_lane(plan, 1, chunks=chunks, schedule=[stage0, stage1], recompute=[[0, 0], [0, 0]])
    assert lane.lane_id == 1
    assert_rejected(plan, "lane 1: schedule deadlocks (stage 0 waits at B1")


def test_backward_before_forward() -> None:
    plan = two_stage_plan()
    bad = [Op(kind="B", chunk=0), Op(kind="F", chunk=0)]
    plan = replace_lane(plan, 1, schedule=[plan.lanes[1].schedule[0], bad])
    assert_rejected(plan, "lane 1 stage 1 chunk 0: B runs before F")


def test_missing_op_and_bad_recompute() -> None:
    plan = two_stage_plan()
    plan = replace_lane(plan, 1, schedule=[[Op(kind="F", chunk=0)], plan.lanes[1].schedule[1]], recompute=[[9], [0]])
    assert_rejected(plan, "lane 1 stage 0: schedule lacks B0", "lane 1 stage 0 chunk 0: recompute 9 not in [0, 2]")


def test_two_slices_in_one_chunk() -> None:
    batch = Batch.from_lengths([100, 30, 20])
    plan = two_stage_plan()
    chunks = [
        Chunk(segments=[Segment(seq_id=0, start=0, end=60), Segment(seq_id=1, start=0, end=10)]),
        Chunk(segments=[Segment(seq_id=0, start=60, end=100), Segment(seq_id=1, start=10, end=30)]),
    ]
    plan = replace_lane(plan, 0, chunks=chunks)
    plan = replace_lane(plan, 1, chunks=[Chunk(segments=[Segment(seq_id=2, start=0, end=20)])])
    with pytest.raises(PlanValidationError) as info:
        validate_plan(plan, batch, CLUSTER, MODEL)
    assert "lane 0 chunk 0: holds slices of 2 sequences (at most 1)" in str(info.value)


def test_memory_over_capacity() -> None:
    plan = two_stage_plan()
    predicted = plan.predicted.model_copy(update={"peak_memory_bytes": [1e6, 3 * 2**30, 1e6, 1e6]})
    assert_rejected(plan.model_copy(update={"predicted": predicted}), "rank 1: predicted peak memory 3.00 GiB exceeds")


def test_wrong_batch_refused() -> None:
    with pytest.raises(PlanValidationError) as info:
        validate_plan(two_stage_plan(), Batch.from_lengths([100, 30, 21]), CLUSTER, MODEL)
    assert "plan was made for another batch" in str(info.value)


def test_plan_id_is_content_hash() -> None:
    plan = two_stage_plan()
    assert plan.plan_id == plan.content_hash()
    changed = plan.model_copy(update={"predicted": Predicted(iteration_s=2.0, ideal_s=0.5)})
    assert changed.content_hash() != plan.plan_id


def test_deferred_weight_grads_need_zero_stage_0_or_1() -> None:
    """Under ZeRO-2/3 a backward op reduce-scatters its gradients as they become final: deferral is refused."""
    deferred = two_stage_plan().model_copy(update={"defer_weight_grads": True})
    validate_plan(deferred, BATCH, CLUSTER, MODEL)
    for zero in (ZeroStage.GRADIENTS, ZeroStage.PARAMETERS):
        options = deferred.options.model_copy(update={"zero_stage": zero})
        assert_rejected(deferred.model_copy(update={"options": options}), "defer_weight_grads needs options.zero_stage")


def test_w_ops_need_the_flag_and_follow_their_backward() -> None:
    """A W op is the deferred weight gradients of its chunk: only in a plan that defers them, after its B."""
    plan = two_stage_plan()
    lane = plan.lanes[0]
    with_w = [[*ops, Op(kind="W", chunk=0)] for ops in lane.schedule]
    assert_rejected(replace_lane(plan, 0, schedule=with_w), "W ops need defer_weight_grads")
    deferred = plan.model_copy(update={"defer_weight_grads": True})
    validate_plan(replace_lane(deferred, 0, schedule=with_w), BATCH, CLUSTER, MODEL)
    early = [[Op(kind="W", chunk=0), *ops] for ops in lane.schedule]
    assert_rejected(replace_lane(deferred, 0, schedule=early), "chunk 0: W runs before B")
    twice = [[*ops, Op(kind="W", chunk=0), Op(kind="W", chunk=0)] for ops in lane.schedule]
    assert_rejected(replace_lane(deferred, 0, schedule=twice), "schedule repeats an op")
    unknown = [[*ops, Op(kind="W", chunk=9)] for ops in lane.schedule]
    assert_rejected(replace_lane(deferred, 0, schedule=unknown), "names chunk 9 that does not exist (W)")
