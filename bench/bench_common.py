"""Helpers shared by the benchmark scripts: where the real data lives and how tables are written."""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proto import Batch, ClusterSpec, CostProfile, ModelSpec

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WIKIPEDIA = ROOT.parent / "shared" / "data" / "wikipedia-lengths.txt"
"""Real lengths, present only in the development checkout (never redistributed with the project)."""


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}


def write_table(name: str, title: str, columns: list[str], rows: list[list[Any]], meta: dict[str, Any]) -> Path:
    """bench/results/<name>.md (a markdown table) and <name>.json (rows as objects plus meta)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", *(f"- {k}: {v}" for k, v in meta.items()), ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    md = RESULTS / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"meta": meta, "rows": [dict(zip(columns, row, strict=True)) for row in rows]}, indent=1)
    )
    return md


def measured_cpu_profile(cluster: ClusterSpec, model: ModelSpec, name: str) -> CostProfile:
    """`helix profile` of `model` on this machine's CPU ranks of `cluster` (one rank pinned per core), from the
    profile cache when it holds one for this (cluster, model, software); written to bench/results/<name>.json."""
    from executor.profile.grid import GRIDS, ProfileSettings
    from executor.profile.profile_run import ProfileTarget, cached_document, run_profile_rank
    from executor.verify.launch import launch_local
    from planner_service.cost_model.profile_document import default_cache_dir

    settings = ProfileSettings(grid=GRIDS["cpu"], grid_name="cpu", repeats=3, statistic="min", pin_cores=True)
    target = ProfileTarget(
        cluster=cluster, model=model, settings=settings, out=RESULTS / f"{name}.json", cache_dir=default_cache_dir()
    )
    doc = cached_document(target) or launch_local(run_profile_rank, (target,), world_size=cluster.num_devices)[0]
    return doc.profile


def add_cpu_check_arguments(parser: argparse.ArgumentParser, *, batches: int, batch_size: int) -> None:
    """The options of a predicted-vs-measured check on this machine's CPU ranks (`layer_split_check`,
    `deferred_weight_grads_check`): cluster, batches of stdlib lengths, timed repeats, the planner's limit."""
    parser.add_argument(
        "--cluster",
        default="cpu-1x2",
        help="cpu-1x2 (default): one rank per core, so each pipeline stage has a core of its own; with more ranks "
        "than cores, stages share cores and a core's load, not a stage's, sets the step time",
    )
    parser.add_argument("--batches", type=int, default=batches)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--time-limit", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="2 batches, 3 repeats")


def parse_cpu_check_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.quick:
        args.batches, args.repeats = 2, 3
    return args


def stdlib_batches(args: argparse.Namespace, seed: int) -> list[Batch]:
    """`args.batches` batches of `args.batch_size` Python stdlib file lengths (seeds `seed`, `seed` + 1, ...)."""
    from planner_service.workloads import load_workload

    return [
        load_workload(
            lengths_path=None, dataset="stdlib", batch_size=args.batch_size, seed=seed + i, max_len=args.max_len
        )
        for i in range(args.batches)
    ]


@dataclass(frozen=True)
class RoundRobinRun:
    """Per case, in the order given: its min seconds, its (max - min) / median spread, and its largest rank's peak
    bytes (on CPU model states plus the tensors held for backward: compare with `predicted_saved_peak`)."""

    seconds: list[float]
    spreads: list[float]
    peaks: list[float]


def time_cases_round_robin(cluster: ClusterSpec, model: ModelSpec, cases: list[Any], repeats: int) -> RoundRobinRun:
    """Run `cases` (`executor.profile.step_timing.PlanCase`) on the cluster's CPU ranks, one pinned per core,
    round-robin with 1 warm-up and `repeats` timed steps each."""
    import statistics

    from executor.profile.step_timing import StepTimingSettings, time_plans
    from executor.profile.timing import summarize
    from executor.verify.launch import launch_local

    settings = StepTimingSettings(warmup=1, repeats=repeats, pin_cores=True)
    timings = launch_local(time_plans, (cluster, model, cases, settings), world_size=cluster.num_devices)[0]
    measured = [summarize(list(t.seconds), "min") for t in timings]
    spreads = [(max(t.seconds) - min(t.seconds)) / statistics.median(t.seconds) for t in timings]
    return RoundRobinRun(measured, spreads, [max(t.peak_memory_bytes) for t in timings])


def predicted_time_and_saved_peak(plan: Any, batch: Batch, cost: Any) -> tuple[float, float]:
    """The plan's predicted iteration seconds and its largest rank's predicted peak without op transients, less the
    reserve: what the CPU probe measures (model states plus the tensors held for backward)."""
    from planner_service.simulator import simulate

    result = simulate(plan, batch, cost, record_events=False, saved_tensor_peaks=True)
    return result.predicted.iteration_s, max(result.saved_tensor_peak_bytes) - cost.memory_reserve_bytes


@dataclass(frozen=True)
class CpuCheckStart:
    """What every CPU check begins with: the cluster, the measured profile, its cost model, and the clock and load
    readings the table's header reports."""

    cluster: ClusterSpec
    profile: CostProfile
    cost: Any
    began: float
    loads: dict[str, Any]


def start_cpu_check(args: argparse.Namespace, model: ModelSpec, profile_name: str) -> CpuCheckStart:
    """Resolve `--cluster`, measure (or load the cached) profile of `model` on it, and say how long that took."""
    import os

    from planner_service.cost_model import CostModel
    from planner_service.presets import resolve_cluster

    cluster = resolve_cluster(args.cluster)
    began = time.perf_counter()
    loads = {"start": os.getloadavg()}
    profile = measured_cpu_profile(cluster, model, profile_name)
    print(f"profile: {profile.name} ({time.perf_counter() - began:.0f} s)", flush=True)
    cost = CostModel.from_specs(cluster, model, profile=profile)
    return CpuCheckStart(cluster, profile, cost, began, loads)


def cpu_check_meta(
    args: argparse.Namespace,
    *,
    script: str,
    model: str,
    profile: str,
    spreads: list[float],
    loads: dict[str, Any],
    began: float,
    batches_note: str = "",
    results: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The header of a predicted-vs-measured CPU check's table: machine, setup, timing method, `results` (its
    summary lines), load and the command that reproduces it."""
    import statistics

    return {
        **machine(),
        "cluster": args.cluster,
        "model": model,
        "profile": profile,
        "batches": f"{args.batches} x {args.batch_size} stdlib sequences, max_len {args.max_len}{batches_note}",
        "steps": f"1 warm-up + {args.repeats} timed per case, round-robin; measured = the min",
        "median spread of a case's timed steps": f"{statistics.median(spreads):.1%}",
        **(results or {}),
        "load_average_1_5_15": loads,
        "seconds": round(time.perf_counter() - began),
        "command": f"python bench/{script}.py" + (" --quick" if args.quick else ""),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)
