"""Recompute scope: helix's simulated iteration time with whole-layer recompute and with MLP-only recompute.

The plan_quality grid (same configurations, same length sources, same 2 s limit). helix plans each batch with the
job's default scope (`layer`: a recomputed layer reruns attention, MLP and all-to-alls); where that plan recomputes,
it plans again with `--recompute-scope mlp` (a recomputed layer keeps its attention half and reruns its MLP half).
Reported per configuration: both plans' time over ideal, their recompute seconds over ideal and P, and the better
of the two; then how many of the recomputing configurations each scope wins and the median over the grid of the
default plan and of the better one (what a planner that chose the scope per batch would reach, measured here with
two full planning calls, i.e. twice the limit).

    .venv/bin/python bench/recompute_scope.py            # the plan_quality grid (about 4 minutes)
    .venv/bin/python bench/recompute_scope.py --quick    # 8 configurations

Writes bench/results/recompute_scope.md and .json (recompute_scope_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from statistics import median
from typing import Any

from bench_common import WIKIPEDIA, machine, write_table
from plan_quality import configurations

from planner_service.cost_model import CostModel
from planner_service.planner import make_plan
from planner_service.report import load_named_workload
from proto import Plan, PlanOptions, RecomputeScope


def helix_plan(work: Any, scope: RecomputeScope, time_limit: float) -> tuple[Plan, float]:
    started = time.perf_counter()
    plan = make_plan(
        batch=work.batch,
        cluster=work.cluster,
        model=work.model,
        strategy="helix",
        options=PlanOptions(recompute_scope=scope),
        time_limit_s=time_limit,
        solver="cpsat",
    )
    return plan, time.perf_counter() - started


def run(args: argparse.Namespace) -> None:
    rows: list[list[Any]] = []
    default_x: list[float] = []
    best_x: list[float] = []
    wins = {"layer": 0, "mlp": 0, "tie": 0}
    load_before = os.getloadavg()
    configs = configurations(args)
    for i, (cluster, model, batch, max_len, seed, (label, path, dataset)) in enumerate(configs, 1):
        work = load_named_workload(cluster, model, path, dataset, batch, seed, max_len)
        ideal = CostModel.from_specs(work.cluster, work.model).ideal_s(work.batch)
        layer, layer_s = helix_plan(work, RecomputeScope.LAYER, args.time_limit)
        x_layer = layer.predicted.iteration_s / ideal
        mlp: Plan | None = None
        x_mlp = None
        if layer.predicted.recompute_s > 0:
            mlp, _ = helix_plan(work, RecomputeScope.MLP, args.time_limit)
            x_mlp = mlp.predicted.iteration_s / ideal
            key = "tie" if abs(x_mlp - x_layer) <= 1e-9 * x_layer else "mlp" if x_mlp < x_layer else "layer"
            wins[key] += 1
        best = min(x_layer, x_mlp) if x_mlp is not None else x_layer
        default_x.append(x_layer)
        best_x.append(best)
        rows.append([
            cluster, model, label, batch, max_len, seed, ideal,
            x_layer, layer.predicted.recompute_s / ideal, layer.pipeline.num_stages,
            x_mlp, mlp.predicted.recompute_s / ideal if mlp else None, mlp.pipeline.num_stages if mlp else None,
            best, layer_s,
        ])  # fmt: skip
        print(
            f"[{i}/{len(configs)}] {cluster} {model} {label} b{batch} L{max_len} s{seed}: layer {x_layer:.3f}"
            + (f", mlp {x_mlp:.3f}" if x_mlp is not None else " (no recompute)"),
            flush=True,
        )
    recomputing = sum(wins.values())
    meta = {
        **machine(),
        "configurations": f"{len(configs)} (the plan_quality grid{', quick' if args.quick else ''})",
        "time_limit_s": args.time_limit,
        "configurations whose layer-scope plan recomputes": recomputing,
        "of those, faster with": f"mlp {wins['mlp']}, layer {wins['layer']}, tie {wins['tie']}",
        "helix x ideal, median": f"layer scope {median(default_x):.3f}; the better scope per batch "
        f"{median(best_x):.3f}",
        "helix x ideal <= 1.15": f"layer scope {sum(x <= 1.15 for x in default_x)}; the better scope per batch "
        f"{sum(x <= 1.15 for x in best_x)} of {len(configs)}",
        "load average (1 min) before/after": f"{load_before[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
        "cores",
        "command": "python bench/recompute_scope.py" + (" --quick" if args.quick else ""),
    }
    md = write_table(
        "recompute_scope" + ("_quick" if args.quick else ""),
        "Recompute scope: helix x ideal with whole-layer and with MLP-only recompute",
        ["cluster", "model", "data", "batch", "max_len", "seed", "ideal_s", "layer_x_ideal", "layer_recompute",
         "layer_P", "mlp_x_ideal", "mlp_recompute", "mlp_P", "better_x_ideal", "layer_plan_s"],
        rows,
        meta,
    )  # fmt: skip
    print(f"wrote {md}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 configurations")
    parser.add_argument("--time-limit", type=float, default=2.0)
    parser.add_argument("--wikipedia", type=Path, default=WIKIPEDIA, help="the real Wikipedia lengths file")
    args = parser.parse_args()
    args.full = False
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
