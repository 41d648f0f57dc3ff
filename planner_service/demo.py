"""`make demo`: plan a real-length batch with every strategy, compare them and draw Gantt charts.

The lengths are real and present on every machine: the Python standard library's source files,
tokenised by a byte-level count (see planner_service/workloads/stdlib_lengths.py). Nothing here
reads ../shared.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from rich.console import Console

from planner_service.report import compare_results, draw_plan_gantt, load_named_workload, render_comparison
from planner_service.strategies.registry import STRATEGIES

DEMO_SETUPS = (
    ("a100-40g-8x8", "gpt-7b", 512),
    ("a800-80g-4x8", "llama2-7b", 256),
)


def run_demo(out_dir: Path, console: Console) -> dict[str, dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    reports: dict[str, dict[str, Any]] = {}
    for cluster, model, batch_size in DEMO_SETUPS:
        work = load_named_workload(cluster, model, None, "stdlib", batch_size, 1, None)
        console.rule(
            f"{cluster} / {model}: {batch_size} Python stdlib files, {work.batch.num_tokens} tokens, "
            f"longest {max(work.batch.lengths)}"
        )
        with console.status("planning with " + ", ".join(STRATEGIES)):
            report, plans = compare_results(work, list(STRATEGIES), time_limit=2.0, solver="cpsat", zero=0)
        console.print(render_comparison(report))
        for name, plan in plans.items():
            stem = f"{cluster}_{model}_{name}"
            (out_dir / f"{stem}.plan.json").write_text(plan.model_dump_json(indent=1))
            picture = draw_plan_gantt(plan, work.cluster, work.model, out_dir / f"{stem}.gantt.png")
            console.print(f"  {name}: plan -> {out_dir / (stem + '.plan.json')}, Gantt -> {picture}")
        reports[f"{cluster}/{model}"] = report
    (out_dir / "comparison.json").write_text(json.dumps(reports, indent=1))
    console.print(f"comparison written to {out_dir / 'comparison.json'}")
    return reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    run_demo(args.out, Console())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
