"""The planner's prediction of a rank's activation memory, to put next to what `memory_probe` measures.

The planner (`planner_service.simulator.memory_timeline.stage_memory`) prices a (lane, stage) along its
op order: chunk c holds `chunk_activation_bytes` (+ K/V of its recomputed layers if later slices read it)
from F(c) to the end of B(c); earlier slices hold dK/dV accumulators from the backward of the sequence's
last slice; a chunk that defers its weight gradients keeps its GEMMs' operands from its backward to its W op;
every op adds `transient_bytes` of working memory. The probe measures the held part only (saved tensors, K/V
leaves and their gradients, queued W operands), so the comparison uses the held peak: the same op walk without
the transient term (`StageMemory.peak(..., transients=False)`). `peak_with_transient` is the planner's full
activation figure (`Predicted.peak_memory_bytes` less model states and reserve).

Two profiles price the same walk:

- ``preset``: the planner's own preset profile (`profile_presets.preset_profile`) for the model with
  `bytes_per_element` set to the run's dtype. Its per-token byte counts assume fused production kernels
  (flash attention, fused RMSNorm and SwiGLU) and fp32 logits.
- ``executor``: the same preset with the four activation coefficients replaced by what *this* executor's
  eager modules save (`executor_memory_coefficients`), so that what remains of the difference is the
  memory model's structure (which chunks are held when, recompute, K/V of slices) rather than kernel
  choices.

Planner imports stay inside functions: the executor package imports without the planner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from proto.batch import Batch
from proto.cluster import ClusterSpec
from proto.model import ModelSpec
from proto.plan import Plan
from proto.profile import CostProfile


@dataclass(frozen=True)
class RankMemoryPrediction:
    rank: int
    lane_id: int
    stage: int
    held_peak_bytes: float
    """Peak of held activations + K/V (+ dK/dV accumulators, + queued W operands) along the op order; comparable
    to the probe."""
    peak_with_transient: float
    """The planner's activation peak (held + one op's transient working memory, and a deferring backward op's rise:
    W operands beyond the activations its layers free, `CostModel.deferring_backward_bytes`)."""


def executor_memory_coefficients(model: ModelSpec, element_bytes: int) -> dict[str, float | bool]:
    """Bytes per token this executor's eager modules keep for backward (per layer, and for the head).

    Per layer, in elements of the activation dtype (h hidden, kv = kv_dim, f = ffn hidden):
      RMSNorm (x * rsqrt(mean(x^2) + eps) * w), twice: input x, rstd (1), x*rstd, and its output (saved
        by the next projection): 3h + 1;
      attention: q, k, v after RoPE (q + 2kv with q = q_dim, heads x head_dim; under Ulysses one packed
        head-sharded tensor), kept by the input-saving attention (`executor.attention.prefix`), and the
        out-projection input (q);
      SwiGLU unfused: gate (f), silu(gate) (f), up (f) and their product, the down-projection input (f);
      GELU MLP: fc1 output (f) and GELU output (f).
    Head (last stage): final RMSNorm 3h + 1, log-softmax output (V), and int64 targets (1).
    A recomputed layer keeps its input (h), or frees its MLP half's 2h + 1 + MLP elements when only that half
    recomputes; K/V of a slice is 2kv per token and layer.
    The input-saving attention keeps neither its output (so Ulysses adds no second copy of it) nor a
    concatenated prefix K/V (it keeps the pieces, which are the K/V cache's own leaves).
    """
    h, q, kv, f, e = model.hidden_size, model.q_dim, model.kv_dim, model.ffn_hidden_size, element_bytes
    mlp = (4 if model.gated_mlp else 2) * f
    return {
        "activation_bytes_per_token_layer": float(e * (2 * (3 * h + 1) + q + 2 * kv + q + mlp)),
        "checkpoint_bytes_per_token_layer": float(e * h),
        # the MLP half rerun from its input: its RMSNorm's 3h + 1 and the MLP's tensors, less that input (h)
        "mlp_recompute_freed_bytes_per_token_layer": float(e * (2 * h + 1 + mlp)),
        "kv_bytes_per_token_layer": float(e * 2 * kv),
        "head_activation_bytes_per_token": float(e * (3 * h + 1 + model.vocab_size) + 8),
        "ulysses_extra_bytes_per_token_layer": 0.0,
        "attention_saves_prefix_kv": False,
    }


def memory_profile(cluster: ClusterSpec, model: ModelSpec, dtype: torch.dtype, kind: str) -> CostProfile:
    """The planner's preset profile at the run's element size (`kind` "preset"), or with this executor's
    activation coefficients (`kind` "executor")."""
    from planner_service.cost_model.profile_presets import preset_profile

    element = torch.tensor([], dtype=dtype).element_size()
    profile = preset_profile(cluster, model.model_copy(update={"bytes_per_element": element}))
    if kind == "preset":
        return profile
    if kind != "executor":
        raise ValueError(f"unknown memory profile kind {kind!r} (preset or executor)")
    return profile.model_copy(update=executor_memory_coefficients(model, element))


def predict_activation_memory(
    plan: Plan, batch: Batch, cluster: ClusterSpec, model: ModelSpec, profile: CostProfile
) -> dict[int, RankMemoryPrediction]:
    """Per rank: the planner's activation-memory walk of its (lane, stage) priced with `profile`."""
    from planner_service.cost_model import CostModel
    from planner_service.simulator.memory_timeline import stage_memory

    cost = CostModel.from_specs(cluster, model, profile=profile, options=plan.options)
    lengths: Mapping[int, int] = batch.length_of()
    out: dict[int, RankMemoryPrediction] = {}
    for lane in plan.lanes:
        tokens = [chunk.num_tokens for chunk in lane.chunks]
        for stage in range(plan.pipeline.num_stages):
            memory = stage_memory(lane, plan.pipeline, stage, cost, lengths, tokens)
            recompute = lane.recompute[stage]
            held_peak = memory.peak(recompute, transients=False)
            full = memory.peak(recompute)
            for rank in lane.ranks[stage]:
                out[rank] = RankMemoryPrediction(rank, lane.lane_id, stage, held_peak, full)
    return out
