"""Which process groups start-up creates (pure: no process group is created here)."""

from __future__ import annotations

import pytest

from executor.parallel.groups import planned_groups
from proto.topology import Topology

pytestmark = pytest.mark.timeout(60)


def test_every_aligned_power_of_two_group_once_in_a_fixed_order() -> None:
    def topo(p: int, n: int = 8) -> Topology:
        return Topology(num_devices=n, devices_per_node=4, num_stages=p)

    groups = planned_groups([topo(1)])
    assert len(groups) == 15 and len(set(groups)) == 15
    assert groups[:8] == [(r,) for r in range(8)]
    assert groups[8:12] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert groups[12:] == [(0, 1, 2, 3), (4, 5, 6, 7), tuple(range(8))]
    # P = 2 adds only the tied-embedding pairs (its blocks are groups of P = 1); any order of P gives one order
    pairs = [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert planned_groups([topo(2), topo(1)]) == planned_groups([topo(1), topo(2)]) == groups + pairs
    # P = 4: the first and the last block pair up position by position
    assert planned_groups([topo(4)])[-2:] == [(0, 6), (1, 7)]
    assert topo(2).stage_block(1) == (4, 5, 6, 7)
    assert topo(2, n=6).aligned_sp_groups(1) == [(3,), (4,), (5,), (3, 4)]  # a non-power-of-two block
