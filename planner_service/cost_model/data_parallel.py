"""Data-parallel collectives of one training step per ZeRO stage: the executor contract, their counts, their times.

EXECUTOR CONTRACT. Every rank of a stage block (the stage's N/P devices, its data-parallel group) takes part in
exactly these collectives over that block in each step; the executor implements them so, and its test counts its
real collectives against `stage_collectives`. Gradients travel in `PlanOptions.grad_reduce_dtype`, parameters in
the working dtype (`CostProfile.param_bytes`). A block of one device runs none.

- ZeRO-0: the stage's gradients are summed over the block by all-reduce, in buckets: the gradients, flattened in
  backward order, are cut into ceil(bytes / `CostProfile.grad_bucket_bytes`) buckets (25 MiB by default, as
  PyTorch DDP). A bucket's all-reduce is issued asynchronously as soon as its gradients are final, which happens
  during each rank's LAST backward op of the step; it completes only once every rank of the block has produced
  that bucket, so the reduction overlaps the slowest lane's last backward on that stage.
- ZeRO-1: the same bucketed reduction, as reduce-scatter (each rank keeps its 1/d shard); the optimizer steps that
  shard; then one all-gather of the updated parameters after the optimizer step (not overlapped).
- ZeRO-2: parameters replicated; after every chunk's backward, the gradients are reduce-scattered in the same
  buckets (overlapped with that backward), so only a 1/d gradient shard accumulates; one all-gather of the
  updated parameters after the step.
- ZeRO-3 (FSDP2 `fully_shard` per layer, reshard after forward): the units are the stage's layers plus one for
  its other parameters (embedding, final norm and LM head) when it has any. Every chunk's forward all-gathers each
  unit's parameters (prefetched one unit ahead, so the gather overlaps the previous unit's compute); every chunk's
  backward all-gathers them again and reduce-scatters that unit's gradients. Nothing after the step.
- ZeRO-2/3 collectives run over the whole block, so every rank takes part in as many per-chunk collectives as the
  lane with the MOST chunks in the block; ranks of lanes with fewer chunks join the remaining ones after their
  own ops, without compute.

Times (`overlapped_op_s`, `step_sync_end_s`): a collective is one hierarchical phase per reduce-scatter or
all-gather and two per all-reduce (`comm_model.hierarchical_phase_links`), at the all-reduce bus bandwidths, one
latency set per call. Collectives that overlap an op share the links with its Ulysses all-to-alls: on each link
class the op lasts at least the two transfers' time on it together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from planner_service.cost_model.comm_model import NO_TRAFFIC, LinkTimes, hierarchical_phase_links
from proto import CostProfile, ZeroStage

CollectiveKind = Literal["all_reduce", "reduce_scatter", "all_gather"]
Occasion = Literal["last_backward", "after_step", "forward", "backward"]
"""When a call is issued: during each rank's last backward op, once after the optimizer step, or during every
chunk's forward / backward op."""


@dataclass(frozen=True, slots=True)
class StageGroup:
    """One stage's data-parallel group and what it holds."""

    num_params: int
    num_units: int
    """FSDP units under ZeRO-3: the stage's layers, plus one for its other parameters when it has any."""
    dp_size: int
    """Devices of the stage block (d)."""
    nodes: int
    """Nodes the block spans (it holds d / nodes devices in each)."""


@dataclass(frozen=True, slots=True)
class CollectiveCall:
    """`count` collectives of one kind issued on one occasion, moving `num_bytes` together (unsharded sizes)."""

    kind: CollectiveKind
    occasion: Occasion
    count: int
    num_bytes: float


@dataclass(frozen=True, slots=True)
class StageCollectives:
    """The collectives one rank of a stage block takes part in during one step.

    Bytes are unsharded buffer sizes summed over the calls: an all-reduce's or a reduce-scatter's input, an
    all-gather's output (what `numel * element_size` of the full tensor gives the executor).
    """

    stage: int
    all_gathers: int
    reduce_scatters: int
    all_reduces: int
    all_gather_bytes: float
    reduce_scatter_bytes: float
    all_reduce_bytes: float


def contract_calls(
    group: StageGroup, *, zero_stage: ZeroStage, bucket_bytes: float, grad_bytes: float, param_bytes: float
) -> tuple[CollectiveCall, ...]:
    """The contract above for one stage: what is issued on each occasion (per chunk for forward/backward)."""
    if group.dp_size <= 1 or group.num_params <= 0:
        return ()
    grads = group.num_params * grad_bytes
    params = group.num_params * param_bytes
    buckets = math.ceil(grads / bucket_bytes)
    gather_after_step = CollectiveCall("all_gather", "after_step", 1, params)
    if zero_stage == ZeroStage.NONE:
        return (CollectiveCall("all_reduce", "last_backward", buckets, grads),)
    if zero_stage == ZeroStage.OPTIMIZER:
        return (CollectiveCall("reduce_scatter", "last_backward", buckets, grads), gather_after_step)
    if zero_stage == ZeroStage.GRADIENTS:
        return (CollectiveCall("reduce_scatter", "backward", buckets, grads), gather_after_step)
    units = group.num_units
    return (
        CollectiveCall("all_gather", "forward", units, params),
        CollectiveCall("all_gather", "backward", units, params),
        CollectiveCall("reduce_scatter", "backward", units, grads),
    )


def stage_collectives(stage: int, calls: tuple[CollectiveCall, ...], *, max_chunks: int) -> StageCollectives:
    """Count a stage's calls over one step in which the busiest lane of the block runs `max_chunks` chunks."""
    counts = {"all_gather": [0, 0.0], "reduce_scatter": [0, 0.0], "all_reduce": [0, 0.0]}
    for call in calls:
        times = max_chunks if call.occasion in ("forward", "backward") else 1
        counts[call.kind][0] += times * call.count
        counts[call.kind][1] += times * call.num_bytes
    return StageCollectives(
        stage=stage,
        all_gathers=int(counts["all_gather"][0]),
        reduce_scatters=int(counts["reduce_scatter"][0]),
        all_reduces=int(counts["all_reduce"][0]),
        all_gather_bytes=counts["all_gather"][1],
        reduce_scatter_bytes=counts["reduce_scatter"][1],
        all_reduce_bytes=counts["all_reduce"][1],
    )


@dataclass(frozen=True, slots=True)
class OverlappedCollectives:
    """The collectives issued during one op, as pieces (buckets or units) that run beside its compute."""

    links: LinkTimes
    """All the pieces together."""
    lead_s: float
    """The piece the compute must wait for (ZeRO-3: the first unit's all-gather)."""
    tail_s: float
    """The piece that can only start after the compute (the last bucket's or unit's reduce-scatter)."""
    unhidden_compute_share: float
    """Share of the op's own time that no piece can overlap (the compute before the first gradient bucket, or
    after the last unit's gather)."""


NOTHING_OVERLAPPED = OverlappedCollectives(NO_TRAFFIC, 0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class StageCollectiveTimes:
    """Seconds of one stage's data-parallel collectives on one rank, in the pieces the simulator overlaps."""

    step_sync: LinkTimes
    """ZeRO-0/1: the bucketed reduction issued during each rank's last backward op."""
    step_bucket_share: float
    """One bucket's share of `step_sync` (the part left after the last gradients are final)."""
    after_step_s: float
    """ZeRO-1/2: the parameter all-gather after the optimizer step (exposed)."""
    forward: OverlappedCollectives
    """ZeRO-3: the all-gathers of every chunk's forward op."""
    backward: OverlappedCollectives
    """ZeRO-2: the reduce-scatters of every chunk's backward; ZeRO-3: its all-gathers and reduce-scatters."""

    @property
    def idle_round_s(self) -> float:
        """One chunk's per-chunk collectives joined without compute (a lane with fewer chunks than the busiest)."""
        return self.forward.links.duration_s + self.backward.links.duration_s

    def total_s(self, max_chunks: int) -> float:
        """Every collective of the step on one rank, back to back (what `Predicted.grad_sync_s` reports)."""
        return self.step_sync.duration_s + self.after_step_s + max_chunks * self.idle_round_s


def stage_collective_times(
    group: StageGroup,
    calls: tuple[CollectiveCall, ...],
    *,
    profile: CostProfile,
    intra_latency_s: float,
    inter_latency_s: float,
) -> StageCollectiveTimes:
    """Price a stage's calls on its block (hierarchical phases at the all-reduce bus bandwidths)."""

    def links(call: CollectiveCall) -> LinkTimes:
        one = hierarchical_phase_links(
            call.num_bytes / call.count,
            per_node=group.dp_size // group.nodes,
            nodes=group.nodes,
            intra_bw=profile.allreduce_bw_intra,
            inter_bw=profile.allreduce_bw_inter,
            intra_latency_s=intra_latency_s,
            inter_latency_s=inter_latency_s,
        )
        return one.scaled(call.count * (2 if call.kind == "all_reduce" else 1))

    step, after, forward, backward = NO_TRAFFIC, 0.0, NO_TRAFFIC, NO_TRAFFIC
    step_share = lead_f = lead_b = tail_b = share_b = 0.0
    for call in calls:
        priced = links(call)
        if call.occasion == "last_backward":
            step, step_share = priced, 1.0 / call.count
        elif call.occasion == "after_step":
            after += priced.duration_s
        elif call.occasion == "forward":
            forward, lead_f = priced, priced.duration_s / call.count
        else:
            backward = backward + priced
            share_b = 1.0 / call.count
            if call.kind == "all_gather":
                lead_b = priced.duration_s / call.count
            else:
                tail_b = priced.duration_s / call.count
    return StageCollectiveTimes(
        step_sync=step,
        step_bucket_share=step_share,
        after_step_s=after,
        forward=OverlappedCollectives(forward, lead_f, 0.0, 1.0 / group.num_units if lead_f else 0.0),
        backward=OverlappedCollectives(backward, lead_b, tail_b, share_b),
    )


def overlapped_op_s(serial_s: float, alltoall: LinkTimes, collectives: OverlappedCollectives) -> float:
    """Duration of an op whose own work takes `serial_s` (compute and all-to-alls in series) with `collectives`
    running beside it, cut in pieces:

    - the op's chain: the lead piece, the op's work, the tail piece;
    - the collectives' chain: all pieces back to back, plus the share of the op's work none of them can overlap;
    - each link class carries the op's all-to-alls and the collectives' traffic on it one after the other.

    With n equal pieces and equal layers this is exact for a pipeline that prefetches one piece ahead:
    e.g. ZeRO-3 forward over U units of compute c and gather g lasts g + (U-1)·max(c, g) + c =
    max(g + U·c, U·g + c).
    """
    if collectives.links.duration_s <= 0.0:
        return serial_s
    return max(
        collectives.lead_s + serial_s + collectives.tail_s,
        collectives.links.duration_s + collectives.unhidden_compute_share * serial_s,
        alltoall.intra_s + collectives.links.intra_s,
        alltoall.inter_s + collectives.links.inter_s,
    )


@dataclass(frozen=True, slots=True)
class LastBackward:
    """A lane's last backward op on a stage: when its gradients become final, and its all-to-all traffic."""

    start_s: float
    end_s: float
    alltoall: LinkTimes


def first_bucket_s(last: LastBackward, bucket_share: float) -> float:
    """When the first bucket of a lane's gradients is final (gradients are produced evenly over its last B op)."""
    return last.start_s + bucket_share * (last.end_s - last.start_s)


def step_sync_end_s(sync: LinkTimes, bucket_share: float, lanes: list[LastBackward]) -> float:
    """When a stage's bucketed ZeRO-0/1 reduction ends.

    Bucket i (i/n of the gradients) of lane l is final at start_l + (i/n)·D_l; the block's reduction of a bucket
    runs once every lane has produced it, buckets one after another. The queue therefore ends at the latest of,
    for every lane, its first bucket plus the whole reduction and its last bucket (at end_l) plus one bucket's
    share; on each link class the reduction also shares the link with the rest of that lane's all-to-all traffic.
    """
    if sync.duration_s <= 0.0 or not lanes:
        return max((lane.end_s for lane in lanes), default=0.0)
    ends = []
    for lane in lanes:
        first = first_bucket_s(lane, bucket_share)
        rest = 1.0 - bucket_share
        ends += [
            lane.end_s + bucket_share * sync.duration_s,
            first + sync.duration_s,
            first + sync.intra_s + rest * lane.alltoall.intra_s,
            first + sync.inter_s + rest * lane.alltoall.inter_s,
        ]
    return max(ends)
