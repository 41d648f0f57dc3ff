"""The end-of-run table: steps, throughput, loss first/last, predicted-vs-measured step time, fallbacks.

Built from the per-step records (the metrics JSONL), so `helix train` and `make demo` print the same table.
Sized for an 80-column terminal and a log file: two columns, full names, no truncation.
"""

from __future__ import annotations

import statistics
from typing import Any

from rich.table import Table


def step_time_error(records: list[dict[str, Any]]) -> tuple[float, float]:
    """(median signed error, mean absolute error) of measured vs predicted step time, as fractions."""
    errors = [(r["measured_s"] - r["predicted_s"]) / r["predicted_s"] for r in records if r["predicted_s"] > 0]
    if not errors:
        return float("nan"), float("nan")
    return statistics.median(errors), statistics.fmean(abs(e) for e in errors)


def run_table(records: list[dict[str, Any]], *, title: str, wall_s: float | None = None) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    if not records:
        table.add_row("steps", "0")
        return table
    median_err, mape = step_time_error(records)
    sources = [r["plan_source"] for r in records]
    strategies = sorted({r["strategy"] for r in records})
    table.add_row("steps", f"{len(records)} (strategy {', '.join(strategies)}, P={records[0]['num_stages']})")
    table.add_row("tokens", f"{sum(r['tokens'] for r in records):,}")
    table.add_row("tokens/s (median)", f"{statistics.median(r['tokens_per_s'] for r in records):,.0f}")
    table.add_row("loss first -> last", f"{records[0]['loss']:.4f} -> {records[-1]['loss']:.4f}")
    table.add_row("step time (median)", f"{statistics.median(r['measured_s'] for r in records):.2f} s")
    table.add_row("measured vs predicted", f"median {median_err:+.1%}, mean |error| {mape:.1%}")
    table.add_row("plans", ", ".join(f"{sources.count(s)} {s}" for s in sorted(set(sources))))
    table.add_row("fallbacks", str(sources.count("fallback")))
    if wall_s is not None:
        table.add_row("wall time", f"{wall_s:.1f} s")
    return table
