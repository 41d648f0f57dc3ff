"""Plan quality: every strategy's predicted (simulated) iteration time where static layouts are hard to beat.

Grid: clusters {a100-40g-8x8, a800-80g-4x8, h100-80g-8x8} x models {llama2-7b, gpt-13b, llama3-8b (GQA)} x
batch {128, 512} x max length {32K, 128K} x seeds {1, 2} = 72 configurations, each on one length source taken
in turn from {the real Wikipedia lengths (when present), the Python standard library's files, synthetic github,
synthetic commoncrawl}: a sample of the full cross product with every source, so the run stays near half an
hour on 2 cores (`--full` runs every source on every configuration, four times longer).

Every strategy plans with the same limit (2 s by default); `megatron` first tunes its one layout for the job on
three other batches of the same source (not counted in its planning time). Reported per configuration:
each strategy's time, helix's speedup over each peer and over the best of all others, its ratio to ideal, the
lower bound on the simulated time over ideal (what no plan of the space can beat: the part of helix's distance to
ideal a better search cannot remove), helix over that bound (how far helix can be from the best plan of the
space, at most), where helix's time over ideal goes (its plan re-simulated with the all-to-alls and sends, the
data-parallel collectives or the overheads free, and with all three free: what remains is its compute, pipeline
bubbles, recompute and imbalance), and the planning wall time; then medians, worst cases and the count of
configurations where helix is slower.

    .venv/bin/python bench/plan_quality.py                 # the sampled grid
    .venv/bin/python bench/plan_quality.py --quick         # 8 configurations (smoke test)
    .venv/bin/python bench/plan_quality.py --wikipedia /path/to/wikipedia-lengths.txt
    .venv/bin/python bench/plan_quality.py --units-only    # plans of the reference machine, load-independent

Writes bench/results/plan_quality.md and .json (plan_quality_quick.* with --quick, *_units.* with --units-only).
With `--units-only` the comparison is what each planner decides with the limit's work units: on a machine as
fast as the reference (budget.WORK_UNITS_PER_SECOND) the same plans come out within the limit; on a loaded one
the wall-clock net would stop the searches earlier, which the default mode measures.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path
from statistics import median
from typing import Any

from bench_common import WIKIPEDIA, machine, write_table

from planner_service.cost_model import CostModel
from planner_service.report import compare_results, load_named_workload
from planner_service.simulator.time_over_ideal import time_over_ideal
from planner_service.strategies.registry import STRATEGIES
from proto import Op, Plan

CLUSTERS = ("a100-40g-8x8", "a800-80g-4x8", "h100-80g-8x8")
MODELS = ("llama2-7b", "gpt-13b", "llama3-8b")
BATCHES = (128, 512)
MAX_LENS = (32768, 131072)
SEEDS = (1, 2)
PEERS = tuple(name for name in STRATEGIES if name != "helix")


def sources(wikipedia: Path) -> list[tuple[str, Path | None, str | None]]:
    """(label, lengths file, dataset) of every length source available here."""
    out: list[tuple[str, Path | None, str | None]] = []
    if wikipedia.exists():
        out.append(("wikipedia (real)", wikipedia, None))
    else:
        print(f"note: {wikipedia} absent: the real Wikipedia lengths are skipped", file=sys.stderr)
    out += [("stdlib (real)", None, "stdlib"), ("github (synthetic)", None, "github")]
    out += [("commoncrawl (synthetic)", None, "commoncrawl")]
    return out


def configurations(args: argparse.Namespace) -> list[tuple[Any, ...]]:
    grid = list(itertools.product(CLUSTERS, MODELS, BATCHES, MAX_LENS, SEEDS))
    data = sources(args.wikipedia)
    if args.full:
        return [(*config, source) for config in grid for source in data]
    picked = [(*config, data[i % len(data)]) for i, config in enumerate(grid)]
    return picked[:: len(picked) // 8] if args.quick else picked


def speedup(row: dict[str, Any], peer: str, helix: float | None) -> float | None:
    other = row.get(peer)
    return other / helix if other and helix else None


def bound_x_ideal(helix: Plan | None, ideal_s: float) -> float | None:
    """helix's lower bound on the simulated iteration time (`SolverInfo.lower_bound_s`) over `ideal_s`."""
    if helix is None or helix.solver.lower_bound_s is None or ideal_s <= 0:
        return None
    return helix.solver.lower_bound_s / ideal_s


def helix_x_bound(helix: Plan | None) -> float | None:
    """helix's simulated iteration time over its lower bound: at most this far from the best plan of the space."""
    if helix is None or not helix.solver.lower_bound_s:
        return None
    return helix.predicted.iteration_s / helix.solver.lower_bound_s


OVER_IDEAL_COLUMNS = ("communication", "collectives", "overhead", "structure_x_ideal")
"""helix's time over ideal by part (`time_over_ideal`): what all-to-alls and sends, data-parallel collectives and
per-call/per-op overheads each add (in units of ideal), and the plan with all three free over ideal (its compute,
bubbles, recompute and imbalance)."""


def over_ideal(helix: Plan | None, work: Any) -> dict[str, float]:
    """helix's plan re-simulated with each part of the cost free (`planner_service.simulator.time_over_ideal`)."""
    if helix is None:
        return {}
    cost = CostModel.from_specs(work.cluster, work.model, options=helix.options)
    return time_over_ideal(helix, work.batch, cost).shares()


def w_op_form(plan: Plan | None) -> str:
    """How helix's plan defers weight gradients: 'group' (its stages end with groups of W ops sized to hide the
    gradient reduction, `weight_grad_tail`), 'gaps' (some W op away from its B), 'after B' (every W op right after
    its B), or '-' (no W op)."""
    if plan is None:
        return "-"
    if "grouped at the end" in plan.solver.message:
        return "group"
    places = [
        ops[i - 1] == Op(kind="B", chunk=op.chunk)
        for lane in plan.lanes
        for ops in lane.schedule
        for i, op in enumerate(ops)
        if op.kind == "W"
    ]
    if not places:
        return "-"
    return "after B" if all(places) else "gaps"


def run(args: argparse.Namespace) -> None:
    rows: list[list[Any]] = []
    summary: list[dict[str, Any]] = []
    configs = configurations(args)
    load_before = os.getloadavg()
    for i, (cluster, model, batch, max_len, seed, (label, path, dataset)) in enumerate(configs, 1):
        work = load_named_workload(cluster, model, path, dataset, batch, seed, max_len)
        report, plans = compare_results(work, list(STRATEGIES), args.time_limit, "cpsat", 0, units_only=args.units_only)
        times = {r["strategy"]: r["iteration_s"] for r in report["results"]}
        plan_s = {r["strategy"]: r["plan_s"] for r in report["results"]}
        helix = times["helix"]
        parts = over_ideal(plans.get("helix"), work)
        best_other = min((t for name, t in times.items() if name != "helix" and t), default=None)
        entry = {
            "config": f"{cluster} {model} {label} b{batch} L{max_len} s{seed}",
            "helix_vs_best": best_other / helix if best_other and helix else None,
            "ratio_to_ideal": helix / report["ideal_s"] if helix else None,
            "helix_plan_s": plan_s["helix"],
            "bound_x_ideal": bound_x_ideal(plans.get("helix"), report["ideal_s"]),
            "helix_x_bound": helix_x_bound(plans.get("helix")),
            "over_ideal": parts,
            "w_ops": w_op_form(plans.get("helix")),
            **{f"vs_{peer}": speedup(times, peer, helix) for peer in PEERS},
        }
        summary.append(entry)
        rows.append([
            cluster, model, label, batch, max_len, seed, report["ideal_s"],
            *(times[name] for name in STRATEGIES),
            entry["helix_vs_best"], entry["ratio_to_ideal"], entry["bound_x_ideal"], entry["helix_x_bound"],
            *(parts.get(k) for k in OVER_IDEAL_COLUMNS),
            entry["w_ops"],
            plan_s["helix"],
            max(plan_s.values()),
        ])  # fmt: skip
        print(
            f"[{i}/{len(configs)}] {entry['config']}: helix {helix or float('nan'):.3f}s, "
            f"{entry['helix_vs_best'] or float('nan'):.3f}x the best other, "
            f"{entry['ratio_to_ideal'] or float('nan'):.3f}x ideal, planned in {plan_s['helix']:.2f}s",
            flush=True,
        )
    meta = {**machine(), **summarise(summary, args), "load average (1 min) before/after": (
        f"{load_before[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")}  # fmt: skip
    name = "plan_quality" + ("_quick" if args.quick else "_full" if args.full else "")
    name += "_units" if args.units_only else ""
    md = write_table(
        name,
        "Plan quality: simulated iteration seconds per strategy (helix speedup = other / helix)",
        ["cluster", "model", "data", "batch", "max_len", "seed", "ideal_s", *STRATEGIES,
         "helix_vs_best_other", "helix_x_ideal", "bound_x_ideal", "helix_x_bound",
         *(f"helix_{k}" for k in OVER_IDEAL_COLUMNS), "helix_w_ops", "helix_plan_s", "slowest_plan_s"],
        rows,
        meta,
    )  # fmt: skip
    print(f"wrote {md}")


def summarise(summary: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Medians and worst cases over the configurations where both sides have a plan."""

    def stats(key: str) -> str:
        values = [s[key] for s in summary if s[key] is not None]
        if not values:
            return "-"
        slower = sum(v < 1 - 1e-9 for v in values)
        return f"median {median(values):.3f}x, worst {min(values):.3f}x, helix slower in {slower} of {len(values)}"

    ideal = [s["ratio_to_ideal"] for s in summary if s["ratio_to_ideal"] is not None]
    bound = [s["bound_x_ideal"] for s in summary if s["bound_x_ideal"] is not None]
    gap = [s["helix_x_bound"] for s in summary if s["helix_x_bound"] is not None]
    plan = sorted(s["helix_plan_s"] for s in summary)
    return {
        "configurations": f"{len(summary)} ({'every source on every configuration' if args.full else 'sampled'})",
        "time_limit_s": args.time_limit,
        "budget": "work units of the limit, no wall-clock net (reference machine)"
        if args.units_only
        else "the limit as a caller sets it (work units and the wall-clock safety net on this machine)",
        "helix vs best of all others": stats("helix_vs_best"),
        **{f"helix vs {peer}": stats(f"vs_{peer}") for peer in PEERS},
        "helix ratio to ideal": f"median {median(ideal):.3f}, worst {max(ideal):.3f}" if ideal else "-",
        "lower bound on the simulated time / ideal (no plan of the space can beat it)": (
            f"median {median(bound):.3f}, min {min(bound):.3f}, max {max(bound):.3f}" if bound else "-"
        ),
        "helix simulated / lower bound (the optimality gap the user pays, at most)": (
            f"median {median(gap):.3f}, worst {max(gap):.3f}" if gap else "-"
        ),
        "helix time over ideal by part (medians; `time_over_ideal`: each part is what making it free saves, in "
        "units of ideal)": ", ".join(
            f"{k} {median(v):.3f}"
            for k in OVER_IDEAL_COLUMNS
            if (v := [s["over_ideal"][k] for s in summary if s["over_ideal"]])
        )
        or "-",
        "helix W ops (deferred weight gradients)": ", ".join(
            f"{form} in {sum(e['w_ops'] == form for e in summary)}" for form in ("group", "gaps", "after B", "-")
        ),
        "helix planning wall s": f"p50 {plan[len(plan) // 2]:.2f}, p95 {plan[int(0.95 * (len(plan) - 1))]:.2f}, "
        f"max {plan[-1]:.2f}",
        "command": "python bench/plan_quality.py"
        + (" --quick" if args.quick else " --full" if args.full else "")
        + (" --units-only" if args.units_only else ""),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 configurations")
    parser.add_argument("--full", action="store_true", help="every length source on every configuration")
    parser.add_argument("--time-limit", type=float, default=2.0)
    parser.add_argument("--wikipedia", type=Path, default=WIKIPEDIA, help="the real Wikipedia lengths file")
    parser.add_argument(
        "--units-only",
        action="store_true",
        help="every strategy gets the limit's work units and no wall-clock net: the plans of the reference "
        "machine, independent of this one's load",
    )
    run(parser.parse_args())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
