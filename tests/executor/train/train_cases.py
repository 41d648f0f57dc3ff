"""Helpers for the training tests: a small real-text corpus, in-process runs, and a plan source that changes
strategy every step. Module-level functions so spawned ranks can import them."""

from __future__ import annotations

import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from executor.train.config import TrainConfig
from executor.train.job_start import JobStart
from executor.train.plan_source import JobPlanning, SourcedPlan, plan_in_process
from executor.train.trainer import run_training
from proto import Batch, Feedback

CORPUS_PACKAGE = "json"
"""The standard library's json package: a handful of real source files of very different lengths."""


def write_stdlib_corpus(folder: Path, package: str = CORPUS_PACKAGE) -> Path:
    """Copy the .py files of one stdlib package into `folder` (a corpus of real text on every machine)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = Path(sysconfig.get_paths()["stdlib"]) / package
    for path in sorted(source.glob("*.py")):
        (folder / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


@dataclass
class CyclingPlanSource:
    """Plans step t with strategies[t % len] at the job's P: every step runs a differently shaped plan."""

    job: JobPlanning
    strategies: tuple[str, ...]
    fallbacks: int = 0

    def prefetch(self, step: int, batch: Batch) -> None:
        pass

    def plan(self, step: int, batch: Batch) -> SourcedPlan:
        from dataclasses import replace

        job = replace(self.job, strategy=self.strategies[step % len(self.strategies)])
        return SourcedPlan(plan_in_process(job, step, batch), "local")

    def send_feedback(self, feedback: Feedback) -> None:
        pass

    def close(self) -> None:
        pass


def train_rank(config: TrainConfig, strategies: tuple[str, ...] | None) -> dict[str, Any] | None:
    """One rank of a training run (cycling strategies when given); rank 0 returns the per-step records."""
    start = None
    if strategies is not None and dist.get_rank() == 0:
        assert config.stages is not None, "a cycling run needs a fixed P"
        job = JobPlanning(
            cluster=config.cluster,
            model=config.model,
            strategy=strategies[0],
            options=config.options,
            time_limit_s=config.time_limit_s,
            num_stages=config.stages,
        )
        start = JobStart(CyclingPlanSource(job, strategies), job, None, "fixed by the test")
    summary = run_training(config, job_start=start)
    if summary is None:
        return None
    return {"records": summary.records, "fallbacks": summary.fallbacks}


def final_parameters(checkpoint: Path, scratch: Path) -> dict[str, torch.Tensor]:
    """The whole model's parameters from a `helix train` checkpoint folder (every stage's DCP shards merged)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    merged = scratch / "merged.pt"
    dcp_to_torch_save(str(checkpoint), str(merged))
    return dict(torch.load(merged, weights_only=False)["model"])


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
