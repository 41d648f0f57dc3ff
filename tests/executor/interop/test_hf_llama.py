"""Hugging Face Llama checkpoints: round trip through safetensors, stage-wise lazy loading, `helix export`, and
`transformers`' `LlamaForCausalLM` as an independent referee of the decoder (no downloads: random tiny models).

The referee matters because the executor is checked against a single-process reference built from the same
`executor.model`: a RoPE, GQA or norm bug shared by both passes every equivalence test. Hugging Face's model,
loaded with the same weights, disagrees with such a bug by O(1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from executor.attention.backends import varlen_causal_attention
from executor.interop.hf_llama import (
    CheckpointFormatError,
    hf_config,
    load_pretrained_stage,
    read_spec,
    save_pretrained,
    tensor_files,
)
from executor.model import DecoderStage, build_stage
from tests.executor.executor_fixtures import tiny_model

pytestmark = pytest.mark.timeout(120)

REFEREE_TOL = 1e-6
"""Hugging Face computes RMSNorm and the RoPE angles in float32 even for a float64 model, so it agrees with our
float64 decoder to ~1e-7 relative, not 1e-12; a wrong rotation or K/V head order moves logits by O(0.1-1)."""


def _logits(stage: DecoderStage, tokens: torch.Tensor) -> torch.Tensor:
    n = tokens.numel()

    def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return varlen_causal_attention(q, k, v, [0, n], backend="sdpa")

    return stage(tokens, torch.arange(n), attend)


def _tokens(vocab: int, n: int = 37, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


SPECS = {
    "gqa": tiny_model(num_layers=3, num_heads=8, num_kv_heads=2, rope_theta=500000.0, norm_eps=1e-5),
    "gqa-tied": tiny_model(num_layers=2, num_heads=4, num_kv_heads=1, tie_embeddings=True, norm_eps=1e-6),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_round_trip_keeps_every_weight_and_the_logits(name: str, tmp_path: Path) -> None:
    """save_pretrained then load_pretrained_stage into a differently seeded model gives bit-identical weights
    and logits; a stage reads only its own tensors and the stages chained give the whole model's logits."""
    spec = SPECS[name]
    source = build_stage(spec, seed=1, dtype=torch.float64)
    save_pretrained(dict(source.state_dict()), spec, tmp_path)
    assert read_spec(tmp_path).model_dump(exclude={"name", "source", "bytes_per_element"}) == spec.model_dump(
        exclude={"name", "source", "bytes_per_element"}
    )
    target = build_stage(spec, seed=2, dtype=torch.float64)
    assert not torch.equal(target.layers["0"].attn.wq.weight, source.layers["0"].attn.wq.weight)
    load_pretrained_stage(target, tmp_path)
    for (n, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    tokens = _tokens(spec.vocab_size)
    assert torch.equal(_logits(source, tokens), _logits(target, tokens))
    # two stages: each reads its own tensors only, and the pipeline reproduces the whole model
    first = build_stage(spec, seed=3, layer_range=(0, 1), dtype=torch.float64)
    last = build_stage(spec, seed=3, layer_range=(1, spec.num_layers), dtype=torch.float64)
    read_first, read_last = load_pretrained_stage(first, tmp_path), load_pretrained_stage(last, tmp_path)
    assert all(".layers.0." in k or "layers" not in k for k in read_first)
    assert not any(".layers.0." in k for k in read_last)
    n = tokens.numel()

    def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return varlen_causal_attention(q, k, v, [0, n], backend="sdpa")

    hidden = first(tokens, torch.arange(n), attend)
    assert torch.equal(last(hidden, torch.arange(n), attend), _logits(source, tokens))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_transformers_llama_is_an_independent_referee(name: str, tmp_path: Path) -> None:
    """`LlamaForCausalLM` built from our config.json and loaded with our exported weights produces our logits
    and loss (float64). Fails if RoPE rotates the wrong way or is dropped, if K/V heads are tiled instead of
    interleaved, or if a norm is misplaced, even though our own reference would share such a bug."""
    transformers = pytest.importorskip("transformers", reason="transformers is a test-only dependency (dev extra)")
    from safetensors.torch import load_file

    spec = SPECS[name]
    ours = build_stage(spec, seed=5, dtype=torch.float64)
    save_pretrained(dict(ours.state_dict()), spec, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    referee = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).to(torch.float64).eval()
    missing, unexpected = referee.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # tied: the head is shared
    tokens = _tokens(spec.vocab_size, n=29, seed=4)
    with torch.no_grad():
        theirs = referee(input_ids=tokens[None], labels=tokens[None])
        mine = _logits(ours, tokens)
    scale = float(mine.abs().max())
    assert float((theirs.logits[0] - mine).abs().max()) <= REFEREE_TOL * scale
    our_loss = F.cross_entropy(mine[:-1], tokens[1:])
    assert abs(float(theirs.loss) - float(our_loss)) <= REFEREE_TOL * abs(float(our_loss))


def test_sharded_checkpoint_is_read_through_its_index(tmp_path: Path) -> None:
    """A checkpoint split over several files with `model.safetensors.index.json` loads from the files the index
    names (and a stage opens only the files that hold its tensors)."""
    from safetensors.torch import load_file, save_file

    spec = SPECS["gqa"]
    source = build_stage(spec, seed=1, dtype=torch.float64)
    save_pretrained(dict(source.state_dict()), spec, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    parts: dict[str, dict[str, torch.Tensor]] = {
        "model-00001-of-00002.safetensors": {},
        "model-00002-of-00002.safetensors": {},
    }
    for key, tensor in tensors.items():
        parts["model-00001-of-00002.safetensors" if ".layers.2." not in key else "model-00002-of-00002.safetensors"][
            key
        ] = tensor
    weight_map = {}
    for file, part in parts.items():
        save_file(part, str(tmp_path / file))
        weight_map.update(dict.fromkeys(part, file))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert set(tensor_files(tmp_path)) == set(tensors)
    stage = build_stage(spec, seed=9, layer_range=(0, 2), dtype=torch.float64)
    read = load_pretrained_stage(stage, tmp_path)
    assert {weight_map[k] for k in read} == {"model-00001-of-00002.safetensors"}
    assert torch.equal(stage.layers["1"].mlp.w_up.weight, source.layers["1"].mlp.w_up.weight)


def test_mismatched_checkpoints_are_refused_with_the_field(tmp_path: Path) -> None:
    """A checkpoint of another shape, or with features we do not implement, fails with one line naming the
    field, before any weight is copied."""
    spec = SPECS["gqa"]
    save_pretrained(dict(build_stage(spec, seed=1).state_dict()), spec, tmp_path)
    other = build_stage(tiny_model(num_layers=3, num_kv_heads=4), seed=1)
    with pytest.raises(CheckpointFormatError, match="num_kv_heads is 2 in the checkpoint but 4"):
        load_pretrained_stage(other, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "rope_scaling": {"rope_type": "llama3"}}))
    with pytest.raises(CheckpointFormatError, match="rope_scaling"):
        read_spec(tmp_path)
    with pytest.raises(CheckpointFormatError, match="GELU"):
        hf_config(tiny_model(gated_mlp=False), torch.float32)
