"""Lane ILP wall time against its time limit, per backend, on a 256-device instance that needs probing.

The test suite checks the budget arithmetic on a simulated clock (tests/planner/solvers); this script
measures what a real machine does with it: for each backend and limit, `--repeats` solves (the first call
of the process, which pays solver start-up, is reported on its own row) with elapsed p50 / max and the
worst overrun past the limit.

    .venv/bin/python bench/lane_ilp_time_limit.py [--repeats 5]

Writes bench/results/lane_ilp_time_limit.md and .json.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
from bench_common import machine, write_table

from planner_service.solvers.integer_program import BACKENDS
from planner_service.solvers.lane_assignment_milp import LaneProblem, solve_lanes

LIMITS_S = (0.05, 0.2, 1.0)
DEVICES_PER_TOKEN = 1 / 2048
"""Memory model of the instance: a sequence of n tokens needs at least n / 2048 devices."""


def instance(seed: int = 7) -> LaneProblem:
    """16 length buckets up to 200K tokens on one 256-device stage block; inter-node lanes (s > 8) pay extra."""
    rng = np.random.default_rng(seed)
    sizes = tuple(2**k for k in range(9))
    lengths = np.sort(rng.integers(100, 200_000, size=16))[::-1]
    counts = tuple(int(c) for c in rng.integers(1, 60, size=16))
    rows = tuple(
        tuple(
            math.inf if n * DEVICES_PER_TOKEN > s else float(1e-9 * n * n / s + 1e-5 * n / s + 3e-6 * n * (s > 8))
            for s in sizes
        )
        for n in lengths
    )
    return LaneProblem(block_size=256, sizes=sizes, counts=counts, mean_work=rows, max_work=rows)


def timed(problem: LaneProblem, backend: str, limit: float) -> tuple[float, str]:
    started = time.perf_counter()
    sol = solve_lanes(problem, backend=backend, time_limit_s=limit, tolerance=1e-9)
    return time.perf_counter() - started, sol.status if sol else "none"


def run(args: argparse.Namespace) -> None:
    problem = instance()
    rows: list[list[Any]] = []
    for backend in BACKENDS:
        first_s, status = timed(problem, backend, LIMITS_S[0])
        rows.append([backend, LIMITS_S[0], "first call", first_s, first_s, first_s - LIMITS_S[0], status])
        for limit in LIMITS_S:
            results = [timed(problem, backend, limit) for _ in range(args.repeats)]
            elapsed = sorted(e for e, _ in results)
            statuses = ",".join(sorted({s for _, s in results}))
            median = elapsed[len(elapsed) // 2]
            rows.append([backend, limit, "warm", median, elapsed[-1], elapsed[-1] - limit, statuses])
    meta = {
        **machine(),
        "repeats": args.repeats,
        "instance": "256 devices, sizes 1..256, 16 buckets up to 200K tokens",
        "tolerance": "1e-9 (a solve stops at its limit or after 24 probes)",
        "command": "python bench/lane_ilp_time_limit.py",
    }
    columns = ["backend", "limit_s", "call", "p50_s", "max_s", "worst_overrun_s", "status"]
    path = write_table("lane_ilp_time_limit", "Lane ILP wall time vs its limit", columns, rows, meta)
    print(path.read_text())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    run(parser.parse_args())
