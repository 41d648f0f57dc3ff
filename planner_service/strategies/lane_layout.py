"""Where a lane's devices sit: aligned power-of-two blocks at the same offset in every stage block."""

from __future__ import annotations

from proto import ClusterSpec, ModelSpec
from proto.validation import sp_degree_problem


def stage_block_size(cluster: ClusterSpec, num_stages: int) -> int:
    return cluster.num_devices // num_stages


def lane_ranks(*, offset: int, sp_degree: int, num_stages: int, cluster: ClusterSpec) -> list[list[int]]:
    """ranks[stage][sp_position] of the lane whose SP group starts at `offset` inside each stage block."""
    block = stage_block_size(cluster, num_stages)
    assert offset % sp_degree == 0 and offset + sp_degree <= block, (
        f"lane at offset {offset} with SP degree {sp_degree} is not aligned inside a stage block of {block}"
    )
    return [[p * block + offset + i for i in range(sp_degree)] for p in range(num_stages)]


def valid_sp_degrees(model: ModelSpec, max_degree: int) -> list[int]:
    """Powers of two up to `max_degree` that Ulysses attention can use on this model."""
    degrees, s = [], 1
    while s <= max_degree:
        if sp_degree_problem(s, model) is None:
            degrees.append(s)
        s *= 2
    return degrees


def valid_pipeline_degrees(cluster: ClusterSpec, model: ModelSpec) -> list[int]:
    """P values that divide the device count and do not exceed the layer count."""
    return [p for p in range(1, min(cluster.num_devices, model.num_layers) + 1) if cluster.num_devices % p == 0]
