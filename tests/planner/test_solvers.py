"""Solvers: exact optima on hand-solved instances, backends agreeing, time limits, and the DP optimum.

Guards against a formulation bug silently returning a worse layout, and a solver that overruns
the per-iteration planning budget.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner_service.simulator.memory_timeline import StageMemory
from planner_service.solvers.bucketing import bucket_lengths
from planner_service.solvers.integer_program import BACKENDS
from planner_service.solvers.lane_assignment_milp import LaneProblem, lower_bound, solve_lanes
from planner_service.solvers.recompute_ilp import choose_recompute, greedy_recompute


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


def one_long_four_short(short_work: tuple[float, float, float]) -> LaneProblem:
    """Block of 4 devices, sizes 1/2/4; one long sequence scaling perfectly (8/s), four short ones."""
    sizes = (1, 2, 4)
    long_row = tuple(8.0 / s for s in sizes)
    return LaneProblem(
        block_size=4,
        sizes=sizes,
        counts=(1, 4),
        mean_work=(long_row, short_work),
        max_work=(long_row, short_work),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_lane_ilp_hand_optimum_single_big_lane(backend: str) -> None:
    """Shorts cost 1 / 0.6 / 0.4 on sizes 1 / 2 / 4. One lane of 4: 8/4 + 4 x 0.4 = 3.6. Any layout with a
    smaller lane leaves the long sequence at >= 4 (size 2) or 8 (size 1), so 3.6 is optimal."""
    problem = one_long_four_short((1.0, 0.6, 0.4))
    assert lower_bound(problem) == pytest.approx(3.0)  # device time (8 + 4 x 1) / 4
    sol = solve_lanes(problem, backend=backend, time_limit_s=5.0)
    assert sol is not None
    assert sol.lane_counts == (0, 0, 1)
    assert sol.makespan_s == pytest.approx(3.6)
    assert sol.status == "optimal"


@pytest.mark.parametrize("backend", BACKENDS)
def test_lane_ilp_hand_optimum_mixed_sizes(backend: str) -> None:
    """Shorts cost 1 / 0.75 / 0.6. One lane of 4 gives 2 + 2.4 = 4.4; a size-2 lane for the long sequence (4)
    beside two size-1 lanes with two shorts each (2) or a second size-2 lane with all shorts (3) gives 4.
    Nothing beats 4: the long sequence alone takes >= 4 unless on size 4, which costs 4.4."""
    sol = solve_lanes(one_long_four_short((1.0, 0.75, 0.6)), backend=backend, time_limit_s=5.0)
    assert sol is not None
    assert sol.makespan_s == pytest.approx(4.0)
    assert sol.lane_counts in ((2, 1, 0), (0, 2, 0))


def random_lane_problem(seed: int) -> LaneProblem:
    rng = np.random.default_rng(seed)
    sizes = (1, 2, 4, 8)
    counts = tuple(int(c) for c in rng.integers(1, 6, size=5))
    lengths = np.sort(rng.integers(100, 40_000, size=5))[::-1]
    rows = []
    for n in lengths:
        rows.append(tuple(float(1e-9 * n * n / s + 1e-5 * n / s + 2e-6 * n * (s > 4)) for s in sizes))
    return LaneProblem(block_size=8, sizes=sizes, counts=counts, mean_work=tuple(rows), max_work=tuple(rows))


@pytest.mark.parametrize("seed", range(4))
def test_backends_agree(seed: int) -> None:
    problem = random_lane_problem(seed)
    results = {b: solve_lanes(problem, backend=b, time_limit_s=10.0, tolerance=1e-4) for b in BACKENDS}
    spans = {b: r.makespan_s for b, r in results.items() if r is not None}
    assert len(spans) == len(BACKENDS)
    reference = spans["cpsat"]
    for backend, makespan in spans.items():
        assert makespan == pytest.approx(reference, rel=2e-3), (backend, spans)
    for r in results.values():
        assert r is not None and r.lower_bound_s <= r.makespan_s * (1 + 1e-9)


def test_lane_ilp_respects_time_limit() -> None:
    """A big instance with a tiny limit returns on time with a valid (warm-start or better) answer."""
    rng = np.random.default_rng(7)
    sizes = tuple(2**k for k in range(9))
    lengths = np.sort(rng.integers(100, 200_000, size=16))[::-1]
    rows = tuple(tuple(float(1e-9 * n * n / s + 1e-5 * n / s + 3e-6 * n * (s > 8)) for s in sizes) for n in lengths)
    problem = LaneProblem(
        block_size=256, sizes=sizes, counts=tuple(int(c) for c in rng.integers(1, 60, size=16)),
        mean_work=rows, max_work=rows,
    )  # fmt: skip
    started = time.perf_counter()
    sol = solve_lanes(problem, time_limit_s=0.2)
    elapsed = time.perf_counter() - started
    assert sol is not None
    assert elapsed < 0.2 + 1.0, f"solve_lanes took {elapsed:.2f} s with a 0.2 s limit"
    assert sum(n * s for n, s in zip(sol.lane_counts, sizes, strict=True)) == 256
    assert [sum(row) for row in sol.assignment] == list(problem.counts)


def two_chunk_memory() -> StageMemory:
    """Two chunks held together at B1 (200 bytes) with a 150-byte budget; recomputing a layer of chunk 0
    saves 30 bytes, of chunk 1 saves 20."""
    return StageMemory(
        num_layers=2,
        base=(100.0, 100.0),
        per_layer=(-30.0, -20.0),
        op_chunks=(0, 1, 1, 0),
        op_is_forward=(True, True, False, False),
        op_constant=(0.0, 0.0, 0.0, 0.0),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_recompute_ilp_hand_optimum(backend: str) -> None:
    """Need 50 bytes saved. With layer times 1.0 (chunk 0) and 0.5 (chunk 1): r=(1,1) saves 50 for 1.5 s;
    (2,0) saves 60 for 2.0 s; (0,2) saves only 40; (1,2) and (2,x) cost >= 2.0. Optimum (1, 1)."""
    memory = two_chunk_memory()
    result = choose_recompute(memory, [1.0, 0.5], 150.0, backend=backend, time_limit_s=5.0)
    assert result.counts == (1, 1)
    assert result.status == "optimal"
    assert memory.peak(result.counts) <= 150.0


def test_recompute_greedy_is_feasible_but_not_optimal_here() -> None:
    """The greedy picks the best bytes-per-second chunk first (chunk 1: 0.5/20 < 1.0/30): (1, 2), 2.0 s."""
    counts = greedy_recompute(two_chunk_memory(), [1.0, 0.5], 150.0)
    assert counts == (1, 2)


def test_recompute_none_needed_and_infeasible() -> None:
    memory = two_chunk_memory()
    assert choose_recompute(memory, [1.0, 0.5], 250.0).status == "none-needed"
    assert choose_recompute(memory, [1.0, 0.5], 50.0).status == "infeasible"  # even (2, 2) holds 100
