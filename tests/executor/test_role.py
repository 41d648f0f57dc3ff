"""Pure (no process group) checks: how a rank finds its role, and the refusal messages for plans that do
not fit the world, batch, cluster or pipeline."""

from __future__ import annotations

import random

import pytest

from executor.role import PlanRefused, check_plan, find_role
from proto.plan import PipelineSpec, PlanOptions, ZeroStage
from tests.executor.executor_fixtures import cpu_cluster, make_plan, random_batch, random_plan, tiny_model

pytestmark = pytest.mark.timeout(60)


def test_find_role_covers_every_rank_once() -> None:
    rng = random.Random(0)
    cluster, model = cpu_cluster(2, 4), tiny_model()
    batch = random_batch(rng, num_seqs=9, max_len=30)
    for _ in range(20):
        plan = random_plan(rng, batch, cluster, model)
        seen = set()
        for rank in range(8):
            role = find_role(plan, rank=rank, world_size=8)
            lane = plan.lanes[role.lane_index]
            assert lane.ranks[0][role.sp_rank] == rank and role.sp_ranks == tuple(lane.ranks[0])
            seen.add((role.lane_id, role.sp_rank))
        assert len(seen) == 8


def test_refusals_name_the_mismatch() -> None:
    rng = random.Random(1)
    small, big, model = cpu_cluster(2, 2), cpu_cluster(2, 4), tiny_model()
    batch = random_batch(rng, num_seqs=4, max_len=20)
    plan8 = make_plan(batch, big, model, [(list(range(8)), [batch.seq_ids])])
    with pytest.raises(PlanRefused, match=r"rank 3 refuses plan .*world size is 4"):
        check_plan(plan8, batch=batch, cluster=small, model=model, world_size=4, rank=3)
    with pytest.raises(PlanRefused, match="cluster spec has 8 devices but the world size is 4"):
        check_plan(plan8, batch=batch, cluster=big, model=model, world_size=4, rank=0)
    plan4 = make_plan(batch, small, model, [(list(range(4)), [batch.seq_ids])])
    other = random_batch(rng, num_seqs=4, max_len=20, first_id=900)
    with pytest.raises(PlanRefused, match="plan was made for another batch"):
        check_plan(plan4, batch=other, cluster=small, model=model, world_size=4, rank=1)
    with pytest.raises(PlanRefused, match="pipeline split is fixed per job"):
        check_plan(
            plan4, batch=batch, cluster=small, model=model, world_size=4, rank=0, pipeline=PipelineSpec.even(2, 2)
        )
    raised = plan4.model_copy(update={"options": PlanOptions(zero_stage=ZeroStage.GRADIENTS)})
    with pytest.raises(PlanRefused, match=r"options\.zero_stage=2, but this job.s model states are sharded for ZeRO-1"):
        check_plan(raised, batch=batch, cluster=small, model=model, world_size=4, rank=0, zero_stage=1)
    check_plan(raised, batch=batch, cluster=small, model=model, world_size=4, rank=0, zero_stage=2)
    check_plan(plan4, batch=batch, cluster=small, model=model, world_size=4, rank=2)  # fits: no error
