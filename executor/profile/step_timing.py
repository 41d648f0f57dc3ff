"""Whole training steps of given plans, timed and measured on the job's ranks: what predictions are checked against.

Each case (a batch and its plan) runs `warmup` untimed steps and `repeats` timed ones, as `helix train` times a
step: every rank starts behind a barrier, the step is forward/backward of the rank's ops, gradient sync, loss
all-reduce and the optimizer step, and its time is the slowest rank's. Peak memory per rank is the model states
(parameters, gradients, optimizer state) plus the step's measured activation peak on CPU (the activation probe),
or the allocator's peak on CUDA — the quantity `Predicted.peak_memory_bytes` less the profile's reserve describes.
Cases with the same pipeline split share one executor (one copy of the weights), so many plans run in one launch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from executor.parallel.groups import create_process_groups
from executor.profile.grid import PARAM_DTYPES
from executor.profile.timing import pin_to_core
from executor.runner import ExecutorConfig, PlanExecutor
from executor.verify.synthetic_tokens import SyntheticTokens
from proto.batch import Batch
from proto.cluster import ClusterSpec
from proto.model import ModelSpec
from proto.plan import Plan


@dataclass(frozen=True, kw_only=True)
class PlanCase:
    key: str
    """The caller's label (e.g. 'batch 3 / helix')."""
    batch: Batch
    plan: Plan
    token_seed: int = 0


@dataclass(frozen=True, kw_only=True)
class StepTimingSettings:
    warmup: int = 1
    repeats: int = 3
    dtype: str = "float32"
    """'bfloat16': bf16 autocast over float32 weights (CUDA), as `helix train` runs it."""
    device: str = "cpu"
    attention_backend: str = "auto"
    seed: int = 0
    pin_cores: bool = False


@dataclass(frozen=True)
class StepTiming:
    key: str
    plan_id: str
    seconds: tuple[float, ...]
    """Each timed step: the slowest rank's seconds (callers pick the statistic, e.g. `timing.summarize`)."""
    peak_memory_bytes: tuple[float, ...]
    """Per rank (index = rank), the largest over the timed steps."""
    loss: float


def time_plans(
    cluster: ClusterSpec, model: ModelSpec, cases: Sequence[PlanCase], settings: StepTimingSettings
) -> list[StepTiming] | None:
    """Run every case on this rank (collective: call on every rank with the same cases); rank 0 gets the timings.

    The cases run round-robin — pass 1 runs every case once, then pass 2, ... — so a burst of load from elsewhere
    on the machine slows every case a little rather than one case a lot, and comparisons between cases stay fair.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    if settings.pin_cores and settings.device == "cpu":
        pin_to_core(rank, world)
    groups = create_process_groups(cluster, {case.plan.pipeline.num_stages for case in cases})
    config = ExecutorConfig(
        seed=settings.seed,
        dtype=PARAM_DTYPES[settings.dtype],
        device=settings.device,
        attention_backend=settings.attention_backend,
    )
    executors: dict[tuple[tuple[int, int], ...], PlanExecutor] = {}
    for case in cases:
        key = _split_of(case.plan)
        if key not in executors:
            executors[key] = PlanExecutor(
                model=model, cluster=cluster, pipeline=case.plan.pipeline, groups=groups, config=config
            )
    seconds: list[list[float]] = [[] for _ in cases]
    peaks = [[0.0] * world for _ in cases]
    losses = [0.0] * len(cases)
    for index in range(settings.warmup + settings.repeats):
        for i, case in enumerate(cases):
            executor = executors[_split_of(case.plan)]
            elapsed, memory, loss = _one_step(executor, case, settings)
            if index >= settings.warmup:
                seconds[i].append(elapsed)
                peaks[i] = [max(p, m) for p, m in zip(peaks[i], memory, strict=True)]
                losses[i] = loss
    if rank != 0:
        return None
    return [
        StepTiming(case.key, case.plan.plan_id, tuple(seconds[i]), tuple(peaks[i]), losses[i])
        for i, case in enumerate(cases)
    ]


def _one_step(executor: PlanExecutor, case: PlanCase, settings: StepTimingSettings) -> tuple[float, list[float], float]:
    """One training step of the case: (slowest rank's seconds, every rank's peak bytes, loss)."""
    tokens = SyntheticTokens(seed=case.token_seed, vocab_size=executor.model_spec.vocab_size)
    if settings.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    dist.barrier()
    began = time.perf_counter()
    with _autocast(settings):
        result = executor.forward_backward(case.plan, case.batch, tokens=tokens)
    executor.optimizer_step()
    if settings.device == "cuda":
        torch.cuda.synchronize()
    elapsed = torch.tensor([time.perf_counter() - began], dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    memory = torch.tensor([_peak_bytes(executor, result.peak_activation_bytes, settings.device)])
    every = [torch.zeros_like(memory) for _ in range(dist.get_world_size())]
    dist.all_gather(every, memory)
    return float(elapsed.item()), [float(m.item()) for m in every], result.loss


def _autocast(settings: StepTimingSettings) -> contextlib.AbstractContextManager[object]:
    if settings.dtype != "bfloat16":
        return contextlib.nullcontext()
    return torch.autocast(settings.device, dtype=torch.bfloat16)


def model_state_bytes(executor: PlanExecutor) -> float:
    """Bytes of this rank's parameters, gradients and optimizer state."""
    params = list(executor.module.parameters())
    total = sum(p.numel() * p.element_size() for p in params)
    total += sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    for values in executor.optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in values.values() if isinstance(v, torch.Tensor))
    return float(total)


def _peak_bytes(executor: PlanExecutor, activation_peak: int, device: str) -> float:
    if device == "cuda":
        return float(torch.cuda.max_memory_allocated())
    return model_state_bytes(executor) + activation_peak


def _split_of(plan: Plan) -> tuple[tuple[int, int], ...]:
    """The plan's pipeline split: cases with the same one share an executor."""
    return tuple((a, b) for a, b in plan.pipeline.layer_ranges)
