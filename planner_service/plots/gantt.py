"""Gantt chart of a simulated plan: one row per (lane, stage), time on the x axis.

Forward, backward, recompute, all-to-all, pipeline send/recv and gradient sync are drawn in
distinct colours (and hatches, for readers who do not see colour), so bubbles, communication and
recompute can be read off directly.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from planner_service.simulator import SimulationResult
from proto import Plan

STYLE = {
    "F": ("#4C72B0", "", "forward"),
    "B": ("#55A868", "", "backward"),
    "W": ("#8DCB9C", "--", "weight gradients (after the send)"),
    "R": ("#DD8452", "//", "recompute"),
    "A2A": ("#8C8C8C", "..", "all-to-all"),
    "P2P": ("#C44E52", "xx", "pipeline send/recv"),
    "SYNC": ("#8172B3", "\\\\", "gradient sync"),
}
MAX_LABELLED_CHUNKS = 60


def draw_gantt(plan: Plan, result: SimulationResult, path: Path) -> Path:
    """Write the chart to `path` (format from the suffix) and return it."""
    rows = [(lane.lane_id, p) for lane in plan.lanes for p in range(plan.pipeline.num_stages)]
    row_of = {key: i for i, key in enumerate(rows)}
    height = min(0.35 * len(rows) + 2.0, 40.0)
    fig, ax = plt.subplots(figsize=(14, height))
    total_chunks = sum(len(lane.chunks) for lane in plan.lanes)
    for ev in result.events:
        color, hatch, _ = STYLE[ev.kind]
        y = row_of[(ev.lane_id, ev.stage)]
        ax.barh(
            y,
            ev.end_s - ev.start_s,
            left=ev.start_s,
            height=0.8,
            color=color,
            hatch=hatch,
            edgecolor="white",
            linewidth=0.3,
        )
        if total_chunks <= MAX_LABELLED_CHUNKS and ev.kind in ("F", "B") and ev.chunk >= 0:
            ax.text(
                (ev.start_s + ev.end_s) / 2,
                y,
                f"{ev.kind}{ev.chunk}",
                ha="center",
                va="center",
                fontsize=6,
                color="white",
            )
    labels = []
    for lane_id, p in rows:
        lane = plan.lanes[lane_id]
        ranks = lane.ranks[p]
        labels.append(f"lane {lane_id} (SP {lane.sp_degree}) stage {p}: r{ranks[0]}-{ranks[-1]}")
    ax.set_yticks(range(len(rows)), labels, fontsize=max(4, min(9, int(300 / max(len(rows), 1)))))
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    pred = plan.predicted
    ax.set_title(
        f"{plan.strategy}: {pred.iteration_s:.3f} s/iteration, {pred.iteration_s / pred.ideal_s:.2f}x ideal, "
        f"bubbles {pred.bubble_fraction:.0%}, P={plan.pipeline.num_stages}, {len(plan.lanes)} lanes"
        if pred.ideal_s > 0
        else plan.strategy
    )
    ax.axvline(pred.iteration_s, color="black", linestyle="--", linewidth=0.8)
    ax.legend(
        handles=[Patch(facecolor=c, hatch=h, label=label) for c, h, label in STYLE.values()],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=len(STYLE),
        fontsize=8,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
