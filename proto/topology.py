"""Where ranks sit: one validated object that every layer asks instead of re-deriving the layout.

N ranks in nodes of `devices_per_node`, cut into P stage blocks (DESIGN §3):
- stage p owns the block of ranks [p·N/P, (p+1)·N/P); every rank of a block holds the same layers, so the
  block is also the stage's data-parallel group;
- a lane of SP degree s uses the aligned run [offset, offset + s) of every block (offset a multiple of s);
- SP degrees are powers of two that Ulysses attention can use on the model's heads;
- pipeline-degree candidates divide N and do not exceed the layer count.

The planner (lane layout, cost model, strategies, job-level choice of P), `validate_plan` and the
executor (process groups, roles) all read these facts from here, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from proto.cluster import ClusterSpec
from proto.model import ModelSpec

Ranks = tuple[int, ...]


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def sp_degree_problem(sp_degree: int, model: ModelSpec) -> str | None:
    """Why an SP degree cannot run Ulysses attention on this model, or None when it can."""
    if not is_power_of_two(sp_degree):
        return f"SP degree {sp_degree} is not a power of two"
    if model.num_heads % sp_degree != 0:
        return f"SP degree {sp_degree} does not divide num_heads ({model.num_heads})"
    if model.num_kv_heads % sp_degree != 0 and sp_degree % model.num_kv_heads != 0:
        return f"SP degree {sp_degree} and num_kv_heads ({model.num_kv_heads}) do not divide one another"
    return None


def valid_sp_degrees(model: ModelSpec, max_degree: int) -> list[int]:
    """Powers of two up to `max_degree` that Ulysses attention can use on this model, smallest first."""
    degrees, s = [], 1
    while s <= max_degree:
        if sp_degree_problem(s, model) is None:
            degrees.append(s)
        s *= 2
    return degrees


def pipeline_degree_candidates(
    num_devices: int, num_layers: int, *, powers_of_two: bool = True, max_degree: int | None = None
) -> list[int]:
    """Pipeline degrees P that divide `num_devices` and do not exceed `num_layers` (nor `max_degree`), ascending.

    `powers_of_two=False` also admits degrees such as 3 or 6 (used only where a caller falls back to them).
    """
    top = min(num_devices, num_layers, max_degree if max_degree is not None else num_devices)
    return [p for p in range(1, top + 1) if num_devices % p == 0 and (is_power_of_two(p) or not powers_of_two)]


@dataclass(frozen=True, kw_only=True, slots=True)
class Topology:
    """N ranks in nodes of `devices_per_node`, as a `num_stages`-stage pipeline of stage blocks."""

    num_devices: int
    """World size N."""
    devices_per_node: int
    """Ranks per node; node of a rank = rank // devices_per_node."""
    num_stages: int
    """Pipeline degree P; must divide N."""

    def __post_init__(self) -> None:
        if self.num_devices < 1:
            raise ValueError(f"num_devices ({self.num_devices}) must be at least 1")
        if self.devices_per_node < 1:
            raise ValueError(f"devices_per_node ({self.devices_per_node}) must be at least 1")
        if self.num_stages < 1 or self.num_devices % self.num_stages:
            raise ValueError(
                f"pipeline degree P ({self.num_stages}) must be at least 1 and divide the {self.num_devices} devices"
            )

    @classmethod
    def of(cls, cluster: ClusterSpec, num_stages: int) -> Topology:
        return cls(num_devices=cluster.num_devices, devices_per_node=cluster.devices_per_node, num_stages=num_stages)

    # --- stage blocks ---------------------------------------------------------------------------------------
    @property
    def stage_block_size(self) -> int:
        """Ranks per stage block, N/P: also the data-parallel degree of every stage."""
        return self.num_devices // self.num_stages

    def stage_block(self, stage: int) -> Ranks:
        """The ranks holding stage `stage` (its data-parallel group)."""
        assert 0 <= stage < self.num_stages, f"stage {stage} is not in [0, {self.num_stages})"
        size = self.stage_block_size
        return tuple(range(stage * size, (stage + 1) * size))

    def stage_of(self, rank: int) -> int:
        assert 0 <= rank < self.num_devices, f"rank {rank} is not in [0, {self.num_devices})"
        return rank // self.stage_block_size

    def node_of(self, rank: int) -> int:
        return rank // self.devices_per_node

    def nodes_of_stage(self, stage: int) -> int:
        """How many nodes the stage block spans."""
        return len({self.node_of(r) for r in self.stage_block(stage)})

    # --- lanes and SP groups ------------------------------------------------------------------------------
    def lane_ranks(self, *, offset: int, sp_degree: int) -> list[list[int]]:
        """ranks[stage][sp_position] of the lane whose SP group starts at `offset` inside every stage block."""
        block = self.stage_block_size
        assert offset % sp_degree == 0 and offset + sp_degree <= block, (
            f"lane at offset {offset} with SP degree {sp_degree} is not aligned inside a stage block of {block}"
        )
        return [[p * block + offset + i for i in range(sp_degree)] for p in range(self.num_stages)]

    def is_aligned_group(self, stage: int, ranks: list[int] | Ranks) -> bool:
        """True when `ranks` are consecutive, of power-of-two size, aligned to that size inside `stage`'s block."""
        s = len(ranks)
        if not is_power_of_two(s) or list(ranks) != list(range(ranks[0], ranks[0] + s)):
            return False
        lo = stage * self.stage_block_size
        return lo <= ranks[0] and ranks[0] + s <= lo + self.stage_block_size and (ranks[0] - lo) % s == 0

    def aligned_sp_groups(self, stage: int) -> list[Ranks]:
        """Every aligned power-of-two run inside `stage`'s block, smallest first (size 1, 2, 4, ... at k·size)."""
        block = self.stage_block(stage)
        groups, size = [], 1
        while size <= len(block):
            groups += [block[off : off + size] for off in range(0, len(block) - size + 1, size)]
            size *= 2
        return groups

    def sp_group_spans_nodes(self, sp_degree: int) -> bool:
        """Whether an aligned SP group of this size crosses a node boundary (it does iff it exceeds a node)."""
        return sp_degree > self.devices_per_node
