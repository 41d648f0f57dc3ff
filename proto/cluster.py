"""The hardware a plan runs on."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ClusterSpec(BaseModel):
    """A homogeneous cluster: `num_nodes` nodes of `devices_per_node` identical devices.

    Bandwidths are per device, in bytes/s, as seen by collectives (not the marketing link rate);
    latencies are per message, in seconds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="custom", description="Preset name or a free label.")
    num_nodes: int = Field(ge=1, le=4096, description="Number of nodes.")
    devices_per_node: int = Field(ge=1, le=64, description="Accelerators per node.")
    device_memory_bytes: float = Field(
        gt=0,
        description="Memory capacity per device in bytes: the part's size (e.g. 80 GiB for an 80 GB A800), not "
        "what training can use. The planner keeps CostProfile.memory_reserve_bytes of it free (CUDA context, "
        "collective buffers, fragmentation) and fits model states + activations in the rest; "
        "Predicted.peak_memory_bytes includes that reserve and is compared with this capacity.",
    )
    peak_flops: float = Field(gt=0, description="Dense half-precision peak FLOP/s per device.")
    intra_node_bandwidth: float = Field(gt=0, description="Per-device bytes/s inside a node (e.g. NVLink).")
    inter_node_bandwidth: float = Field(gt=0, description="Per-device bytes/s across nodes (e.g. InfiniBand).")
    intra_node_allreduce_bandwidth: float | None = Field(
        default=None,
        gt=0,
        description="All-reduce bus bandwidth inside a node in bytes/s (NCCL's busbw, as nccl-tests reports it): "
        "ring reductions reach far more of NVLink than all-to-all does (~230 GB/s vs ~100 GB/s on DGX A100). "
        "None: the planner derives it from intra_node_bandwidth by its documented preset ratio.",
    )
    intra_node_latency_s: float = Field(default=5e-6, ge=0, description="Per-message latency inside a node.")
    inter_node_latency_s: float = Field(default=2e-5, ge=0, description="Per-message latency across nodes.")
    source: str = Field(default="", description="Where the numbers come from.")

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
