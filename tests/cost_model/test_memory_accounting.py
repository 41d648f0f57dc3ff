"""Memory accounting of the cost model: what each byte count means and where it is taken.

Guards against the review's findings: the memory reserve subtracted from a device size that already excluded
it (counted twice), K/V replication under Ulysses (kv heads < SP degree) missing from the activation
coefficient, the attention output saved only once under Ulysses by fused kernels that keep it beside the
out-projection's input, and the loss' logits priced at a fixed 4 bytes whatever the model dtype.
"""

from __future__ import annotations

import pytest

from planner_service.cost_model import CostModel, preset_profile, profile_presets
from planner_service.presets import CLUSTERS, MODELS
from planner_service.simulator import simulate
from proto import Batch, Chunk, Lane, PipelineSpec, Predicted, Segment, validate_plan
from tests.cost_model.hand_specs import hand_plan, ops

GiB = 2**30


def test_reserve_is_taken_once_from_the_part_capacity() -> None:
    """A800 80 GB: capacity 80 GiB (81920 MiB); the preset reserve (CUDA context + NCCL + fragmentation) is
    2.5 GiB, so model states + activations get 77.5 GiB. Before the fix the preset device held 78 GiB
    ("usable") and the reserve came off again: 75.5 GiB."""
    cluster, model = CLUSTERS["a800-80g-4x8"], MODELS["llama2-7b"]
    cost = CostModel.from_specs(cluster, model)
    assert cost.memory_reserve_bytes == 2.5 * GiB
    assert cost.usable_memory_bytes == 77.5 * GiB


def test_simulated_peak_adds_the_reserve_once_and_validates_against_the_capacity() -> None:
    """One 1024-token sequence on one rank of a 2-device CPU preset: peak = reserve + states + activations, and
    that sum is what `validate_plan` compares with the capacity (not capacity less the reserve again)."""
    cluster, model = CLUSTERS["cpu-1x2"], MODELS["tiny"]
    cost = CostModel.from_specs(cluster, model)
    batch = Batch.from_lengths([1024])
    pipeline = PipelineSpec.even(model.num_layers, 1)
    lane = Lane(
        lane_id=0,
        sp_degree=2,
        ranks=[[0, 1]],
        chunks=[Chunk(segments=[Segment(seq_id=0, start=0, end=1024)])],
        schedule=[ops("F0 B0")],
        recompute=[[0]],
    )
    plan = hand_plan(cluster, model, batch, pipeline, [lane])
    peak = simulate(plan, batch, cost).predicted.peak_memory_bytes
    # the reserve of a 4 GiB CPU device is capped at 10 % of it: 0.4 GiB
    reserve = 0.1 * 4 * GiB
    states = cost.model_state_bytes(0, pipeline, 2)
    held = cost.chunk_activation_bytes(1024, sp_degree=2, num_layers=2, is_last_stage=True)
    transient = cost.transient_bytes(1024, sp_degree=2, is_last_stage=True)
    assert peak == [pytest.approx(reserve + states + held + transient)] * 2
    # a plan that fills the capacity exactly is valid; one byte more is not
    full = plan.model_copy(update={"predicted": Predicted(iteration_s=1, ideal_s=1, peak_memory_bytes=[4 * GiB] * 2)})
    validate_plan(full, batch, cluster, model)
    over = full.model_copy(
        update={"predicted": Predicted(iteration_s=1, ideal_s=1, peak_memory_bytes=[4 * GiB + 1, 0.0])}
    )
    with pytest.raises(ValueError, match="exceeds device memory"):
        validate_plan(over, batch, cluster, model)
    assert preset_profile(cluster, model).memory_reserve_bytes == pytest.approx(
        profile_presets.MEMORY_RESERVE_MAX_FRACTION * cluster.device_memory_bytes
    )


def test_ulysses_activation_holds_replicated_kv_and_a_second_attention_output() -> None:
    """llama3-8b (h 4096, 8 K/V heads of 128 -> kv_dim 1024, f 14336, 32 heads, bf16) per token and layer at s = 1:
    2 x (6 x 4096 + 2 x 1024 + 3 x 14336) + 4 x 32 (fp32 log-sum-exp) + 2 x 4 (fp32 rstd) = 139,400 bytes.
    At s = 16 each rank holds 16/16 = 1 K/V head of 8 replicated to 16, i.e. twice the K/V of its token share:
    + 2 x 1024 x 2 B = 4,096; and flash attention keeps its head-sharded output beside the out-projection's input:
    + 4096 x 2 B = 8,192. A 16,384-token chunk (1,024 tokens per rank), one layer: 1,024 x 151,688 bytes."""
    cluster, model = CLUSTERS["a800-80g-4x8"], MODELS["llama3-8b"]
    cost = CostModel.from_specs(cluster, model)
    assert cost.profile.activation_bytes_per_token_layer == 139_400
    assert cost.chunk_activation_bytes(1024, sp_degree=1, num_layers=1) == 1024 * 139_400
    assert cost.chunk_activation_bytes(16_384, sp_degree=16, num_layers=1) == 1024 * 151_688
    # s = 8: one K/V head per rank, no replication; only the second copy of the output
    assert cost.chunk_activation_bytes(8192, sp_degree=8, num_layers=1) == 1024 * (139_400 + 8_192)


def test_logits_follow_the_loss_dtype() -> None:
    """llama3-8b head (vocabulary 128,256): final norm in + out 2 x 4096 elements + fp32 rstd, and the saved
    log-softmax: fp32 for the bf16 model (the loss upcasts), float64 for a float64 model (it does not narrow)."""
    bf16 = preset_profile(CLUSTERS["a800-80g-4x8"], MODELS["llama3-8b"])
    assert bf16.head_activation_bytes_per_token == 2 * 4096 * 2 + 4 + 4 * 128_256
    wide = MODELS["llama3-8b"].model_copy(update={"bytes_per_element": 8})
    f64 = preset_profile(CLUSTERS["a800-80g-4x8"], wide)
    assert f64.head_activation_bytes_per_token == 2 * 4096 * 8 + 4 + 8 * 128_256


@pytest.mark.parametrize("sp_degree", [1, 4])
def test_a_deferring_backward_rises_only_by_operands_beyond_the_activations_they_replace(sp_degree: int) -> None:
    """Back-propagating a kept layer frees its activations and queues its GEMMs' inputs and output gradients for the
    W op. With the preset's fused-kernel bytes a Llama layer's operands (inputs 2h + q + f, gradients q + 2kv + 2h
    + 2f) come to its activations (4h + 2q + 2kv + 3f) less the fp32 norm and softmax statistics, so the B op peaks
    at its start (rise 0), also for a model whose attention width q exceeds its hidden size."""
    cluster = CLUSTERS["a800-80g-4x8"]
    llama = MODELS["llama2-7b"]
    cost = CostModel.from_specs(cluster, llama)
    assert cost.deferring_backward_bytes(4096, sp_degree) == 0.0
    assert cost.weight_grad_operand_bytes(4096, sp_degree) <= cost.layer_activation_bytes(4096, sp_degree)
    wide = llama.model_copy(update={"name": "wide-attention", "head_dim": 2 * llama.head_dim})
    wide_cost = CostModel.from_specs(cluster, wide)
    assert wide_cost.deferring_backward_bytes(4096, sp_degree) == 0.0
    tokens = 4096 // sp_degree
    stats = profile_presets.SOFTMAX_STATS_BYTES * wide.num_heads + 2 * profile_presets.NORM_STATS_BYTES
    operands = wide_cost.weight_grad_operand_bytes(4096, sp_degree)
    extra = profile_presets.ulysses_extra_bytes_per_token_layer(wide) if sp_degree > 1 else 0.0
    assert wide_cost.layer_activation_bytes(4096, sp_degree) == pytest.approx(operands + tokens * (stats + extra))


def test_query_width_tensors_are_priced_at_the_query_width() -> None:
    """q and the attention output (the out-projection's input) have heads x head_dim elements per token, which
    differs from the hidden size in e.g. Qwen3-4B (32 x 128 = 4096 against 2560): doubling head_dim adds
    2 (q - h) elements per token to a layer's activations besides the wider k and v, and the Ulysses copy of the
    output is q wide."""
    llama = MODELS["llama2-7b"]
    wide = llama.model_copy(update={"name": "wide-attention", "head_dim": 2 * llama.head_dim})
    e, h = llama.bytes_per_element, llama.hidden_size
    assert wide.q_dim == 2 * h
    grown = profile_presets.activation_bytes_per_token_layer(wide) - profile_presets.activation_bytes_per_token_layer(
        llama
    )
    assert grown == e * (2 * (wide.q_dim - h) + 2 * (wide.kv_dim - llama.kv_dim))
    assert profile_presets.ulysses_extra_bytes_per_token_layer(wide) == e * wide.q_dim
    assert profile_presets.ulysses_extra_bytes_per_token_layer(llama) == e * h
