"""Every process group a job can need, created once at start-up in the same order on every rank.

For a pipeline degree P, stage p owns the block of ranks [p*N/P, (p+1)*N/P). Inside each block every
aligned power-of-two run of ranks is a possible SP group (a lane's group in some iteration), and the
whole block is the stage's data-parallel group (with a 1-D device mesh over it for FSDP2, on its members).
For P > 1, the rank at position i of the first block and the rank at position i of the last block form a
pair that sums the tied embedding's gradient. Plans change per iteration, groups never do: creating
communicators lazily mid-training hangs or leaks (DESIGN §9, §12). `dist.new_group` is collective over
the default group, so every rank calls it for every group, including groups it is not a member of.

The result is a frozen mapping (ranks tuple) -> group; there is no module-level "current group".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

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
        for pair in tied_pairs(topology):
            ordered.setdefault(pair, None)
    return list(ordered)


def tied_pairs(topology: Topology) -> list[Ranks]:
    """(first-stage rank, last-stage rank) at each block position: the holders of a tied embedding (P > 1)."""
    if topology.num_stages == 1:
        return []
    first, last = topology.stage_block(0), topology.stage_block(topology.num_stages - 1)
    return [(a, b) for a, b in zip(first, last, strict=True)]


@dataclass(frozen=True)
class ProcessGroups:
    """Process groups by member ranks. Built by `create_process_groups`; read-only afterwards."""

    world_size: int
    rank: int
    groups: Mapping[Ranks, dist.ProcessGroup]
    topologies: Mapping[int, Topology]
    """The topology of every configured pipeline degree, by P."""
    meshes: Mapping[Ranks, Any] = field(default_factory=lambda: MappingProxyType({}))
    """1-D `DeviceMesh` over each stage block this rank belongs to (FSDP2's group), by the block's ranks."""

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

    def dp_mesh(self, num_stages: int, stage: int) -> Any:
        """The device mesh over `stage`'s block (this rank must be in it)."""
        return self.meshes[self.topology(num_stages).stage_block(stage)]

    def tie_group(self, num_stages: int, rank: int) -> dist.ProcessGroup | None:
        """The pair group summing the tied embedding's gradient that `rank` belongs to (None if it holds none)."""
        pair = next((p for p in tied_pairs(self.topology(num_stages)) if rank in p), None)
        return self.get(pair) if pair is not None else None


def create_process_groups(cluster: ClusterSpec, pipeline_degrees: Iterable[int] = (1,)) -> ProcessGroups:
    """Create all SP and DP groups for the given pipeline degrees (collective: call on every rank)."""
    assert dist.is_initialized(), "init_process_group must run before create_process_groups"
    world_size, rank = dist.get_world_size(), dist.get_rank()
    if cluster.num_devices != world_size:
        raise ValueError(f"cluster {cluster.name} has {cluster.num_devices} devices but the world size is {world_size}")
    topologies = {p: Topology.of(cluster, p) for p in sorted(set(pipeline_degrees))}
    began = time.perf_counter()
    groups = {ranks: dist.new_group(list(ranks)) for ranks in planned_groups(topologies.values())}
    meshes = {
        block: _mesh(groups[block])
        for topology in topologies.values()
        for block in (topology.stage_block(stage) for stage in range(topology.num_stages))
        if rank in block
    }
    log.info("rank %d: created %d process groups in %.3f s", rank, len(groups), time.perf_counter() - began)
    return ProcessGroups(
        world_size=world_size,
        rank=rank,
        groups=MappingProxyType(groups),
        topologies=MappingProxyType(topologies),
        meshes=MappingProxyType(meshes),
    )


def _mesh(group: dist.ProcessGroup) -> Any:
    """A 1-D device mesh over an existing group (no new communicator), on this backend's device type."""
    from torch.distributed.device_mesh import DeviceMesh

    device_type = "cuda" if dist.get_backend(group) == "nccl" else "cpu"
    return DeviceMesh.from_group(group, device_type)
