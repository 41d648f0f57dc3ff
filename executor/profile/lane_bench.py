"""One transformer layer run as a lane of each SP degree runs it, timed while every lane of that degree does the same.

The grid's layer rows are one device on its own (SP degree 1): the cost model divides their work by s for a lane
of s devices and prices the all-to-alls apart. How far a real lane departs from that split depends on the degree
(per-device GEMMs shrink with s, heads per device change the attention kernel's efficiency, the s ranks wait for
one another at every all-to-all), so here the executor's own `Block` runs under `UlyssesAttention` on the aligned
groups of each degree the model allows, one whole sequence of `num_tokens` split over the lane, all lanes at
once. `profile_fit` turns the rows into `CostProfile.sp_degree_costs`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from executor.model import rope_cos_sin
from executor.parallel.groups import ProcessGroups
from executor.parallel.ulysses import UlyssesAttention
from executor.profile.collective_bench import placement
from executor.profile.layer_bench import LayerBench, autocast
from proto.cluster import ClusterSpec
from proto.topology import valid_sp_degrees


def lane_degrees(bench: LayerBench, world: int) -> list[int]:
    """SP degrees measured: those the model allows that divide the world (aligned groups tile the ranks)."""
    return [s for s in valid_sp_degrees(bench.model, world) if world % s == 0]


def lane_rows(bench: LayerBench, cluster: ClusterSpec, groups: ProcessGroups | None) -> list[dict[str, Any]]:
    """Rows of `LaneLayerTiming` fields (as dicts) for this rank: every degree, every grid sequence length that
    splits evenly over it and fits the grid's key limit. Collective: every rank runs the same calls in order."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    grid, m = bench.settings.grid, bench.model
    rows: list[dict[str, Any]] = []
    for s in lane_degrees(bench, world):
        start = rank - rank % s
        ranks = tuple(range(start, start + s))
        group = groups.get(ranks) if s > 1 and groups is not None else None  # world > 1 whenever s > 1
        where = placement(ranks, cluster)
        for tokens in grid.lane_tokens:
            if tokens % s or tokens > grid.max_keys:
                continue
            shard = tokens // s
            x = bench.randn(shard, m.hidden_size, grad=True)
            positions = torch.arange((rank - start) * shard, (rank - start + 1) * shard, device=bench.device)
            cos, sin = rope_cos_sin(positions, m.head_dim, m.rope_theta, x.dtype)
            attend = UlyssesAttention(group=group, sp_degree=s, cu_seqlens=[0, tokens], backend=bench.backend)
            grad = torch.ones(shard, m.hidden_size, device=bench.device, dtype=bench.dtype)

            def forward(x: torch.Tensor = x, cos: torch.Tensor = cos, sin: torch.Tensor = sin,
                        attend: UlyssesAttention = attend) -> torch.Tensor:  # fmt: skip
                with autocast(bench.settings):
                    return bench.block(x, cos, sin, attend)  # type: ignore[no-any-return]

            def backward(y: torch.Tensor, x: torch.Tensor = x, grad: torch.Tensor = grad) -> None:
                y.backward(grad.to(y.dtype))
                bench.block.zero_grad(set_to_none=True)
                x.grad = None

            forward_s, backward_s = bench.forward_backward_seconds(forward, backward)
            rows.append(
                {
                    "sp_degree": s,
                    "per_node": where.per_node,
                    "nodes": where.nodes,
                    "num_tokens": tokens,
                    "forward_s": forward_s,
                    "backward_s": backward_s,
                }
            )
    return rows


def merge_lanes(per_rank: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per (degree, tokens): a lane lasts as long as its slowest member; across the lanes of a degree, the median
    lane (like the grid's rows, the median over ranks)."""
    by_key: dict[tuple[int, int], dict[tuple[int, ...], list[dict[str, Any]]]] = {}
    for rank, rows in enumerate(per_rank):
        for row in rows:
            s = row["sp_degree"]
            lane = tuple(range(rank - rank % s, rank - rank % s + s))
            by_key.setdefault((s, row["num_tokens"]), {}).setdefault(lane, []).append(row)
    merged = []
    for _, lanes in sorted(by_key.items()):
        slowest = [
            {**members[0], "forward_s": max(r["forward_s"] for r in members),
             "backward_s": max(r["backward_s"] for r in members)}
            for members in lanes.values()
        ]  # fmt: skip
        slowest.sort(key=lambda r: r["forward_s"] + r["backward_s"])
        merged.append(slowest[(len(slowest) - 1) // 2])
    return merged
