"""Per-step metrics of a training run: one JSON object per line, and a PNG of loss and step time at the end."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

REQUIRED_FIELDS = ("step", "loss", "tokens", "plan_source", "predicted_s", "measured_s", "strategy")


@dataclass(frozen=True, kw_only=True, slots=True)
class StepRecord:
    """What one training step did; written as one line of the run's metrics JSONL."""

    step: int
    loss: float
    tokens: int
    """Tokens of the global batch."""
    plan_source: str
    """'service', 'fallback' (planned in-process because the service failed) or 'local' (--planner local)."""
    predicted_s: float
    """The plan's predicted iteration seconds."""
    measured_s: float
    """Wall seconds of the step (forward, backward, sync, optimizer), max over ranks."""
    strategy: str
    plan_id: str
    num_stages: int
    num_lanes: int
    lr: float
    grad_norm: float
    tokens_per_s: float
    peak_memory_bytes: list[float]
    """Measured per rank (index = rank): the allocator's peak on CUDA; on CPU model states plus the tensors held for
    backward, without ops' working memory (`Feedback.peak_memory_source`)."""
    predicted_peak_memory_bytes: list[float]
    """The plan's prediction, reserve and op working memory included (on CPU an upper bound of the measurement)."""
    plan_wait_s: float
    """Seconds the step waited for its plan (0 when prefetched in time)."""
    iteration_wall_s: float
    """Rank 0's wall seconds for the whole iteration: getting the plan, broadcasting it, the step, metrics."""
    fallback_reason: str = ""


class MetricsWriter:
    """Appends `StepRecord`s to a JSONL file, flushed per line so a crash loses at most the current step."""

    def __init__(self, path: Path, *, append: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh: IO[str] = open(path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115 - held open

    def write(self, record: StepRecord) -> None:
        self._fh.write(json.dumps(asdict(record), allow_nan=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file, one per step (a resumed run's repeated steps: the last one wins)."""
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def plot_run(records: list[dict[str, Any]], out: Path, *, title: str) -> None:
    """Loss, and measured vs predicted step time, against steps (two panels, one PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, (ax_loss, ax_time) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax_loss.plot(steps, [r["loss"] for r in records], color="tab:blue")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(title)
    ax_loss.grid(alpha=0.3)
    ax_time.plot(steps, [r["measured_s"] for r in records], label="measured", color="tab:green")
    ax_time.plot(steps, [r["predicted_s"] for r in records], label="predicted", color="tab:orange", linestyle="--")
    fallback = [r["step"] for r in records if r["plan_source"] == "fallback"]
    if fallback:
        ymax = max(r["measured_s"] for r in records)
        ax_time.scatter(fallback, [ymax] * len(fallback), marker="x", color="tab:red", label="fallback plan")
    ax_time.set_xlabel("step")
    ax_time.set_ylabel("seconds per step")
    ax_time.grid(alpha=0.3)
    ax_time.legend(loc="upper right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
