"""The collectives plans use, timed on this rank while every group of the same shape runs the same collective.

- Ulysses: the executor's exchange of one layer's forward (`UlyssesAttention` with the attention itself left out:
  q/k/v to head-sharded, the output back, K/V heads replicated when fewer than the SP degree), per SP degree the
  model allows, on the aligned groups (inside a node up to the node size, across nodes above it);
- pipeline send/recv of a chunk's activations between ranks one apart (same node) and one node apart;
- the data-parallel gradient reductions (all-reduce, and reduce-scatter where the backend has it) per aligned
  group size, on fp32 buffers (`PlanOptions.grad_reduce_dtype` defaults to fp32 for 16-bit models).

Each rank returns rows for the groups it belongs to; `measure.merge_collectives` keeps the slowest member.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from executor.parallel.groups import ProcessGroups
from executor.parallel.ulysses import UlyssesAttention
from executor.profile.grid import ProfileSettings
from executor.profile.timing import repeated_seconds
from proto.cluster import ClusterSpec
from proto.model import ModelSpec
from proto.topology import Topology, valid_sp_degrees

REDUCE_DTYPE = torch.float32
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
"""torch 2.13 renames reduce_scatter_tensor (same arguments: output, input, group)."""


@dataclass(frozen=True, kw_only=True)
class _ExchangeOnly(UlyssesAttention):
    """The Ulysses layer exchange with the attention replaced by passing the queries through."""

    def _attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return q


@dataclass(frozen=True, slots=True)
class Placement:
    per_node: int
    nodes: int


def placement(ranks: tuple[int, ...], cluster: ClusterSpec) -> Placement:
    nodes = {cluster.node_of(r) for r in ranks}
    return Placement(per_node=math.ceil(len(ranks) / len(nodes)), nodes=len(nodes))


class CollectiveBench:
    """Rows of `CollectiveTiming` fields (as dicts) for this rank's groups."""

    def __init__(
        self,
        cluster: ClusterSpec,
        model: ModelSpec,
        settings: ProfileSettings,
        groups: ProcessGroups,
        activation_dtype: torch.dtype,
    ) -> None:
        self.cluster, self.model, self.settings, self.groups = cluster, model, settings, groups
        self.dtype = activation_dtype
        self.device = torch.device(settings.device)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.topology = Topology.of(cluster, 1)

    def _time(self, call: object) -> float:
        assert callable(call)
        s = self.settings
        return repeated_seconds(call, device=s.device, warmup=s.warmup, repeats=s.repeats, statistic=s.statistic)

    def _my_group(self, size: int) -> tuple[int, ...]:
        start = self.rank - self.rank % size
        return tuple(range(start, start + size))

    def ulysses(self) -> list[dict[str, object]]:
        from planner_service.cost_model.comm_model import ulysses_layer_bytes

        m = self.model
        sized = m.model_copy(update={"bytes_per_element": torch.tensor([], dtype=self.dtype).element_size()})
        rows: list[dict[str, object]] = []
        for s in valid_sp_degrees(m, self.world):
            if s == 1 or self.world % s:
                continue
            ranks = self._my_group(s)
            where = placement(ranks, self.cluster)
            exchange = _ExchangeOnly(group=self.groups.get(ranks), sp_degree=s, cu_seqlens=[0])
            for tokens in self.settings.grid.exchange_tokens:
                shard = math.ceil(tokens / s)
                q = torch.randn(shard, m.num_heads, m.head_dim, dtype=self.dtype, device=self.device)
                k = torch.randn(shard, m.num_kv_heads, m.head_dim, dtype=self.dtype, device=self.device)
                with torch.no_grad():
                    seconds = self._time(lambda q=q, k=k, exchange=exchange: exchange(0, q, k, k))
                rows.append(
                    {
                        "kind": "ulysses_layer",
                        "group_size": s,
                        "per_node": where.per_node,
                        "nodes": where.nodes,
                        "num_tokens": tokens,
                        "num_bytes": sum(ulysses_layer_bytes(sized, num_tokens=tokens, sp_degree=s)),
                        "seconds": seconds,
                    }
                )
        return rows

    def p2p(self) -> list[dict[str, object]]:
        """Ping-pong between rank r and r xor stride (one-way time = half the round trip), every pair at once."""
        rows: list[dict[str, object]] = []
        dpn = self.cluster.devices_per_node
        strides = [stride for stride in (1, dpn) if stride < self.world and (stride > 1 or dpn > 1)]
        for stride in sorted(set(strides)):
            partner = self.rank ^ stride
            for tokens in self.settings.grid.exchange_tokens:
                buf = torch.zeros(tokens, self.model.hidden_size, dtype=self.dtype, device=self.device)
                if partner >= self.world:
                    self._time(lambda: None)  # keep the barriers matched
                    continue

                def ping_pong(buf: torch.Tensor = buf, partner: int = partner) -> None:
                    first, second = (dist.isend, dist.irecv) if self.rank < partner else (dist.irecv, dist.isend)
                    for op in (first, second):
                        work = op(buf, partner)
                        assert work is not None, "point-to-point ops outside a coalescing block return a handle"
                        work.wait()

                where = placement((self.rank, partner), self.cluster)
                rows.append(
                    {
                        "kind": "p2p",
                        "group_size": 2,
                        "per_node": where.per_node,
                        "nodes": where.nodes,
                        "num_tokens": tokens,
                        "num_bytes": float(buf.numel() * buf.element_size()),
                        "seconds": self._time(ping_pong) / 2,
                    }
                )
        return rows

    def reductions(self) -> tuple[list[dict[str, object]], list[str]]:
        """All-reduce and reduce-scatter per aligned group size; notes for what the backend cannot do."""
        rows: list[dict[str, object]] = []
        notes: list[str] = []
        size = 2
        scatter_ok = True
        while size <= self.world:
            if self.world % size == 0:
                ranks = self._my_group(size)
                group = self.groups.get(ranks)
                where = placement(ranks, self.cluster)
                for nbytes in self.settings.grid.reduce_bytes:
                    numel = max(size, nbytes // 4 // size * size)
                    buf = torch.ones(numel, dtype=REDUCE_DTYPE, device=self.device)
                    out = torch.empty(numel // size, dtype=REDUCE_DTYPE, device=self.device)
                    kinds: list[tuple[str, Callable[[], object]]] = [
                        ("all_reduce", functools.partial(dist.all_reduce, buf, group=group))
                    ]
                    if scatter_ok:
                        kinds.append(("reduce_scatter", functools.partial(_reduce_scatter, out, buf, group=group)))
                    for kind, call in kinds:
                        try:
                            seconds = self._time(call)
                        except (RuntimeError, NotImplementedError) as exc:
                            scatter_ok = False
                            notes.append(f"{kind} not measured: the {dist.get_backend()} backend refused it ({exc})")
                            continue
                        rows.append(
                            {
                                "kind": kind,
                                "group_size": size,
                                "per_node": where.per_node,
                                "nodes": where.nodes,
                                "num_bytes": float(numel * 4),
                                "seconds": seconds,
                            }
                        )
            size *= 2
        return rows, notes
