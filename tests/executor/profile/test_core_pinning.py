"""Rank-to-core pinning on CPU: contiguous ranks (a node, a pipeline stage's block) share a core."""

import pytest

from executor.profile.timing import core_index, ranks_per_core


def test_contiguous_blocks_share_a_core() -> None:
    # cpu-2x2 on 2 cores: each node's (and, at P = 2, each stage's) two ranks share one core
    assert [core_index(r, 4, 2) for r in range(4)] == [0, 0, 1, 1]
    assert [core_index(r, 8, 2) for r in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [core_index(r, 6, 4) for r in range(6)] == [0, 0, 1, 2, 2, 3]


def test_one_rank_per_core_when_cores_suffice() -> None:
    assert [core_index(r, 2, 4) for r in range(2)] == [0, 1]
    assert [core_index(r, 4, 4) for r in range(4)] == [0, 1, 2, 3]


def test_every_core_gets_ranks_evenly() -> None:
    for world in range(1, 17):
        for cores in range(1, 9):
            counts = [0] * cores
            for r in range(world):
                counts[core_index(r, world, cores)] += 1
            used = [c for c in counts if c]
            assert max(used) - min(used) <= 1, (world, cores, counts)
            assert len(used) == min(world, cores)


@pytest.mark.parametrize(("rank", "world", "cores"), [(4, 4, 2), (-1, 4, 2), (0, 4, 0)])
def test_bad_arguments_are_refused(rank: int, world: int, cores: int) -> None:
    with pytest.raises(ValueError, match="rank"):
        core_index(rank, world, cores)


def test_ranks_per_core_is_the_block_size_only_when_blocks_are_equal() -> None:
    """What the profile records as `devices_per_compute_unit`: the size of every core's block of ranks, which the
    simulator's sharing model needs to be one number (contiguous blocks [u*k, (u+1)*k))."""
    assert ranks_per_core(4, 2) == 2  # cpu-2x2 on this machine's 2 cores
    assert ranks_per_core(8, 2) == 4
    assert [core_index(r, 8, 2) for r in range(8)] == [r // ranks_per_core(8, 2) for r in range(8)]
    assert ranks_per_core(2, 2) == ranks_per_core(2, 4) == 1  # a core each
    assert ranks_per_core(6, 4) == 1  # blocks of 2 and 1: no single factor
    assert ranks_per_core(4, 0) == 1
