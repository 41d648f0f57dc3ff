"""Length bucketing: the DP's padding error is the optimum over every split of the sorted lengths.

Guards against buckets that pad more than needed (the lane ILP then prices sequences as longer than they are).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from planner_service.solvers.bucketing import bucket_lengths


def linear(x: np.ndarray) -> np.ndarray:
    return x


def test_bucketing_hand_instance() -> None:
    """Two buckets over [1, 1, 2, 10, 10, 11] with cost = length: {1,1,2} and {10,10,11}, error 2 + 2 = 4."""
    buckets = bucket_lengths([10, 1, 11, 2, 1, 10], linear, num_buckets=2)
    assert [(b.min_length, b.max_length, b.count) for b in buckets] == [(10, 11, 3), (1, 2, 3)]
    assert sorted(buckets[0].members) == [0, 2, 5]


@given(st.lists(st.integers(1, 60), min_size=1, max_size=9), st.integers(1, 4))
def test_bucketing_matches_brute_force(lengths: list[int], q: int) -> None:
    """The DP's padding error equals the best over every split of the sorted lengths into <= q runs."""
    values = sorted(lengths)

    def error(runs: list[list[int]]) -> int:
        return sum(max(r) * len(r) - sum(r) for r in runs)

    best = math.inf
    for k in range(1, min(q, len(values)) + 1):
        for cuts in itertools.combinations(range(1, len(values)), k - 1):
            bounds = [0, *cuts, len(values)]
            best = min(best, error([values[a:b] for a, b in itertools.pairwise(bounds)]))
    buckets = bucket_lengths(lengths, linear, num_buckets=q)
    got = sum(b.max_length * b.count - sum(lengths[i] for i in b.members) for b in buckets)
    assert got == best
    assert sorted(i for b in buckets for i in b.members) == list(range(len(lengths)))
