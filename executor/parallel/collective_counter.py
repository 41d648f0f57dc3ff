"""Count the collectives a rank issues, per process group, by intercepting the c10d ops below every caller.

The executor's own sync code and FSDP2 both end in `torch.ops.c10d.*`; a dispatch mode sees each call with
its process group, so a test can compare what really ran (kind, count, bytes) with what the cost model
prices, without instrumenting FSDP2 or trusting the code under test to report on itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

KINDS = {
    "allreduce_": "all_reduce",
    "_allgather_base_": "all_gather",
    "allgather_": "all_gather",
    "_reduce_scatter_base_": "reduce_scatter",
    "reduce_scatter_": "reduce_scatter",
}
"""c10d op name -> the collective kind the cost model names (other c10d ops, e.g. all-to-all, are ignored)."""


@dataclass
class CollectiveLog:
    """Counts and bytes per (group name, kind); bytes are unsharded sizes (all-gather output, others' input)."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    num_bytes: Counter[tuple[str, str]] = field(default_factory=Counter)

    def count(self, group: dist.ProcessGroup, kind: str) -> int:
        return self.counts[(group.group_name, kind)]

    def bytes_of(self, group: dist.ProcessGroup, kind: str) -> int:
        return self.num_bytes[(group.group_name, kind)]


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


class _CountingMode(TorchDispatchMode):
    def __init__(self, log: CollectiveLog) -> None:
        super().__init__()
        self.log = log

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kind = KINDS.get(func._schema.name.split("::")[-1]) if func.namespace == "c10d" else None
        if kind is not None:
            group = next(dist.ProcessGroup.unbox(a) for a in args if _is_group(a))
            key = (group.group_name, kind)
            self.log.counts[key] += 1
            # all-gather: the output (first argument) is the whole tensor; reduce-scatter: the input (second)
            whole = args[1] if kind == "reduce_scatter" else args[0]
            self.log.num_bytes[key] += _tensor_bytes(whole)
        return func(*args, **(kwargs or {}))


def _is_group(value: Any) -> bool:
    return isinstance(value, torch.ScriptObject) and "ProcessGroup" in str(value._type())


@contextmanager
def count_collectives() -> Iterator[CollectiveLog]:
    """Within the block, every all-reduce / all-gather / reduce-scatter this rank issues is logged."""
    log = CollectiveLog()
    with _CountingMode(log):
        yield log
