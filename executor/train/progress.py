"""The per-step progress line of a training run (rank 0), readable in an 80-column terminal and in a log.

One plain line per step, no live widgets (a log file must read the same as the terminal):
`step   12/100  loss 5.4321  1,234 tok/s  1.80 s (pred 1.52, +18%)  service  peak 95 MiB`.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from rich.console import Console

from executor.train.run_metrics import StepRecord

MIB = 2**20


class ProgressPrinter:
    def __init__(self, *, total_steps: int, num_stages: int, console: Console | None = None) -> None:
        self.total_steps = total_steps
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.records: list[dict[str, Any]] = []
        self.num_stages = num_stages

    def step(self, record: StepRecord) -> None:
        self.records.append(asdict(record))
        self.console.print(format_step(record, self.total_steps), markup=False)


def format_step(record: StepRecord, total_steps: int) -> str:
    width = len(str(total_steps))
    error = (record.measured_s - record.predicted_s) / record.predicted_s if record.predicted_s > 0 else math.nan
    peak = max(record.peak_memory_bytes, default=0.0) / MIB
    source = record.plan_source if record.plan_source != "fallback" else "FALLBACK"
    return (
        f"step {record.step:>{width}}/{total_steps}  loss {record.loss:.4f}  {record.tokens_per_s:,.0f} tok/s  "
        f"{record.measured_s:.2f} s (pred {record.predicted_s:.2f}, {error:+.0%})  {source}  peak {peak:,.0f} MiB"
    )
