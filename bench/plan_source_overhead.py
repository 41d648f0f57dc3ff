"""Per-step overhead of getting plans from the planner service (prefetched one step ahead) vs planning in-process.

Runs `helix train` on the same corpus, model, batches and strategy with `--planner URL` and `--planner local`,
alternating the two (A B A B ...) so both see the same machine load, and reports per-step medians of the time
the loop waited for its plan, the step itself, and rank 0's whole iteration. Writes
bench/results/plan_source_overhead.{md,json}.

    python bench/plan_source_overhead.py --rounds 2 --steps 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_common import machine, write_table

from executor.train.demo import write_stdlib_corpus
from executor.train.run_metrics import read_metrics
from planner_service.local_service import LocalService

ARGS = ("--cluster", "cpu-2x2", "--model", "small", "--batch-size", "8", "--max-len", "1024", "--seed", "1")


def run(planner: str, *, strategy: str, steps: int, corpus: Path, work: Path, tag: str) -> list[dict[str, float]]:
    metrics = work / f"{tag}.jsonl"
    command = [sys.executable, "-m", "planner_service.cli", "train", *ARGS, "--strategy", strategy]
    command += ["--steps", str(steps), "--data", str(corpus), "--planner", planner, "--metrics", str(metrics)]
    command += ["--cache-dir", str(work / "cache")]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"helix train failed ({tag}):\n{result.stderr[-2000:]}")
    return read_metrics(metrics)[1:]  # step 0 also pays for registration / the first plan: excluded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--strategy", default="helix")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = write_stdlib_corpus(work / "stdlib.jsonl")
        samples: dict[str, list[dict[str, float]]] = {"service": [], "local": []}
        with LocalService(work / "plans.db") as service:
            for r in range(args.rounds):
                for source in ("service", "local"):
                    planner = service.url if source == "service" else "local"
                    samples[source] += run(
                        planner, strategy=args.strategy, steps=args.steps, corpus=corpus, work=work, tag=f"{source}{r}"
                    )
    rows = []
    for source, records in samples.items():
        rows.append(
            [
                source,
                len(records),
                statistics.median(r["plan_wait_s"] for r in records),
                statistics.median(r["measured_s"] for r in records),
                statistics.median(r["iteration_wall_s"] for r in records),
            ]
        )
    local_wall, service_wall = rows[1][4], rows[0][4]
    rows.append(["service - local", "", rows[0][2] - rows[1][2], rows[0][3] - rows[1][3], service_wall - local_wall])
    path = write_table(
        "plan_source_overhead",
        f"Plan source overhead per step: service (prefetched) vs in-process, strategy {args.strategy}",
        ["planner", "steps", "plan wait s (median)", "step s (median)", "iteration wall s (median)"],
        rows,
        {
            **machine(),
            "run": " ".join(ARGS) + f" --strategy {args.strategy} --steps {args.steps}",
            "rounds": f"{args.rounds}, alternating service/local; step 0 of each run excluded",
            "ranks": f"4 CPU ranks (gloo) on {os.cpu_count()} cores, OMP_NUM_THREADS per rank = cores / 4 (min 1)",
        },
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
