"""Timing primitives of the profiler: a synchronised clock, a statistic over repeats, ranks pinned to cores.

Every measurement is a statistic over `repeats` calls after `warmup` untimed ones: the median, or on a machine
shared with other work the minimum (load from elsewhere only ever adds time, so the fastest repeat is the best
estimate of the undisturbed call — timeit's rationale); on CUDA the clock waits for the
device (`torch.cuda.synchronize`) so a kernel's time is not mistaken for its launch. `aligned` calls run behind a
barrier, so every rank measures while the others do the same work: the concurrency of a training step.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.distributed as dist


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Seconds between `start()` and `stop()`, with the device synchronised at both ends."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._began = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self._began = time.perf_counter()

    def stop(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self._began


def aligned() -> None:
    """Wait until every rank is here (when running distributed)."""
    if dist.is_initialized():
        dist.barrier()


Statistic = Literal["median", "min"]
STATISTICS: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "min": min}


def summarize(times: list[float], statistic: Statistic) -> float:
    return STATISTICS[statistic](times)


def repeated_seconds(
    call: Callable[[], object],
    *,
    device: str,
    warmup: int,
    repeats: int,
    statistic: Statistic = "median",
    align: bool = True,
) -> float:
    """`statistic` of the seconds of `call()` over `repeats` timed calls after `warmup` untimed ones."""
    clock = Clock(device)
    times = []
    for i in range(warmup + repeats):
        if align:
            aligned()
        clock.start()
        call()
        elapsed = clock.stop()
        if i >= warmup:
            times.append(elapsed)
    return summarize(times, statistic)


def pin_to_core(rank: int, world_size: int) -> str:
    """Pin this process to one of the cores it may use, contiguous ranks together; describe the mapping.

    With more ranks than cores, ranks r*C//W share core r (C cores, W ranks): a block of contiguous ranks — a
    node of a CPU cluster preset, and a pipeline stage's block of devices — shares one core. Every busy rank then
    gets the same share of a core whether the whole step or one stage of a pipeline is running (its fill and
    drain), as in the profile, which measures all ranks busy. Round-robin pinning (r mod C) put the two stages of a
    pipeline on every core, so a stage running alone in the fill ran at twice the profiled speed."""
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[core_index(rank, world_size, len(cores))]})
    blocks = max(world_size, len(cores))
    return f"rank r -> core {cores} [r * {len(cores)} // {blocks}] (pinned, contiguous ranks share a core)"


def core_index(rank: int, world_size: int, num_cores: int) -> int:
    """Index of rank `rank`'s core among `num_cores`: blocks of contiguous ranks, one block per core (one rank per
    core when there are at least as many cores as ranks)."""
    if not 0 <= rank < world_size or num_cores < 1:
        raise ValueError(f"rank {rank} of {world_size} ranks on {num_cores} cores")
    return rank * num_cores // max(world_size, num_cores)


def ranks_per_core(world_size: int, num_cores: int) -> int:
    """How many pinned ranks time-share each core under `pin_to_core`: W // C when W ranks fill C cores in equal
    contiguous blocks; 1 when every rank has a core of its own, or when the blocks are unequal (W not a multiple
    of C), where no single sharing factor describes every rank."""
    if num_cores < 1 or world_size <= num_cores or world_size % num_cores:
        return 1
    return world_size // num_cores


def cores_description(world_size: int, threads: int, pinned: str | None) -> str:
    """How ranks share cores: pinned, or left to the OS scheduler."""
    cores = len(os.sched_getaffinity(0)) if pinned is None else None
    if pinned is not None:
        return f"{world_size} ranks x {threads} thread(s): {pinned}"
    return f"{world_size} ranks x {threads} thread(s) on {cores} core(s), scheduled by the OS (not pinned)"
