"""Data-parallel gradient sync: the bandwidth it runs at and the dtype it moves.

Guards against the review's findings: the intra-node all-reduce priced at the all-to-all bandwidth (67 GB/s on
A800, where NCCL's ring all-reduce reaches ~150-200 GB/s of bus bandwidth), and a gradient reduction dtype that
was implicit (the model's bf16) while the executor reduces in fp32 under mixed precision.
"""

from __future__ import annotations

import pytest

from planner_service.cost_model import CostModel, preset_profile, profile_presets
from planner_service.presets import CLUSTERS, MODELS
from proto import GradReduceDtype, PipelineSpec, PlanOptions

# llama2-7b: a layer has q, k, v, o (4 x 4096^2 = 67,108,864), the SwiGLU MLP (3 x 4096 x 11008 = 135,266,304)
# and two norm vectors (8,192): 202,383,360 parameters; the embedding is 32,000 x 4096 = 131,072,000.
LLAMA_LAYER = 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096
LLAMA_EMBEDDING = 32_000 * 4096


def test_intra_node_allreduce_runs_at_its_own_bus_bandwidth() -> None:
    """A800 preset: all-to-all 67 GB/s; all-reduce bus bandwidth 67 x 2.3 = 154.1 GB/s (the DGX A100 ratio of
    nccl-tests' ~230 GB/s all_reduce busbw to FlexSP's ~100 GB/s all-to-all). A cluster that states its own
    figure keeps it."""
    a800 = CLUSTERS["a800-80g-4x8"]
    assert profile_presets.INTRA_ALLREDUCE_TO_ALLTOALL == 2.3
    assert preset_profile(a800, MODELS["llama2-7b"]).allreduce_bw_intra == pytest.approx(154.1e9)
    measured = a800.model_copy(update={"intra_node_allreduce_bandwidth": 180e9})
    assert preset_profile(measured, MODELS["llama2-7b"]).allreduce_bw_intra == 180e9


def test_stage_sync_volume_follows_the_reduce_dtype() -> None:
    """llama2-7b, P = 4 on the A800 preset (latencies zeroed so only volume / bandwidth remains): stage 0 holds 8
    layers + the embedding = 1,750,138,880 parameters on one node of 8 devices. ZeRO-0 all-reduce = reduce-scatter
    + all-gather, each moving 7/8 of the buffer at 154.1 GB/s bus bandwidth. fp32 (the default): 4 bytes per
    gradient -> 2 x 7/8 x 7,000,555,520 / 154.1e9 = 79.5 ms; in bf16 half of that. Before the fix: bf16 at the
    67 GB/s all-to-all rate, 2 x 7/8 x 3,500,277,760 / 67e9 = 91.4 ms."""
    cluster = CLUSTERS["a800-80g-4x8"].model_copy(update={"intra_node_latency_s": 0.0, "inter_node_latency_s": 0.0})
    model = MODELS["llama2-7b"]
    assert model.params_per_layer == LLAMA_LAYER == 202_383_360
    pipeline = PipelineSpec.even(model.num_layers, 4)
    params = 8 * LLAMA_LAYER + LLAMA_EMBEDDING
    assert params == 1_750_138_880
    fp32 = CostModel.from_specs(cluster, model)
    assert fp32.options.grad_reduce_dtype is GradReduceDtype.FLOAT32
    assert fp32.grad_reduce_bytes == 4
    assert fp32.grad_sync_s(0, pipeline) == pytest.approx(2 * 7 / 8 * params * 4 / 154.1e9)
    bf16 = CostModel.from_specs(cluster, model, options=PlanOptions(grad_reduce_dtype=GradReduceDtype.MODEL))
    assert bf16.grad_reduce_bytes == 2
    assert bf16.grad_sync_s(0, pipeline) == pytest.approx(2 * 7 / 8 * params * 2 / 154.1e9)


def test_fp32_reduction_never_narrows_a_wider_model_dtype() -> None:
    """'float32' means at least fp32: a float64 model (the CPU equivalence runs) reduces in float64."""
    assert GradReduceDtype.FLOAT32.element_bytes(2) == 4
    assert GradReduceDtype.FLOAT32.element_bytes(8) == 8
    assert GradReduceDtype.MODEL.element_bytes(2) == 2
