"""Every rank measures at once; rank 0 merges the ranks' rows into one `ProfileMeasurements`.

Compute rows are per rank (each times its own layer while the others time theirs): rank 0 keeps, per grid point,
the median over ranks. Collective rows are per group member: it keeps the slowest member of each group shape (a
collective ends when its last member does). Memory and state bytes are deterministic: rank 0's are kept.
"""

from __future__ import annotations

import logging
import os
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from executor.attention.backends import resolve_backend
from executor.parallel.groups import create_process_groups
from executor.profile.collective_bench import CollectiveBench
from executor.profile.grid import ProfileSettings
from executor.profile.lane_bench import lane_rows, merge_lanes
from executor.profile.layer_bench import LayerBench, chunk_shapes
from executor.profile.op_probe import time_op_probe
from executor.profile.timing import cores_description, pin_to_core, ranks_per_core
from proto.cluster import ClusterSpec
from proto.model import ModelSpec

if TYPE_CHECKING:
    from planner_service.cost_model.profile_measurements import ProfileMeasurements

log = logging.getLogger(__name__)


def measure_on_rank(cluster: ClusterSpec, model: ModelSpec, settings: ProfileSettings) -> ProfileMeasurements | None:
    """Run the whole measurement on this rank (collective: call on every rank); rank 0 gets the merged result."""
    from planner_service.cost_model.profile_measurements import ProfileMeasurements

    rank, world = dist.get_rank(), dist.get_world_size()
    threads = torch.get_num_threads()
    pin = settings.pin_cores and settings.device == "cpu"
    sharing = ranks_per_core(world, len(os.sched_getaffinity(0))) if pin else 1  # before this rank is pinned
    pinned = pin_to_core(rank, world) if pin else None
    bench = LayerBench(model, settings)
    layer, head = _compute_rows(bench, settings)
    memory = [
        {"kind": kind, "num_tokens": t, "saved_bytes": bench.saved_bytes(t, kind=kind)}
        for kind in ("layer", "checkpointed_layer", "mlp_checkpointed_layer", "head")
        for t in settings.grid.memory_tokens
    ]
    param, grad, optimizer = bench.state_bytes_per_param()
    gemm = bench.gemm_flops_per_s()
    collectives: list[dict[str, Any]] = []
    notes: list[str] = []
    groups = create_process_groups(cluster, (1,)) if world > 1 else None
    lanes = lane_rows(bench, cluster, groups)
    if settings.collectives and groups is not None:
        activation = torch.bfloat16 if settings.dtype == "bfloat16" else bench.dtype
        cbench = CollectiveBench(cluster, model, settings, groups, activation)
        collectives = cbench.ulysses() + cbench.p2p()
        reductions, notes = cbench.reductions()
        collectives += reductions
    op_probe = time_op_probe(cluster, model, settings)  # rank 0's row (the step time is the slowest rank's)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(
        gathered, {"layer": layer, "head": head, "lanes": lanes, "collectives": collectives, "gemm": gemm}
    )
    if rank != 0:
        return None
    device = _device_name(settings.device)
    return ProfileMeasurements(
        device=device,
        backend=dist.get_backend(),
        attention_backend=resolve_backend(settings.attention_backend, torch.device(settings.device)),
        dtype=settings.dtype,
        attention_saves_prefix_kv=bench.saves_prefix_kv,
        attention_saves_output=bench.saves_output,
        world_size=world,
        threads_per_rank=threads,
        cores=cores_description(world, threads, pinned) if settings.device == "cpu" else "",
        devices_per_core=sharing,
        warmup=settings.warmup,
        repeats=settings.repeats,
        layer=merge_median(
            [g["layer"] for g in gathered], ("forward_s", "backward_s", "recompute_backward_s", *DEFERRED_TIMES)
        ),
        head=merge_median([g["head"] for g in gathered], ("forward_s", "backward_s")),
        lanes=merge_lanes([g["lanes"] for g in gathered]),
        collectives=merge_slowest([g["collectives"] for g in gathered]),
        memory=memory,
        op_probe=op_probe,
        states={"param_bytes": param, "grad_bytes": grad, "optimizer_bytes": optimizer},
        gemm_flops_per_s=statistics.median(g["gemm"] for g in gathered),
        notes=sorted(set(notes)) + ([] if world > 1 else ["one rank: no collectives measured"]),
    )


def _compute_rows(bench: LayerBench, settings: ProfileSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    layer = []
    for shape in chunk_shapes(settings.grid):
        forward, backward = bench.time_layer(shape, recompute=False)
        recompute_backward = None
        deferred: tuple[float | None, ...] = (None, None, None)
        if shape.segments in settings.grid.recompute_segments and not shape.context:
            _, recompute_backward = bench.time_layer(shape, recompute=True)
            deferred = bench.time_deferred_layer(shape)
        layer.append(
            {
                "num_tokens": shape.num_tokens,
                "seq_len": shape.seq_len,
                "context": shape.context,
                "attn_pairs": shape.attn_pairs,
                "forward_s": forward,
                "backward_s": backward,
                "recompute_backward_s": recompute_backward,
                **dict(zip(DEFERRED_TIMES, deferred, strict=True)),
            }
        )
        log.debug("layer %s: fwd %.4f s, bwd %.4f s, recompute %s s", shape, forward, backward, recompute_backward)
    head = []
    for tokens in settings.grid.head_tokens:
        forward, backward = bench.time_head(tokens)
        head.append({"num_tokens": tokens, "forward_s": forward, "backward_s": backward})
    return layer, head


DEFERRED_TIMES = ("deferred_forward_s", "deferred_backward_s", "weight_grad_s")
"""`LayerTiming`'s fields of the layer run with its weight gradients deferred."""


def merge_median(per_rank: Sequence[list[dict[str, Any]]], timed: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of equal shape from every rank -> one row each, its times the median over ranks."""
    merged = []
    for rows in zip(*per_rank, strict=True):
        row = dict(rows[0])
        for key in timed:
            if row[key] is not None:
                row[key] = statistics.median(r[key] for r in rows)
        merged.append(row)
    return merged


def merge_slowest(per_rank: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Collective rows of every rank -> one per (kind, placement, size): the slowest member's time."""
    slowest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rows in per_rank:
        for row in rows:
            key = tuple(row[k] for k in ("kind", "group_size", "per_node", "nodes", "num_bytes"))
            if key not in slowest or row["seconds"] > slowest[key]["seconds"]:
                slowest[key] = row
    return list(slowest.values())


def _device_name(device: str) -> str:
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name()})"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"cpu ({model})" if model else "cpu"
