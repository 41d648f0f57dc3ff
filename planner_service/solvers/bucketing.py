"""Bucketing: group sorted sequence lengths into Q buckets with the least padding error (FlexSP §5).

Each bucket is represented by its longest member; the error of a bucket is the sum over its
members of cost(representative) - cost(length), with cost(L) = a2*L^2 + a1*L (what the lane
model charges). A DP over the sorted lengths finds the optimal cut points. To stay fast on
large batches, lengths are first merged into at most `MAX_DP_POINTS` groups (exact
whenever there are fewer distinct lengths than that; otherwise merged on a geometric grid of lengths).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_NUM_BUCKETS = 16
MAX_DP_POINTS = 512
"""Upper bound on DP points; with Q=16 the DP is 16 x 512 x 512 numpy-vectorised steps."""


@dataclass(frozen=True, slots=True)
class Bucket:
    """Sequences (indices into the batch) represented by the longest of them."""

    members: tuple[int, ...]
    max_length: int
    min_length: int

    @property
    def count(self) -> int:
        return len(self.members)


def bucket_lengths(
    lengths: Sequence[int], cost: Callable[[np.ndarray], np.ndarray], num_buckets: int = DEFAULT_NUM_BUCKETS
) -> list[Bucket]:
    """Optimal contiguous buckets of the sorted lengths (at most `num_buckets`), longest bucket first."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    values = np.array([lengths[i] for i in order], dtype=np.float64)
    # points: group ends over the sorted list; merging equal lengths never costs error
    distinct_ends = np.flatnonzero(np.diff(values, append=np.inf) != 0) + 1
    if len(distinct_ends) > MAX_DP_POINTS:
        # merge lengths on a geometric grid: each group's own padding is a small relative error,
        # and the long tail (few sequences, most of the cost) keeps its resolution
        ratio = np.log(values[-1] / values[0]) / (MAX_DP_POINTS - 1)
        keys = np.floor(np.log(values / values[0]) / ratio) if ratio > 0 else np.zeros_like(values)
        distinct_ends = np.flatnonzero(np.diff(keys, append=np.inf) != 0) + 1
    ends = distinct_ends  # group g covers sorted[ends[g-1]:ends[g]]
    n_points = len(ends)
    q = max(1, min(num_buckets, n_points))
    costs = cost(values)
    prefix = np.concatenate([[0.0], np.cumsum(costs)])
    starts = np.concatenate([[0], ends[:-1]])
    rep_cost = cost(values[ends - 1])  # representative (max) cost if a bucket ends at point j
    # err(i, j): bucket of points i..j (inclusive) = count * rep_cost[j] - (prefix[end_j] - prefix[start_i])
    inf = np.inf
    dp = np.full((q + 1, n_points + 1), inf)
    arg = np.zeros((q + 1, n_points + 1), dtype=np.int64)
    dp[0, 0] = 0.0
    start_pos = starts.astype(np.float64)
    start_prefix = prefix[starts]
    for k in range(1, q + 1):
        prev = dp[k - 1, :n_points]  # prev[i]: best for the first i points
        for j in range(k - 1, n_points):
            i = np.arange(0, j + 1)
            count = ends[j] - start_pos[i]
            err = count * rep_cost[j] - (prefix[ends[j]] - start_prefix[i])
            total = prev[i] + err
            best = int(np.argmin(total))
            dp[k, j + 1] = total[best]
            arg[k, j + 1] = best
    k_best = int(np.argmin(dp[1:, n_points])) + 1
    buckets: list[Bucket] = []
    j = n_points
    k = k_best
    while k > 0:
        first = int(arg[k, j])
        lo, hi = int(starts[first]), int(ends[j - 1])
        members = tuple(order[lo:hi])
        buckets.append(Bucket(members=members, max_length=int(values[hi - 1]), min_length=int(values[lo])))
        j, k = first, k - 1
    return buckets  # built from the longest end backwards: longest bucket first


def padding_error(buckets: Sequence[Bucket], lengths: Sequence[int], cost: Callable[[np.ndarray], np.ndarray]) -> float:
    """Relative error: sum over sequences of cost(bucket max) - cost(length), over the total cost."""
    total = float(cost(np.array(lengths, dtype=np.float64)).sum())
    err = sum(
        float(b.count * cost(np.array([b.max_length], dtype=np.float64))[0])
        - float(cost(np.array([lengths[i] for i in b.members], dtype=np.float64)).sum())
        for b in buckets
    )
    return err / total if total > 0 else 0.0
