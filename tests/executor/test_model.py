"""The Llama-style decoder: deterministic init by name, stages composing to the whole model, packed
sequences with per-sequence RoPE positions, recompute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from executor.attention.backends import varlen_causal_attention
from executor.model import AttendFn, build_stage
from executor.parallel.pipeline.shards import IGNORE_INDEX, sequence_inputs
from executor.verify.synthetic_tokens import SyntheticTokens
from tests.executor.executor_fixtures import tiny_model

pytestmark = pytest.mark.timeout(60)


def _attend(bounds: list[int]) -> AttendFn:
    def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return varlen_causal_attention(q, k, v, bounds, backend="naive")

    return attend


def test_stage_weights_are_the_whole_models_weights() -> None:
    """A stage built for layers [1, 2) holds exactly the whole model's layer-1 weights (init by name)."""
    spec = tiny_model(num_layers=3)
    whole = dict(build_stage(spec, seed=7, dtype=torch.float64).named_parameters())
    first = dict(build_stage(spec, seed=7, layer_range=(0, 1), dtype=torch.float64).named_parameters())
    middle = dict(build_stage(spec, seed=7, layer_range=(1, 2), dtype=torch.float64).named_parameters())
    last = dict(build_stage(spec, seed=7, layer_range=(2, 3), dtype=torch.float64).named_parameters())
    assert "embed.weight" in first and "embed.weight" not in middle and "lm_head.weight" in last
    assert set(first) | set(middle) | set(last) == set(whole)
    for part in (first, middle, last):
        for name, p in part.items():
            assert torch.equal(p, whole[name]), name
    other = dict(build_stage(spec, seed=8, dtype=torch.float64).named_parameters())
    assert not torch.equal(other["layers.0.attn.wq.weight"], whole["layers.0.attn.wq.weight"])


def test_stages_compose_to_the_whole_model() -> None:
    spec = tiny_model(num_layers=3)
    ids = torch.randint(0, spec.vocab_size, (10,), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(10)
    attend = _attend([0, 10])
    whole = build_stage(spec, seed=1, dtype=torch.float64)(ids, pos, attend)
    h = build_stage(spec, seed=1, layer_range=(0, 2), dtype=torch.float64)(ids, pos, attend)
    out = build_stage(spec, seed=1, layer_range=(2, 3), dtype=torch.float64)(h, pos, attend)
    torch.testing.assert_close(out, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("overrides", [{}, {"gated_mlp": False, "tie_embeddings": True, "num_kv_heads": 8}])
def test_packed_sequences_equal_separate_sequences(overrides: dict[str, object]) -> None:
    """Packing sequences with per-sequence positions gives each sequence's own logits (RoPE restarts at 0)."""
    spec = tiny_model(**overrides)
    model = build_stage(spec, seed=2, dtype=torch.float64)
    lengths = [5, 1, 9]
    seqs = [sequence_inputs(i, n, tokens=SyntheticTokens(3, spec.vocab_size)) for i, n in enumerate(lengths)]
    bounds = [0, 5, 6, 15]
    packed = model(torch.cat([s.token_ids for s in seqs]), torch.cat([s.positions for s in seqs]), _attend(bounds))
    separate = torch.cat([model(s.token_ids, s.positions, _attend([0, s.token_ids.numel()])) for s in seqs])
    torch.testing.assert_close(packed, separate, rtol=1e-12, atol=1e-12)


def test_recompute_gives_identical_gradients() -> None:
    spec = tiny_model()
    grads = []
    for recompute in (0, 1, 2):
        model = build_stage(spec, seed=4, dtype=torch.float64)
        seq = sequence_inputs(0, 12, tokens=SyntheticTokens(5, spec.vocab_size))
        logits = model(seq.token_ids, seq.positions, _attend([0, 12]), recompute)
        F.cross_entropy(logits, seq.targets, ignore_index=IGNORE_INDEX, reduction="sum").backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for other in grads[1:]:
        for name, g in grads[0].items():
            torch.testing.assert_close(other[name], g, rtol=1e-12, atol=1e-12)


def test_attention_inputs_stay_in_autocast_dtype() -> None:
    """Under bf16 autocast (how the executor trains on CUDA) q, k and v reach attention in bf16: RoPE must not
    promote them to its fp32 tables' dtype, since the fused CUDA kernels take only fp16/bf16 (found on an H200)."""
    spec = tiny_model(num_layers=2)
    stage = build_stage(spec, seed=3, dtype=torch.float32)
    seen: list[tuple[torch.dtype, ...]] = []

    def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        seen.append((q.dtype, k.dtype, v.dtype))
        return varlen_causal_attention(q, k, v, [0, q.shape[0]], backend="sdpa")

    tokens = torch.arange(12) % spec.vocab_size
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = stage(tokens, torch.arange(12), attend)
    assert seen == [(torch.bfloat16,) * 3] * 2, seen
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in stage.parameters())
