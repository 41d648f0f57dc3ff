"""`make demo`: train a small Llama-style model on real text with plans from the planner service, then compare
the planning strategies.

1. The corpus is real text present on every machine: this Python's standard-library sources (skewed lengths:
   a few hundred tokens to over a hundred thousand), written once as one JSONL document per file.
2. A planner service starts on loopback (`helix serve`, SQLite store under the output folder).
3. `helix train` runs 4 CPU ranks (cluster cpu-2x2) with the helix strategy: the service plans every step
   while the previous one trains; progress is printed per step; metrics, a PNG and the planner log are kept.
4. The service stops; a final table summarises the run; then the planning comparison on GPU clusters runs
   (`planner_service.demo`). Nothing is left running, whatever happens.
Nothing here reads ../shared.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from executor.train.run_metrics import read_metrics
from executor.train.summary import run_table

TRAIN_ARGS = (
    "--cluster", "cpu-2x2", "--model", "small", "--strategy", "helix", "--batch-size", "8", "--max-len", "2048",
    "--seed", "1", "--lr", "1e-2", "--warmup", "5", "--checkpoint-every", "20",
)  # fmt: skip
"""The demo run: 4 CPU ranks, the `small` model, 8 standard-library files per step, windows of 2,048 tokens."""
DEFAULT_STEPS = 40
WIDTH = 80
PLANNING_WIDTH = 110
"""The strategy comparison has eight columns: below this rich truncates strategy names and statuses."""


def write_stdlib_corpus(path: Path) -> Path:
    """One JSON line per standard-library source file (kept when already written)."""
    from planner_service.workloads.stdlib_lengths import stdlib_source_files

    if path.is_file() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with open(partial, "w", encoding="utf-8") as out:
        for source, _ in stdlib_source_files():
            text = Path(source).read_text(encoding="utf-8", errors="replace")
            out.write(json.dumps({"text": text, "source": source}) + "\n")
    partial.replace(path)
    return path


def run_training(out: Path, steps: int, console: Console) -> int:
    from planner_service.local_service import LocalService

    corpus = write_stdlib_corpus(out / "corpus" / "stdlib.jsonl")
    console.rule("training: helix train, 4 CPU ranks, plans from the planner service")
    metrics = out / "train.jsonl"
    metrics.unlink(missing_ok=True)
    for stale in ("planner.db", "planner.db-wal", "planner.db-shm"):  # each demo run plans a new job
        (out / stale).unlink(missing_ok=True)
    service = LocalService(out / "planner.db", log_file=out / "planner.log")
    try:
        service.start()
    except RuntimeError as exc:
        console.print(str(exc), style="red", markup=False, highlight=False)
        return 1
    try:
        console.print(f"planner service on {service.url} (log {out / 'planner.log'})")
        command = [sys.executable, "-m", "planner_service.cli", "train", *TRAIN_ARGS, "--steps", str(steps)]
        command += ["--data", str(corpus), "--planner", service.url, "--cache-dir", str(out / "cache")]
        command += ["--metrics", str(metrics), "--plot", str(out / "train.png")]
        command += ["--checkpoint-dir", str(out / "checkpoints")]
        code = subprocess.run(command, check=False, stdout=subprocess.DEVNULL).returncode
    finally:
        service.stop()
    if code != 0:
        console.print(f"[red]helix train failed (exit code {code})[/]")
        return code
    records = read_metrics(metrics)
    console.print(run_table(records, title=f"helix train: small on cpu-2x2, {len(records)} steps"))
    console.print(f"metrics {metrics}, plot {out / 'train.png'}, checkpoints {out / 'checkpoints'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--skip-planning", action="store_true", help="Train only (no strategy comparison).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    console = Console(width=WIDTH)
    code = run_training(args.out, args.steps, console)
    if code != 0:
        return code
    if not args.skip_planning:
        from planner_service.demo import run_demo

        run_demo(args.out / "planning", Console(width=PLANNING_WIDTH))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
