"""Memory-fit tests for lane layouts: whether one sequence can run on a lane at all, and the chunk token cap
that keeps a pipeline's in-flight chunks in memory without recompute."""

from __future__ import annotations

from planner_service.cost_model import CostModel
from proto import PipelineSpec, RecomputeScope

MIN_SLICE_TOKENS_PER_DEVICE = 512
"""Smallest slice worth running per device: below ~512 tokens per GPU, GEMMs and attention kernels lose
most of their efficiency (per-call overhead b dominates), so slicing finer buys memory at too high a price."""


def activation_bytes_per_token(
    cost: CostModel, sp_degree: int, num_layers: int, *, is_last_stage: bool = False, recompute: bool = False
) -> float:
    """Bytes one device holds per token of an in-flight chunk with no recompute (every layer with `recompute`)."""
    probe = 1024 * sp_degree
    held = cost.chunk_activation_bytes(
        probe,
        sp_degree=sp_degree,
        num_layers=num_layers,
        recompute_layers=num_layers if recompute else 0,
        is_last_stage=is_last_stage,
    )
    return held / probe


def memory_token_cap(
    cost: CostModel, pipeline: PipelineSpec, sp_degree: int, in_flight: int, *, recompute: bool = False
) -> int:
    """Tokens per chunk such that, on every stage p, its 1F1B in-flight chunks (min(`in_flight`, P - p)) and one
    op's working memory fit without recompute (with every layer recomputed when `recompute`), at least the
    minimum slice. The last stage also keeps the LM head's activations, so without a pipeline it binds."""
    dp = cost.dp_size(pipeline)
    probe = 1024 * sp_degree
    caps = []
    for p in range(pipeline.num_stages):
        last = p == pipeline.num_stages - 1
        budget = cost.usable_memory_bytes - cost.model_state_bytes(p, pipeline, dp)
        held = activation_bytes_per_token(
            cost, sp_degree, pipeline.layers_of(p), is_last_stage=last, recompute=recompute
        )
        working = cost.transient_bytes(probe, sp_degree=sp_degree, is_last_stage=last) / probe
        chunks = max(1, min(in_flight, pipeline.num_stages - p))
        caps.append(int(budget / (chunks * held + working)) if budget > 0 else 0)
    return max(min(caps), MIN_SLICE_TOKENS_PER_DEVICE * sp_degree)


def sequence_fits(cost: CostModel, pipeline: PipelineSpec, length: int, sp_degree: int, *, sliced: bool) -> bool:
    """Whether one sequence alone can run on a lane of `sp_degree` with full recompute (and slicing if allowed).

    Unsliced: its checkpoints plus one layer's working memory for the whole sequence. Sliced: its
    checkpoints, the K/V of every slice and their dK/dV accumulators, and one minimal slice's working memory.
    Under `RecomputeScope.MLP` the "checkpoints" are the attention halves, which hold the slices' K/V.
    """
    dp = cost.dp_size(pipeline)
    for p in range(pipeline.num_stages):
        layers = pipeline.layers_of(p)
        last = p == pipeline.num_stages - 1
        need = cost.model_state_bytes(p, pipeline, dp)
        need += cost.chunk_activation_bytes(
            length, sp_degree=sp_degree, num_layers=layers, recompute_layers=layers, is_last_stage=last
        )
        if sliced:  # the K/V leaves (an MLP-only recompute's kept attention holds them already) and their dK/dV
            copies = 2 if cost.options.recompute_scope is RecomputeScope.LAYER else 1
            need += copies * cost.kv_bytes(length, sp_degree, layers)
            need += cost.transient_bytes(
                min(length, MIN_SLICE_TOKENS_PER_DEVICE * sp_degree), sp_degree=sp_degree, is_last_stage=last
            )
        else:
            need += cost.transient_bytes(length, sp_degree=sp_degree, is_last_stage=last)
        if need > cost.usable_memory_bytes:
            return False
    return True
