"""Launch a function on N local CPU ranks with gloo, through torch's elastic launcher (torchrun's engine).

`launch_local(fn, args, world_size=N)` runs `fn(*args)` on every rank after `init_process_group("gloo")`
and returns {rank: return value}. `fn` must be importable by module path (the workers are spawned).
Return values travel through pickling: keep them small plain Python; write tensors to files.
"""

from __future__ import annotations

import datetime
import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

log = logging.getLogger(__name__)


def launch_local(
    fn: Callable[..., Any],
    args: tuple[Any, ...] = (),
    *,
    world_size: int,
    collective_timeout_s: float = 300.0,
    threads_per_rank: int = 1,
) -> dict[int, Any]:
    """Run `fn(*args)` on `world_size` spawned gloo ranks of this machine; {rank: result}.

    A failing rank raises `torch.distributed.elastic.multiprocessing.errors.ChildFailedError` here.
    Collectives that wait longer than `collective_timeout_s` fail instead of hanging.
    """
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=world_size,
        run_id=f"helix-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.05,
        start_method="spawn",
    )
    # Workers inherit the environment; one thread each keeps N ranks from fighting over few cores.
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads_per_rank)
    try:
        results = elastic_launch(config, _worker)(fn, args, collective_timeout_s, threads_per_rank)
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    return dict(sorted(results.items()))


def _worker(fn: Callable[..., Any], args: tuple[Any, ...], timeout_s: float, threads: int) -> Any:
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
    try:
        return fn(*args)
    finally:
        dist.destroy_process_group()
