"""The end-of-run table: steps, throughput, loss first/last, predicted-vs-measured step time, fallbacks.

Sized for an 80-column terminal and a log file: two columns, full names, no truncation.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:
    from executor.train.config import TrainConfig
    from executor.train.trainer import RunSummary


def step_time_error(records: list[dict[str, float]]) -> tuple[float, float]:
    """(median signed error, mean absolute error) of measured vs predicted step time, as fractions."""
    errors = [(r["measured_s"] - r["predicted_s"]) / r["predicted_s"] for r in records if r["predicted_s"] > 0]
    if not errors:
        return float("nan"), float("nan")
    return statistics.median(errors), statistics.fmean(abs(e) for e in errors)


def summary_table(summary: RunSummary, config: TrainConfig) -> Table:
    records = summary.records
    table = Table(title=f"helix train: {config.model.name} on {config.cluster.name}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    median_err, mape = step_time_error(records)  # type: ignore[arg-type]
    tokens_s = [r["tokens_per_s"] for r in records]
    sources = [r["plan_source"] for r in records]
    table.add_row("steps", f"{summary.steps_run} (strategy {config.strategy})")
    table.add_row("tokens", f"{summary.tokens:,}")
    table.add_row("tokens/s (median)", f"{statistics.median(tokens_s):,.0f}" if tokens_s else "-")
    table.add_row("loss first -> last", f"{summary.first_loss:.4f} -> {summary.last_loss:.4f}")
    table.add_row("measured vs predicted", f"median {median_err:+.1%}, mean |error| {mape:.1%}")
    table.add_row("plans", ", ".join(f"{sources.count(s)} {s}" for s in sorted(set(sources))) or "-")
    table.add_row("fallbacks", str(summary.fallbacks))
    table.add_row("wall time", f"{summary.seconds:.1f} s")
    return table
