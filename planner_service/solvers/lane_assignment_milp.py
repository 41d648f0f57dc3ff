"""Lane sizes and sequence-to-lane assignment as a sequence of small integer programs.

Formulation (one stage block of B devices, lane sizes s in S, length buckets q):

    variables   n_s  in {0..B/s}        lanes of size s
                x_qs in {0..count_q}    sequences of bucket q placed on lanes of size s
    (1) sum_s s * n_s = B                          lanes partition the stage block
    (2) sum_s x_qs = count_q                       every sequence is placed
    (3) sum_q w_qs * x_qs <= (T - o_s) * n_s       size-s lanes share their work within makespan T
    (4) x_qs = 0 when wmax_qs > T or q does not fit memory on size s
    (5) sum_{q: wmax_qs > T/2} x_qs <= n_s         two such sequences never share a lane

`w_qs` is the mean per-stage forward+backward time of a bucket-q sequence on a size-s lane
(compute / s plus Ulysses all-to-alls at intra- or inter-node bandwidth), `wmax_qs` that of the
bucket's longest member; `o_s` a per-lane constant (the per-chunk overheads of a lane's chunks,
0 unless the caller models them). (3) is bilinear in (n_s, T), so T is fixed and bisected: each probe is a
pure feasibility ILP, tiny (|S| + Q*|S| integers) and fast for every backend. The bisection starts
from a combinatorial lower bound (device-time conservation and the longest sequence) and the best
uniform layout (the greedy warm start, also given to the solver as a hint), and stops at a
relative gap `tolerance` or the budget. A probe proven infeasible raises the lower bound, so
the reported gap is a true bound *for this model* (the simulator charges more: see `planner_service.
lower_bound` for the bound on simulated time). Deterministic: fixed solver seeds, one worker, a fixed
probe sequence, and a budget in CP-SAT deterministic time (`deterministic_s`); the wall-clock
`time_limit_s` is only a safety net.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from planner_service.solvers.integer_program import IntegerProgram, Solution, solve

DEFAULT_TOLERANCE = 0.01
MAX_PROBES = 24


@dataclass(frozen=True, slots=True)
class LaneProblem:
    """Inputs of the lane model; times in seconds, `inf` marks (bucket, size) pairs that do not fit."""

    block_size: int
    sizes: tuple[int, ...]
    counts: tuple[int, ...]
    mean_work: tuple[tuple[float, ...], ...]
    """mean_work[q][k]: mean per-stage seconds of a bucket-q sequence on a lane of size sizes[k]."""
    max_work: tuple[tuple[float, ...], ...]
    """max_work[q][k]: the same for the bucket's longest member."""
    lane_overhead: tuple[float, ...] = ()
    """lane_overhead[k]: seconds every busy lane of size sizes[k] pays once (empty: none)."""

    def overhead(self, k: int) -> float:
        return self.lane_overhead[k] if self.lane_overhead else 0.0


@dataclass(frozen=True, slots=True)
class LaneSolution:
    lane_counts: tuple[int, ...]
    """lane_counts[k]: number of lanes of size sizes[k]."""
    assignment: tuple[tuple[int, ...], ...]
    """assignment[q][k]: sequences of bucket q on size-sizes[k] lanes."""
    makespan_s: float
    lower_bound_s: float
    status: str
    """optimal (gap <= tolerance), feasible (time limit hit first), or heuristic (no probe answered in time:
    the uniform warm start)."""
    solve_s: float
    probes: int
    backend: str
    deterministic_s: float = 0.0
    """Deterministic solver time the probes spent."""
    entries: int = 0
    """Program entries over all probes (with `deterministic_s` and `probes`, what a work budget is charged)."""

    @property
    def gap(self) -> float:
        return max(0.0, (self.makespan_s - self.lower_bound_s) / self.makespan_s) if self.makespan_s > 0 else 0.0


def model_makespan(problem: LaneProblem, lane_counts: Sequence[int], assignment: Sequence[Sequence[int]]) -> float:
    """Makespan the model assigns to a solution: the busiest size class per lane, or the longest sequence."""
    worst = 0.0
    for k, n in enumerate(lane_counts):
        load = sum(problem.mean_work[q][k] * assignment[q][k] for q in range(len(problem.counts)) if assignment[q][k])
        if load > 0:
            worst = max(worst, load / n + problem.overhead(k) if n else math.inf)
        for q in range(len(problem.counts)):
            if assignment[q][k]:
                worst = max(worst, problem.max_work[q][k] + problem.overhead(k))
    return worst


def lower_bound(problem: LaneProblem) -> float:
    """Device-time conservation over the block, and no sequence can beat its best lane size."""
    device_time = 0.0
    longest = 0.0
    for q, count in enumerate(problem.counts):
        device_time += count * min(s * w for s, w in zip(problem.sizes, problem.mean_work[q], strict=True))
        longest = max(longest, min(problem.max_work[q]))
    return max(device_time / problem.block_size, longest)


def uniform_warm_start(problem: LaneProblem) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]] | None:
    """Best single-size layout (every lane the same size, buckets dealt by counts)."""
    best = None
    best_t = math.inf
    for k, s in enumerate(problem.sizes):
        if any(math.isinf(problem.max_work[q][k]) for q, c in enumerate(problem.counts) if c):
            continue
        counts = tuple(problem.block_size // s if j == k else 0 for j in range(len(problem.sizes)))
        assignment = tuple(tuple(c if j == k else 0 for j in range(len(problem.sizes))) for c in problem.counts)
        t = model_makespan(problem, counts, assignment)
        if t < best_t:
            best, best_t = (counts, assignment), t
    return best


def _probe(
    problem: LaneProblem,
    makespan: float,
    hint: tuple[Sequence[int], Sequence[Sequence[int]]] | None,
    backend: str,
    time_limit_s: float,
    deterministic_s: float,
) -> Solution:
    sizes, counts = problem.sizes, problem.counts
    prog = IntegerProgram()
    n = [prog.add_var(f"n_{s}", 0, problem.block_size // s) for s in sizes]
    fits = [
        [problem.max_work[q][k] + problem.overhead(k) <= makespan for k in range(len(sizes))]
        for q in range(len(counts))
    ]
    x = [
        [prog.add_var(f"x_{q}_{s}", 0, counts[q] if fits[q][k] else 0) for k, s in enumerate(sizes)]
        for q in range(len(counts))
    ]
    prog.add_eq({n[k]: float(s) for k, s in enumerate(sizes)}, float(problem.block_size))  # (1)
    for q, count in enumerate(counts):  # (2)
        prog.add_eq({x[q][k]: 1.0 for k in range(len(sizes))}, float(count))
    for k in range(len(sizes)):
        load = {x[q][k]: problem.mean_work[q][k] for q in range(len(counts)) if fits[q][k]}
        if load:  # (3)
            prog.add_le({**load, n[k]: -(makespan - problem.overhead(k))}, 0.0)
        big = {x[q][k]: 1.0 for q in range(len(counts)) if fits[q][k] and makespan / 2 < problem.max_work[q][k]}
        if big:  # (5)
            prog.add_le({**big, n[k]: -1.0}, 0.0)
    if hint is not None:
        lane_counts, assignment = hint
        for k, v in enumerate(lane_counts):
            prog.hint[n[k]] = v
        for q, row in enumerate(assignment):
            for k, v in enumerate(row):
                prog.hint[x[q][k]] = v
    return solve(prog, backend=backend, time_limit_s=time_limit_s, deterministic_s=deterministic_s)


MIN_PROBE_DETERMINISTIC_S = 0.002
"""A probe is not started with less deterministic time than this (it could not answer)."""


def solve_lanes(
    problem: LaneProblem,
    *,
    backend: str = "cpsat",
    time_limit_s: float = 1.0,
    tolerance: float = DEFAULT_TOLERANCE,
    deterministic_s: float = math.inf,
) -> LaneSolution | None:
    """Smallest-makespan lane layout found within the budget; None when nothing fits at all.

    `deterministic_s` bounds the probes' CP-SAT deterministic time (reproducible under load); `time_limit_s`
    bounds their wall time (the safety net, and the only bound of the PuLP backends)."""
    started = time.perf_counter()
    warm = uniform_warm_start(problem)
    lb = lower_bound(problem)
    if math.isinf(lb):
        return None
    best = warm
    ub = model_makespan(problem, *warm) if warm else math.inf
    if math.isinf(ub):  # no uniform layout fits: find any layout first at a loose makespan
        ub = max(max(w for w in row if not math.isinf(w)) for row in problem.max_work) * sum(problem.counts)
        best = None
    probes = 0
    improved = 0
    proven = True
    spent = 0.0
    entries = 0
    nk = len(problem.sizes)
    while probes < MAX_PROBES and (best is None or (ub - lb) > tolerance * ub):
        remaining = time_limit_s - (time.perf_counter() - started)
        det_left = deterministic_s - spent
        if remaining <= 0.005 or det_left < MIN_PROBE_DETERMINISTIC_S:
            proven = False
            break
        target = ub if best is None else (lb + ub) / 2
        wall = min(remaining, max(remaining / 4, 0.05))
        det = min(det_left, max(det_left / 4, 0.05)) if math.isfinite(det_left) else math.inf
        sol = _probe(problem, target, best, backend, wall, det)
        spent += sol.deterministic_s
        entries += sol.entries
        probes += 1
        if sol.status in ("optimal", "feasible"):
            vals = sol.values
            counts = tuple(vals[:nk])
            assignment = tuple(tuple(vals[nk + q * nk : nk + (q + 1) * nk]) for q in range(len(problem.counts)))
            found = model_makespan(problem, counts, assignment)
            improved += 1
            if best is None or found < ub:
                best, ub = (counts, assignment), found
            else:
                ub = min(ub, target)
        elif sol.status == "infeasible":
            lb = target
            if best is None:
                return None
        else:
            proven = False
            break
    if best is None:
        return None
    converged = proven and (ub - lb) <= tolerance * ub
    status = "optimal" if converged else ("feasible" if improved else "heuristic")
    return LaneSolution(
        lane_counts=best[0],
        assignment=best[1],
        makespan_s=ub,
        lower_bound_s=min(lb, ub),
        status=status,
        solve_s=time.perf_counter() - started,
        probes=probes,
        backend=backend,
        deterministic_s=spent,
        entries=entries,
    )
