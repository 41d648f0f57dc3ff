"""Every process group a job can need, created once at start-up in the same order on every rank.

For a pipeline degree P, stage p owns the block of ranks [p*N/P, (p+1)*N/P). Inside each block every
aligned power-of-two run of ranks is a possible SP group (a lane's group in some iteration), and the
whole block is the stage's data-parallel group. Plans change per iteration, groups never do: creating
communicators lazily mid-training hangs or leaks (DESIGN §9, §12). `dist.new_group` is collective over
the default group, so every rank calls it for every group, including groups it is not a member of.

The result is a frozen mapping (ranks tuple) -> group; there is no module-level "current group".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch.distributed as dist

log = logging.getLogger(__name__)

Ranks = tuple[int, ...]


def stage_block(world_size: int, num_stages: int, stage: int) -> Ranks:
    """The ranks that hold stage `stage` when `world_size` ranks run a `num_stages`-stage pipeline."""
    assert world_size % num_stages == 0, f"pipeline degree {num_stages} does not divide world size {world_size}"
    size = world_size // num_stages
    return tuple(range(stage * size, (stage + 1) * size))


def aligned_sp_groups(block: Ranks) -> list[Ranks]:
    """Every aligned power-of-two run inside a block, smallest first: size 1, 2, 4, ... at offsets k*size."""
    groups, size = [], 1
    while size <= len(block):
        groups += [block[off : off + size] for off in range(0, len(block) - size + 1, size)]
        size *= 2
    return groups


def planned_groups(world_size: int, pipeline_degrees: Iterable[int]) -> list[Ranks]:
    """The ranks of every group to create, deduplicated, in one deterministic order."""
    ordered: dict[Ranks, None] = {}
    for num_stages in sorted(set(pipeline_degrees)):
        for stage in range(num_stages):
            block = stage_block(world_size, num_stages, stage)
            for ranks in [*aligned_sp_groups(block), block]:
                ordered.setdefault(ranks, None)
    return list(ordered)


@dataclass(frozen=True)
class ProcessGroups:
    """Process groups by member ranks. Built by `create_process_groups`; read-only afterwards."""

    world_size: int
    rank: int
    groups: Mapping[Ranks, dist.ProcessGroup]

    def get(self, ranks: Iterable[int]) -> dist.ProcessGroup:
        key = tuple(ranks)
        if key not in self.groups:
            raise KeyError(
                f"no process group for ranks {list(key)}: groups are created at start-up only for aligned "
                "power-of-two SP groups and whole stage blocks of the configured pipeline degrees"
            )
        return self.groups[key]

    def dp_group(self, num_stages: int, stage: int) -> dist.ProcessGroup:
        """The data-parallel group of `stage`: its whole stage block."""
        return self.get(stage_block(self.world_size, num_stages, stage))


def create_process_groups(pipeline_degrees: Iterable[int] = (1,)) -> ProcessGroups:
    """Create all SP and DP groups for the given pipeline degrees (collective: call on every rank)."""
    assert dist.is_initialized(), "init_process_group must run before create_process_groups"
    world_size, rank = dist.get_world_size(), dist.get_rank()
    degrees = sorted(set(pipeline_degrees))
    for p in degrees:
        if p < 1 or world_size % p:
            raise ValueError(f"pipeline degree {p} does not divide the world size {world_size}")
    began = time.perf_counter()
    groups = {ranks: dist.new_group(list(ranks)) for ranks in planned_groups(world_size, degrees)}
    log.info("rank %d: created %d process groups in %.3f s", rank, len(groups), time.perf_counter() - began)
    return ProcessGroups(world_size=world_size, rank=rank, groups=MappingProxyType(groups))
