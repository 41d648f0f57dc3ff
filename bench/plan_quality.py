"""Plan quality: every strategy's predicted iteration time on paper-scale clusters, models and data.

clusters {a100-40g-8x8, a800-80g-4x8, h100-80g-16x8} x models {gpt-7b, gpt-13b, gpt-30b} x data {the real
Wikipedia lengths (when ../shared is present), synthetic github, synthetic commoncrawl} x max length
{64K, 128K, 384K}, batch 512. For each: iteration time, speedup over `static`, ratio to ideal, planning time.

    .venv/bin/python bench/plan_quality.py                 # the full grid (long: tens of minutes on 2 cores)
    .venv/bin/python bench/plan_quality.py --quick         # a100-40g-8x8 x gpt-7b x all data, 384K only

Writes bench/results/plan_quality.md and .json. A configuration a strategy cannot fit is reported as such.
"""

from __future__ import annotations

import argparse
import sys
import time
from statistics import median
from typing import Any

from bench_common import WIKIPEDIA, machine, write_table

from planner_service.cost_model import CostModel
from planner_service.errors import PlanningError
from planner_service.planner import make_plan
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.workloads import load_workload

STRATEGIES = ("static", "flexsp", "infinipipe", "helix")
CLUSTERS = ("a100-40g-8x8", "a800-80g-4x8", "h100-80g-16x8")
MODELS = ("gpt-7b", "gpt-13b", "gpt-30b")
MAX_LENS = (65536, 131072, 393216)


def datasets() -> list[tuple[str, str | None, str | None]]:
    """(label, lengths path, synthetic dataset)."""
    out: list[tuple[str, str | None, str | None]] = []
    if WIKIPEDIA.exists():
        out.append(("wikipedia (real)", str(WIKIPEDIA), None))
    else:
        print(f"note: {WIKIPEDIA} absent, skipping the real Wikipedia lengths", file=sys.stderr)
    out += [("github (synthetic)", None, "github"), ("commoncrawl (synthetic)", None, "commoncrawl")]
    return out


def run(args: argparse.Namespace) -> None:
    clusters = ("a100-40g-8x8",) if args.quick else CLUSTERS
    models = ("gpt-7b",) if args.quick else MODELS
    max_lens = (393216,) if args.quick else MAX_LENS
    rows: list[list[Any]] = []
    grid = [(c, m, d, L) for c in clusters for m in models for d in datasets() for L in max_lens]
    for i, (cluster_name, model_name, (label, path, dataset), max_len) in enumerate(grid, 1):
        cluster, model = resolve_cluster(cluster_name), resolve_model(model_name)
        batch = load_workload(lengths_path=path, dataset=dataset, batch_size=512, seed=args.seed, max_len=max_len)
        ideal = CostModel.from_specs(cluster, model).ideal_s(batch)
        results: dict[str, tuple[float | None, float, str]] = {}
        for name in STRATEGIES:
            started = time.perf_counter()
            try:
                plan = make_plan(batch=batch, cluster=cluster, model=model, strategy=name, time_limit_s=args.time_limit)
                results[name] = (plan.predicted.iteration_s, time.perf_counter() - started, plan.solver.status)
            except PlanningError:
                results[name] = (None, time.perf_counter() - started, "infeasible")
        static = results["static"][0]
        for name, (iteration, plan_s, status) in results.items():
            rows.append([
                cluster_name, model_name, label, max_len, name,
                iteration,
                static / iteration if static and iteration else None,
                iteration / ideal if iteration else None,
                plan_s, status,
            ])  # fmt: skip
        summary = ", ".join(f"{n} {r[0]:.2f}s" if r[0] else f"{n} -" for n, r in results.items())
        print(
            f"[{i}/{len(grid)}] {cluster_name} {model_name} {label} {max_len}: ideal {ideal:.2f}s; {summary}",
            flush=True,
        )
    helix_speedups = [r[6] for r in rows if r[4] == "helix" and r[6]]
    meta = {
        **machine(),
        "batch": 512,
        "seed": args.seed,
        "time_limit_s": args.time_limit,
        "median helix speedup over static": f"{median(helix_speedups):.2f}x" if helix_speedups else "-",
        "command": "python bench/plan_quality.py" + (" --quick" if args.quick else ""),
    }
    md = write_table(
        "plan_quality" + ("_quick" if args.quick else ""),
        "Plan quality (predicted by the calibrated simulator)",
        [
            "cluster",
            "model",
            "data",
            "max_len",
            "strategy",
            "iteration_s",
            "speedup_vs_static",
            "ratio_to_ideal",
            "plan_s",
            "status",
        ],
        rows,
        meta,
    )
    print(f"wrote {md}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one cluster and model, 384K only")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=2.0)
    run(parser.parse_args())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
