"""The Llama-style decoder: deterministic init by name, stages composing to the whole model, packed
sequences with per-sequence RoPE positions, recompute, and the synthetic tokens / chunk shards it eats."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from executor.attention import varlen_causal_attention
from executor.chunk_shards import IGNORE_INDEX, chunk_layout, materialize_shard, sequence_inputs, total_targets
from executor.model import build_stage
from executor.synthetic_tokens import synthetic_token_ids
from proto.plan import Chunk, Segment
from tests.executor.executor_fixtures import tiny_model

pytestmark = pytest.mark.timeout(60)


def _attend(bounds: list[int]):  # type: ignore[no-untyped-def]
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
    seqs = [sequence_inputs(i, n, token_seed=3, vocab_size=spec.vocab_size) for i, n in enumerate(lengths)]
    bounds = [0, 5, 6, 15]
    packed = model(torch.cat([s.token_ids for s in seqs]), torch.cat([s.positions for s in seqs]), _attend(bounds))
    separate = torch.cat([model(s.token_ids, s.positions, _attend([0, s.token_ids.numel()])) for s in seqs])
    torch.testing.assert_close(packed, separate, rtol=1e-12, atol=1e-12)


def test_recompute_gives_identical_gradients() -> None:
    spec = tiny_model()
    grads = []
    for recompute in (0, 1, 2):
        model = build_stage(spec, seed=4, dtype=torch.float64)
        seq = sequence_inputs(0, 12, token_seed=5, vocab_size=spec.vocab_size)
        logits = model(seq.token_ids, seq.positions, _attend([0, 12]), recompute)
        F.cross_entropy(logits, seq.targets, ignore_index=IGNORE_INDEX, reduction="sum").backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for other in grads[1:]:
        for name, g in grads[0].items():
            torch.testing.assert_close(other[name], g, rtol=1e-12, atol=1e-12)


def test_synthetic_tokens_are_slice_independent() -> None:
    whole = synthetic_token_ids(seed=1, seq_id=4, start=0, end=50, vocab_size=100)
    parts = torch.cat(
        [synthetic_token_ids(seed=1, seq_id=4, start=a, end=b, vocab_size=100) for a, b in [(0, 7), (7, 50)]]
    )
    assert torch.equal(whole, parts)
    assert int(whole.min()) >= 0 and int(whole.max()) < 100
    assert not torch.equal(whole, synthetic_token_ids(seed=2, seq_id=4, start=0, end=50, vocab_size=100))
    assert not torch.equal(whole, synthetic_token_ids(seed=1, seq_id=5, start=0, end=50, vocab_size=100))


@pytest.mark.parametrize("sp", [1, 2, 4, 8])
def test_chunk_shards_tile_the_chunk(sp: int) -> None:
    """SP shards concatenate to the whole chunk plus padding; targets follow the original sequence, so a
    slice's last token predicts the next slice's first token and only a sequence's last token has none."""
    lengths = {3: 10, 8: 1, 9: 6}
    chunk = Chunk(
        segments=[
            Segment(seq_id=3, start=4, end=7),
            Segment(seq_id=8, start=0, end=1),
            Segment(seq_id=9, start=0, end=6),
        ]
    )
    layout = chunk_layout(chunk, sp)
    assert layout.num_tokens == 10 and layout.padded_tokens % sp == 0 and layout.padded_tokens - 10 < sp
    shards = [materialize_shard(layout, r, lengths=lengths, token_seed=1, vocab_size=50) for r in range(sp)]
    ids = torch.cat([s.token_ids for s in shards])
    pos = torch.cat([s.positions for s in shards])
    tgt = torch.cat([s.targets for s in shards])
    seq3 = synthetic_token_ids(seed=1, seq_id=3, start=0, end=10, vocab_size=50)
    seq9 = synthetic_token_ids(seed=1, seq_id=9, start=0, end=6, vocab_size=50)
    assert ids[:3].tolist() == seq3[4:7].tolist() and pos[:3].tolist() == [4, 5, 6]
    assert tgt[:3].tolist() == seq3[5:8].tolist()  # token 6 predicts token 7 of the next slice
    assert tgt[3].item() == IGNORE_INDEX  # a length-1 sequence has no target
    assert tgt[4:10].tolist() == [*seq9[1:].tolist(), IGNORE_INDEX]
    assert (tgt[10:] == IGNORE_INDEX).all() and (pos[10:] == 0).all()
    assert sum(s.num_targets for s in shards) == 3 + 0 + 5
    assert total_targets(lengths) == 9 + 0 + 5
