"""MLP-only recompute (`RecomputeScope.MLP`): what a recomputed layer then costs in time and keeps in memory.

A layer that recomputes only its MLP half keeps its attention half's activations (and any K/V a later slice reads)
and reruns the MLP's GEMMs in backward, not attention and not the all-to-alls. The numbers below are computed by
hand from the model's widths, not from the module's formulas.
"""

from __future__ import annotations

import pytest

from planner_service.cost_model import ChunkShape, CostModel, profile_presets
from planner_service.errors import InfeasibleWorkload
from planner_service.planner import make_plan
from planner_service.presets import CLUSTERS, MODELS
from planner_service.simulator import simulate
from proto import Batch, PlanOptions, RecomputeScope, validate_plan

LLAMA = MODELS["llama2-7b"]  # h 4096, 32 heads x 128, 32 kv heads, SwiGLU f 11008, bf16
MLP = PlanOptions(recompute_scope=RecomputeScope.MLP)


def test_preset_prices_the_mlp_half_from_the_model_widths() -> None:
    """llama2-7b: the MLP's 3·h·f GEMM parameters are 3·11008 / (3·11008 + 2·(4096 + 4096)) of the layer's GEMM
    work; dropping the MLP frees its norm's output (h), its three f-wide tensors and the norm's fp32 rstd."""
    h, f = 4096, 11008
    assert profile_presets.mlp_linear_share(LLAMA) == pytest.approx(3 * f / (3 * f + 2 * (h + h)))
    assert profile_presets.mlp_recompute_freed_bytes_per_token_layer(LLAMA) == 2 * (h + 3 * f) + 4


@pytest.mark.parametrize("sp_degree", [1, 8])
def test_an_mlp_only_recompute_reruns_the_mlp_gemms_only(sp_degree: int) -> None:
    """Per recomputed layer: 'layer' reruns the forward and its all-to-alls; 'mlp' reruns mlp_linear_share of the
    GEMM term, with no attention (which dominates a 64K sequence) and no all-to-all."""
    cluster = CLUSTERS["a800-80g-4x8"]
    layer_cost = CostModel.from_specs(cluster, LLAMA)
    mlp_cost = CostModel.from_specs(cluster, LLAMA, options=MLP)
    n = 65536
    shape = ChunkShape(num_tokens=n, attn_pairs=float(n) * n)
    whole = layer_cost.layer_terms(shape, sp_degree=sp_degree, spans_nodes=False)
    half = mlp_cost.layer_terms(shape, sp_degree=sp_degree, spans_nodes=False)
    p = layer_cost.profile
    assert whole.recompute_s == pytest.approx(whole.forward_s + whole.alltoall_s)
    assert half.recompute_s == pytest.approx(p.mlp_linear_share * p.linear_s_per_token * n / sp_degree)
    attention = p.attn_s_per_token2 * n * n / sp_degree
    rest = (1 - p.mlp_linear_share) * p.linear_s_per_token * n / sp_degree + p.layer_overhead_s + whole.alltoall_s
    assert whole.recompute_s - half.recompute_s == pytest.approx(attention + rest)  # what 'mlp' does not rerun
    b_layer = layer_cost.stage_backward_s(
        shape, sp_degree=sp_degree, num_layers=4, spans_nodes=False, is_last_stage=False, recompute_layers=3
    )
    b_mlp = mlp_cost.stage_backward_s(
        shape, sp_degree=sp_degree, num_layers=4, spans_nodes=False, is_last_stage=False, recompute_layers=3
    )
    assert b_layer.recompute_s == pytest.approx(3 * whole.recompute_s)
    assert b_mlp.recompute_s == pytest.approx(3 * half.recompute_s)
    assert b_mlp.compute_s == b_layer.compute_s  # the backward itself is the same


def test_an_mlp_only_recompute_keeps_the_attention_half_and_its_prefix_kv() -> None:
    """A chunk of 8192 tokens at s = 1 on 4 layers, 3 recomputed: 'layer' keeps 3 checkpoints (h each) and no
    prefix K/V in those layers; 'mlp' keeps each recomputed layer's activations less the MLP's, and the prefix K/V
    of every layer (its attention is not rerun)."""
    cluster = CLUSTERS["a800-80g-4x8"]
    layer_cost = CostModel.from_specs(cluster, LLAMA)
    mlp_cost = CostModel.from_specs(cluster, LLAMA, options=MLP)
    p = layer_cost.profile
    n, prefix = 8192, 4096
    shape = ChunkShape(num_tokens=n, attn_pairs=0.0, prefix_kv_rows=prefix)
    kept = p.activation_bytes_per_token_layer
    kv = p.kv_bytes_per_token_layer  # 2 kv widths, 32 kv heads: no replication at s = 1
    layer_held = layer_cost.chunk_activation_bytes(shape, sp_degree=1, num_layers=4, recompute_layers=3)
    mlp_held = mlp_cost.chunk_activation_bytes(shape, sp_degree=1, num_layers=4, recompute_layers=3)
    assert layer_held == pytest.approx(n * (kept + 3 * p.checkpoint_bytes_per_token_layer) + prefix * kv * 1)
    freed = p.mlp_recompute_freed_bytes_per_token_layer
    assert mlp_held == pytest.approx(n * (kept + 3 * (kept - freed)) + prefix * kv * 4)
    assert layer_held < mlp_held < layer_cost.chunk_activation_bytes(shape, sp_degree=1, num_layers=4)


def test_a_job_with_mlp_only_recompute_gets_plans_that_use_it() -> None:
    """On 32 sequences of 32K tokens on an A100 40 GB, FlexSP's layout (SP-8 lanes, 4 sequences each) must
    recompute: the plan made with the job's 'mlp' scope records it, validates, and its recomputed layers cost what
    the cost model charges an MLP half: simulated under the 'layer' scope instead, the same plan recomputes more
    seconds."""
    cluster, model = CLUSTERS["a100-40g-8x8"], LLAMA
    batch = Batch.from_lengths([32768] * 32)
    plan = make_plan(batch=batch, cluster=cluster, model=model, strategy="flexsp", options=MLP, time_limit_s=1.0)
    assert plan.options.recompute_scope is RecomputeScope.MLP
    validate_plan(plan, batch=batch, cluster=cluster, model=model)
    assert any(any(map(any, lane.recompute)) for lane in plan.lanes)
    as_mlp = simulate(plan, batch, CostModel.from_specs(cluster, model)).predicted
    as_layer = simulate(
        plan.model_copy(update={"options": PlanOptions()}), batch, CostModel.from_specs(cluster, model)
    ).predicted
    assert as_mlp.recompute_s == pytest.approx(plan.predicted.recompute_s)
    assert 0 < as_mlp.recompute_s < as_layer.recompute_s


def test_a_profile_that_does_not_price_it_is_refused_naming_the_field() -> None:
    """A hand-written profile without the MLP's bytes (0) cannot plan MLP-only recompute: the call says why."""
    cluster = CLUSTERS["a800-80g-4x8"]
    bare = CostModel.from_specs(cluster, LLAMA).profile.model_copy(
        update={"name": "no-mlp", "mlp_recompute_freed_bytes_per_token_layer": 0.0}
    )
    with pytest.raises(InfeasibleWorkload, match="mlp_recompute_freed_bytes_per_token_layer = 0") as err:
        make_plan(batch=Batch.from_lengths([4096] * 8), cluster=cluster, model=LLAMA, options=MLP, profile=bare)
    assert err.value.field == "options"
