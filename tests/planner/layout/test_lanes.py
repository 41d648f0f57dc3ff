"""Lanes: longest-processing-time dealing and aligned (buddy) offsets.

Guards against unbalanced dealing (the slowest lane sets the iteration time) and lane offsets that are not
aligned to their size (the executor's SP groups must be aligned power-of-two blocks).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from planner_service.context import PlanningContext
from planner_service.cost_model import CostModel
from planner_service.layout.lanes import buddy_offsets, deal_longest_first
from planner_service.layout.work_model import WorkModel
from planner_service.presets import CLUSTERS, MODELS
from proto import Batch


def test_deal_longest_first_by_hand() -> None:
    """Work = length. Costliest first to the least-loaded lane: 10 -> A, 9 -> B, 8 -> B (9 < 10), 3 -> A
    (10 < 17), 2 -> A (13 < 17): A holds 10 + 3 + 2 = 15, B holds 9 + 8 = 17."""
    batch = Batch(seq_ids=[7, 8, 9, 10, 11], lengths=[3, 10, 2, 9, 8])
    cluster, model = CLUSTERS["cpu-2x2"], MODELS["tiny"]
    ctx = PlanningContext(batch=batch, cluster=cluster, model=model, cost=CostModel.from_specs(cluster, model))
    lanes = deal_longest_first(ctx, range(5), 2, WorkModel(sp_degree=2, a=0.0, b=1.0, c=0.0), num_lanes=2)
    assert [lane.items for lane in lanes] == [((8, 10), (7, 3), (9, 2)), ((10, 9), (11, 8))]
    assert all(lane.sp_degree == 2 for lane in lanes)


def test_buddy_offsets_place_the_biggest_first() -> None:
    assert buddy_offsets([1, 4, 2, 1]) == [6, 0, 4, 7]


@st.composite
def power_of_two_partition(draw: st.DrawFn, size: int = 64) -> list[int]:
    """Sizes from repeatedly halving blocks of a 64-device stage block, in a random order."""
    blocks = [size]
    for _ in range(draw(st.integers(0, 12))):
        splittable = [i for i, b in enumerate(blocks) if b > 1]
        if not splittable:
            break
        i = draw(st.sampled_from(splittable))
        blocks[i : i + 1] = [blocks[i] // 2, blocks[i] // 2]
    return draw(st.permutations(blocks))


@given(sizes=power_of_two_partition())
def test_buddy_offsets_are_aligned_and_partition_the_block(sizes: list[int]) -> None:
    offsets = buddy_offsets(sizes)
    assert all(o % s == 0 for o, s in zip(offsets, sizes, strict=True))
    covered = sorted(r for o, s in zip(offsets, sizes, strict=True) for r in range(o, o + s))
    assert covered == list(range(sum(sizes)))
