"""Helpers shared by the benchmark scripts: where the real data lives and how tables are written."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from proto import ClusterSpec, CostProfile, ModelSpec

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


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)
