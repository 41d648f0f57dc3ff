"""Planner latency: p50/p95 planning time per strategy for batches of 128..8192 sequences on 16..1024 devices.

Each (batch size, cluster) point plans `--repeats` batches (different seeds) of synthetic github lengths
(max 128K) for llama2-7b on an H100-like cluster of the given size; the first (import/warm-up) call is
discarded. Time is the wall time of `make_plan` including validation.

    .venv/bin/python bench/planner_latency.py              # the default grid
    .venv/bin/python bench/planner_latency.py --quick      # 512 x 64 and 8192 x 1024 only

Writes bench/results/planner_latency.md and .json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from bench_common import machine, write_table

from planner_service.errors import PlanningError
from planner_service.planner import make_plan
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.workloads import load_workload
from proto import ClusterSpec

GRID = ((128, 16), (512, 64), (2048, 256), (8192, 1024))
QUICK = ((512, 64), (8192, 1024))
STRATEGIES = ("static", "flexsp", "infinipipe", "helix")


def cluster_of(devices: int) -> ClusterSpec:
    base = resolve_cluster("h100-80g-8x8")
    return base.model_copy(update={"name": f"h100-80g-{devices // 8}x8", "num_nodes": devices // 8})


def run(args: argparse.Namespace) -> None:
    model = resolve_model("llama2-7b")
    make_plan(
        batch=load_workload(lengths_path=None, dataset="github", batch_size=16, seed=0, max_len=8192),
        cluster=cluster_of(16),
        model=model,
        strategy="helix",
    )  # warm-up: imports, solver start-up
    rows: list[list[Any]] = []
    for batch_size, devices in QUICK if args.quick else GRID:
        cluster = cluster_of(devices)
        for name in STRATEGIES:
            times = []
            statuses = set()
            for r in range(args.repeats):
                batch = load_workload(
                    lengths_path=None, dataset="github", batch_size=batch_size, seed=100 + r, max_len=131072
                )
                started = time.perf_counter()
                try:
                    plan = make_plan(
                        batch=batch, cluster=cluster, model=model, strategy=name, time_limit_s=args.time_limit
                    )
                    statuses.add(plan.solver.status)
                except PlanningError:
                    statuses.add("infeasible")
                times.append(time.perf_counter() - started)
            p50, p95 = np.percentile(times, [50, 95])
            rows.append([batch_size, devices, name, float(p50), float(p95), max(times), ",".join(sorted(statuses))])
            print(f"{batch_size} seqs x {devices} devices {name}: p50 {p50:.2f}s p95 {p95:.2f}s", flush=True)
    meta = {
        **machine(),
        "repeats": args.repeats,
        "time_limit_s": args.time_limit,
        "model": "llama2-7b",
        "data": "synthetic github, max 128K",
        "command": "python bench/planner_latency.py" + (" --quick" if args.quick else ""),
    }
    md = write_table(
        "planner_latency" + ("_quick" if args.quick else ""),
        "Planning latency (wall seconds)",
        ["sequences", "devices", "strategy", "p50_s", "p95_s", "max_s", "status"],
        rows,
        meta,
    )
    print(f"wrote {md}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--time-limit", type=float, default=2.0)
    run(parser.parse_args())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
