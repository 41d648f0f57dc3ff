"""The hardware a plan runs on."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from proto.wire_types import AS_EXACT_INT, AS_FINITE_NUMBER

# Physical bounds (documented in the README): they refuse unit mistakes and values that would overflow the
# cost model (e.g. 1e-300 FLOP/s), while leaving room far beyond today's hardware.
MIN_BANDWIDTH = 1e3
"""1 kB/s: far below any interconnect a training job would use, yet it keeps the hand-sized toy clusters of the
cost-model tests valid; what it refuses is the degenerate input (5e-324 B/s) that made every cost infinite."""
MAX_BANDWIDTH = 1e14
"""100 TB/s per device: ~50x NVLink 5."""
MIN_FLOPS = 1e9
"""1 GFLOP/s: slower than any device a model is trained on (and it keeps derived coefficients bounded)."""
MAX_FLOPS = 1e18
"""1 EFLOP/s per device: ~100x a 2025 accelerator."""
MIN_DEVICE_MEMORY = 2**20
MAX_DEVICE_MEMORY = 2**50
"""1 MiB .. 1 PiB per device."""
MAX_LATENCY_S = 1.0
MAX_NAME_CHARS = 128
MAX_SOURCE_CHARS = 1024


class ClusterSpec(BaseModel):
    """A homogeneous cluster: `num_nodes` nodes of `devices_per_node` identical devices.

    Bandwidths are per device, in bytes/s, as seen by collectives (not the marketing link rate);
    latencies are per message, in seconds.

    Cross-field rule: with more than one node, `inter_node_bandwidth` is at most 100x `intra_node_bandwidth`
    (a larger ratio is a units mistake).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="custom", max_length=MAX_NAME_CHARS, description="Preset name or a free label.")
    num_nodes: Annotated[int, Field(ge=1, le=4096), AS_EXACT_INT] = Field(description="Number of nodes.")
    devices_per_node: Annotated[int, Field(ge=1, le=64), AS_EXACT_INT] = Field(description="Accelerators per node.")
    device_memory_bytes: Annotated[
        float, Field(ge=MIN_DEVICE_MEMORY, le=MAX_DEVICE_MEMORY, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(
        description="Memory capacity per device in bytes: the part's size (e.g. 80 GiB for an 80 GB A800), not "
        "what training can use. The planner keeps CostProfile.memory_reserve_bytes of it free (CUDA context, "
        "collective buffers, fragmentation) and fits model states + activations in the rest; "
        "Predicted.peak_memory_bytes includes that reserve and is compared with this capacity."
    )
    peak_flops: Annotated[float, Field(ge=MIN_FLOPS, le=MAX_FLOPS, allow_inf_nan=False), AS_FINITE_NUMBER] = Field(
        description="Dense half-precision peak FLOP/s per device."
    )
    intra_node_bandwidth: Annotated[
        float, Field(ge=MIN_BANDWIDTH, le=MAX_BANDWIDTH, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(description="Per-device bytes/s inside a node (e.g. NVLink).")
    inter_node_bandwidth: Annotated[
        float, Field(ge=MIN_BANDWIDTH, le=MAX_BANDWIDTH, allow_inf_nan=False), AS_FINITE_NUMBER
    ] = Field(description="Per-device bytes/s across nodes (e.g. InfiniBand).")
    intra_node_allreduce_bandwidth: (
        Annotated[float, Field(ge=MIN_BANDWIDTH, le=MAX_BANDWIDTH, allow_inf_nan=False), AS_FINITE_NUMBER] | None
    ) = Field(
        default=None,
        description="All-reduce bus bandwidth inside a node in bytes/s (NCCL's busbw, as nccl-tests reports it): "
        "ring reductions reach far more of NVLink than all-to-all does (~230 GB/s vs ~100 GB/s on DGX A100). "
        "None: the planner derives it from intra_node_bandwidth by its documented preset ratio.",
    )
    intra_node_latency_s: Annotated[float, Field(ge=0, le=MAX_LATENCY_S, allow_inf_nan=False), AS_FINITE_NUMBER] = (
        Field(default=5e-6, description="Per-message latency inside a node.")
    )
    inter_node_latency_s: Annotated[float, Field(ge=0, le=MAX_LATENCY_S, allow_inf_nan=False), AS_FINITE_NUMBER] = (
        Field(default=2e-5, description="Per-message latency across nodes.")
    )
    source: str = Field(default="", max_length=MAX_SOURCE_CHARS, description="Where the numbers come from.")

    @model_validator(mode="after")
    def _check_bandwidths(self) -> ClusterSpec:
        if self.num_nodes > 1 and self.inter_node_bandwidth > self.intra_node_bandwidth * 100:
            raise ValueError("inter_node_bandwidth is over 100x intra_node_bandwidth; check the units (bytes/s)")
        return self

    @property
    def num_devices(self) -> int:
        return self.num_nodes * self.devices_per_node

    def node_of(self, rank: int) -> int:
        return rank // self.devices_per_node

    def spans_nodes(self, ranks: list[int] | range) -> bool:
        """True when the ranks do not all sit in one node."""
        return len({self.node_of(r) for r in ranks}) > 1
