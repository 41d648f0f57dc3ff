"""Pure (no process group) checks: which groups start-up creates, how a rank finds its role, and the
refusal messages for plans that do not fit the world, batch, cluster or pipeline."""

from __future__ import annotations

import random

import pytest

from executor.plan_role import PlanRefused, check_plan, find_role
from executor.process_groups import planned_groups
from proto.plan import PipelineSpec
from proto.topology import Topology
from tests.executor.executor_fixtures import cpu_cluster, make_plan, random_batch, random_plan, tiny_model

pytestmark = pytest.mark.timeout(60)


def test_every_aligned_power_of_two_group_once_in_a_fixed_order() -> None:
    def topo(p: int, n: int = 8) -> Topology:
        return Topology(num_devices=n, devices_per_node=4, num_stages=p)

    groups = planned_groups([topo(1)])
    assert len(groups) == 15 and len(set(groups)) == 15
    assert groups[:8] == [(r,) for r in range(8)]
    assert groups[8:12] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert groups[12:] == [(0, 1, 2, 3), (4, 5, 6, 7), tuple(range(8))]
    # P = 2 adds nothing new (its blocks are groups of P = 1); P = 1 and 2 together keep one order
    assert planned_groups([topo(2), topo(1)]) == planned_groups([topo(1), topo(2)]) == groups
    assert topo(2).stage_block(1) == (4, 5, 6, 7)
    assert topo(2, n=6).aligned_sp_groups(1) == [(3,), (4,), (5,), (3, 4)]  # a non-power-of-two block


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
    check_plan(plan4, batch=batch, cluster=small, model=model, world_size=4, rank=2)  # fits: no error
