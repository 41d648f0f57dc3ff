"""What `helix profile` measures on the job's devices: the raw rows the least-squares fits read.

Kept apart from the fit (`profile_fit`) so that measurements are data: the executor's profiler produces them on
every rank, rank 0 gathers them, and the profile document stores them, so a profile can be refitted (or its
fits checked) without the devices. Times are seconds of one call on one device, each the median of the
repeats after warm-up; byte counts are per device.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CollectiveKind = Literal["ulysses_layer", "p2p", "all_reduce", "reduce_scatter"]
"""ulysses_layer: the executor's Ulysses exchange of one layer's forward (q/k/v to head-sharded and the output
back); p2p: one pipeline send/recv of a chunk's activations; all_reduce, reduce_scatter: the data-parallel
gradient reductions of a stage block."""


class LayerTiming(BaseModel):
    """One transformer layer on one device (SP degree 1) for a chunk of equal segments."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_tokens: int = Field(ge=1, description="Tokens of the chunk (segments x segment length).")
    seq_len: int = Field(ge=1, description="Tokens of each segment.")
    context: int = Field(ge=0, description="Earlier tokens of the same sequence every segment attends to (C).")
    attn_pairs: float = Field(ge=0, description="Σ((C + L)^2 − C^2) over the segments.")
    forward_s: float = Field(gt=0)
    backward_s: float = Field(gt=0)
    recompute_backward_s: float | None = Field(
        default=None, gt=0, description="Backward of the same layer under activation checkpointing (forward rerun)."
    )
    deferred_forward_s: float | None = Field(
        default=None, gt=0, description="Forward of the same layer whose GEMM weight gradients will be deferred."
    )
    deferred_backward_s: float | None = Field(
        default=None, gt=0, description="Its backward up to the input gradient, the weight gradients queued."
    )
    weight_grad_s: float | None = Field(
        default=None, gt=0, description="Its queued weight gradients, computed and accumulated."
    )


class LaneLayerTiming(BaseModel):
    """One transformer layer run the way a lane of SP degree s runs it: the executor's Ulysses attention over the
    lane's group (s = 1: alone), one whole sequence of `num_tokens` split over the s devices, every lane of that
    degree running at once. The time includes the layer's all-to-alls."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sp_degree: int = Field(ge=1)
    per_node: int = Field(ge=1, description="Devices of the lane in each node it occupies (k).")
    nodes: int = Field(ge=1)
    num_tokens: int = Field(ge=1, description="Tokens of the sequence (the whole lane's, not one device's).")
    forward_s: float = Field(gt=0)
    backward_s: float = Field(gt=0)


class HeadTiming(BaseModel):
    """Final norm + LM head + loss on one device."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_tokens: int = Field(ge=1)
    forward_s: float = Field(gt=0)
    backward_s: float = Field(gt=0)


class CollectiveTiming(BaseModel):
    """One collective over a group, with every group of that shape running it at the same time (as the lanes or
    stage blocks of a plan do)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: CollectiveKind
    group_size: int = Field(ge=1, description="Devices in the group (SP degree, DP degree, or 2 for p2p).")
    per_node: int = Field(ge=1, description="Devices of the group in each node it occupies (k).")
    nodes: int = Field(ge=1, description="Nodes the group spans.")
    num_tokens: int = Field(default=0, ge=0, description="Tokens of the chunk (ulysses_layer, p2p).")
    num_bytes: float = Field(
        ge=0,
        description="ulysses_layer: bytes one device sends in the all-to-alls of one layer; p2p: bytes "
        "sent; all_reduce / reduce_scatter: the (unsharded) buffer.",
    )
    seconds: float = Field(gt=0)


class MemorySample(BaseModel):
    """Bytes autograd saved for backward (per device), counted by the executor's activation probe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["layer", "checkpointed_layer", "mlp_checkpointed_layer", "head"]
    num_tokens: int = Field(ge=1)
    saved_bytes: float = Field(ge=0)


class StateBytes(BaseModel):
    """Bytes per parameter the executor's training state takes, counted after one optimizer step."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    param_bytes: float = Field(gt=0)
    grad_bytes: float = Field(gt=0)
    optimizer_bytes: float = Field(ge=0)


class OpProbeTiming(BaseModel):
    """The per-op overhead probe (`op_overhead_probe`): the same work run as one chunk per lane and as one chunk
    per sequence, whole training steps of the executor, the slowest rank's time (the run's statistic)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_stages: int = Field(ge=1)
    sequences_per_lane: int = Field(ge=2)
    tokens_per_sequence: int = Field(ge=1)
    packed_s: float = Field(gt=0, description="One chunk per lane.")
    split_s: float = Field(gt=0, description="One chunk per sequence.")


class ProfileMeasurements(BaseModel):
    """Everything one `helix profile` run measured, and under what conditions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: str = Field(description="Device description, e.g. 'cpu (AMD EPYC)' or 'cuda (NVIDIA H100 80GB HBM3)'.")
    backend: str = Field(description="Collective backend (gloo, nccl).")
    attention_backend: str = Field(description="The attention backend the executor resolved (sdpa, flash, ...).")
    dtype: str = Field(description="Compute dtype of the layer (float32, bfloat16, ...).")
    attention_saves_prefix_kv: bool = Field(
        description="The attention path saves the concatenated [prefix; own] K/V of a sliced segment for backward "
        "(fused kernels) rather than keeping the prefix pieces (the executor's input-saving CPU path)."
    )
    attention_saves_output: bool = Field(
        description="The attention path saves its (head-sharded) output for backward, a second copy beside the "
        "out-projection's input under Ulysses."
    )
    world_size: int = Field(ge=1)
    threads_per_rank: int = Field(ge=1)
    cores: str = Field(default="", description="How ranks map to cores (CPU), e.g. 'rank r -> core r % 2'.")
    devices_per_core: int = Field(
        default=1,
        ge=1,
        description="Ranks pinned to each core in contiguous blocks while measuring (CPU); 1 when every rank had a "
        "core of its own, on GPUs, or when not pinned. Becomes `CostProfile.devices_per_compute_unit`.",
    )
    warmup: int = Field(ge=0)
    repeats: int = Field(ge=1)
    layer: list[LayerTiming] = Field(default_factory=list)
    head: list[HeadTiming] = Field(default_factory=list)
    lanes: list[LaneLayerTiming] = Field(
        default_factory=list, description="The layer on lanes of each SP degree (fits `CostProfile.sp_degree_costs`)."
    )
    collectives: list[CollectiveTiming] = Field(default_factory=list)
    memory: list[MemorySample] = Field(default_factory=list)
    op_probe: OpProbeTiming | None = Field(
        default=None, description="The per-op overhead probe (fits `CostProfile.op_overhead_s`); None: not run."
    )
    states: StateBytes | None = None
    gemm_flops_per_s: float | None = Field(
        default=None, gt=0, description="A large square GEMM's rate on one device under the same concurrency."
    )
    notes: list[str] = Field(default_factory=list, description="What could not be measured, and why.")
