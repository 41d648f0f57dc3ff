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

from proto.cluster import ClusterSpec
from proto.topology import Ranks, Topology

log = logging.getLogger(__name__)


def planned_groups(topologies: Iterable[Topology]) -> list[Ranks]:
    """The ranks of every group to create, deduplicated, in one deterministic order (by pipeline degree)."""
    ordered: dict[Ranks, None] = {}
    for topology in sorted(topologies, key=lambda t: t.num_stages):
        for stage in range(topology.num_stages):
            for ranks in [*topology.aligned_sp_groups(stage), topology.stage_block(stage)]:
                ordered.setdefault(ranks, None)
    return list(ordered)


@dataclass(frozen=True)
class ProcessGroups:
    """Process groups by member ranks. Built by `create_process_groups`; read-only afterwards."""

    world_size: int
    rank: int
    groups: Mapping[Ranks, dist.ProcessGroup]
    topologies: Mapping[int, Topology]
    """The topology of every configured pipeline degree, by P."""

    def get(self, ranks: Iterable[int]) -> dist.ProcessGroup:
        key = tuple(ranks)
        if key not in self.groups:
            raise KeyError(
                f"no process group for ranks {list(key)}: groups are created at start-up only for aligned "
                "power-of-two SP groups and whole stage blocks of the configured pipeline degrees"
            )
        return self.groups[key]

    def topology(self, num_stages: int) -> Topology:
        if num_stages not in self.topologies:
            raise KeyError(
                f"pipeline degree {num_stages} was not configured at start-up (configured: {sorted(self.topologies)})"
            )
        return self.topologies[num_stages]

    def dp_group(self, num_stages: int, stage: int) -> dist.ProcessGroup:
        """The data-parallel group of `stage`: its whole stage block."""
        return self.get(self.topology(num_stages).stage_block(stage))


def create_process_groups(cluster: ClusterSpec, pipeline_degrees: Iterable[int] = (1,)) -> ProcessGroups:
    """Create all SP and DP groups for the given pipeline degrees (collective: call on every rank)."""
    assert dist.is_initialized(), "init_process_group must run before create_process_groups"
    world_size, rank = dist.get_world_size(), dist.get_rank()
    if cluster.num_devices != world_size:
        raise ValueError(f"cluster {cluster.name} has {cluster.num_devices} devices but the world size is {world_size}")
    topologies = {p: Topology.of(cluster, p) for p in sorted(set(pipeline_degrees))}
    began = time.perf_counter()
    groups = {ranks: dist.new_group(list(ranks)) for ranks in planned_groups(topologies.values())}
    log.info("rank %d: created %d process groups in %.3f s", rank, len(groups), time.perf_counter() - began)
    return ProcessGroups(
        world_size=world_size, rank=rank, groups=MappingProxyType(groups), topologies=MappingProxyType(topologies)
    )
