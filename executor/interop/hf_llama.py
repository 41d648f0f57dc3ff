"""Hugging Face Llama-family checkpoints (`config.json` + `*.safetensors`) to and from a `DecoderStage`.

Names: ours are global per stage (`layers.5.attn.wq.weight`); Hugging Face's are `model.layers.5.self_attn.
q_proj.weight`. The two conventions that silently break a port agree here, so weights map one to one:

- RoPE: our `apply_rope` is rotate-half over the two halves of each head (Hugging Face's `rotate_half`), so the
  q/k projections are used as stored (Meta's original interleaved-pair checkpoints need the permutation that
  Hugging Face's conversion script applies; we read converted checkpoints only);
- GQA: key/value head j serves query heads [j*g, (j+1)*g) (Hugging Face's `repeat_kv`, i.e. repeat_interleave),
  so k/v projections keep their head order.

Loading reads only the stage's tensors: the file of each tensor comes from `model.safetensors.index.json` when
there is one (else every `*.safetensors` file's header is listed), and each tensor is read on its own through
safetensors' lazy `safe_open`, so a rank of stage p never touches the other stages' bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from executor.model import DecoderStage
from proto.model import ModelSpec

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w_gate.weight": "mlp.gate_proj.weight",
    "mlp.w_up.weight": "mlp.up_proj.weight",
    "mlp.w_down.weight": "mlp.down_proj.weight",
}
_OTHER_NAMES = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
_UNSUPPORTED = ("rope_scaling", "attention_bias", "mlp_bias")
"""config.json features our decoder does not implement (a checkpoint using them is refused, not misread)."""


class CheckpointFormatError(ValueError):
    """A Hugging Face checkpoint that cannot be loaded into this model (the message says which file and field)."""


def hf_name(name: str) -> str:
    """Our parameter name -> the Hugging Face Llama name (the LM head keeps its name)."""
    if name.startswith("layers."):
        _, index, rest = name.split(".", 2)
        return f"model.layers.{index}.{_LAYER_NAMES[rest]}"
    return _OTHER_NAMES.get(name, name)


def hf_config(spec: ModelSpec, dtype: torch.dtype) -> dict[str, Any]:
    """A `config.json` for `LlamaForCausalLM` with `spec`'s shape."""
    if not spec.gated_mlp:
        raise CheckpointFormatError(f"model {spec.name} has a GELU MLP; the Llama format stores SwiGLU (gated_mlp)")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.ffn_hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "vocab_size": spec.vocab_size,
        "hidden_act": "silu",
        "rms_norm_eps": spec.norm_eps,
        "rope_theta": spec.rope_theta,
        "tie_word_embeddings": spec.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def read_spec(path: Path, *, name: str = "hf") -> ModelSpec:
    """The model shape of the checkpoint in `path` (its `config.json`), refusing features we do not implement."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointFormatError(f"{path}: no {CONFIG_FILE} (expected a Hugging Face checkpoint folder)")
    config = json.loads(config_path.read_text())
    for key in _UNSUPPORTED:
        if config.get(key):
            raise CheckpointFormatError(f"{config_path}: {key}={config[key]!r} is not supported by this executor")
    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointFormatError(f"{config_path}: hidden_act={config['hidden_act']!r}; Llama-family models use silu")
    spec = ModelSpec.from_hf_config(config, name=name)
    if config.get("head_dim", spec.head_dim) != spec.head_dim:
        raise CheckpointFormatError(
            f"{config_path}: head_dim={config['head_dim']} differs from hidden_size / num_attention_heads "
            f"({spec.head_dim}); this executor derives the head size from them"
        )
    return spec


def check_compatible(spec: ModelSpec, checkpoint: ModelSpec, where: Path) -> None:
    """Refuse a checkpoint whose shape differs from the model being trained (field by field)."""
    fields = (
        "num_layers", "hidden_size", "num_heads", "num_kv_heads", "ffn_hidden_size", "vocab_size", "gated_mlp",
        "tie_embeddings",
    )  # fmt: skip
    for field in fields:
        ours, theirs = getattr(spec, field), getattr(checkpoint, field)
        if ours != theirs:
            raise CheckpointFormatError(
                f"{where}: {field} is {theirs} in the checkpoint but {ours} in model {spec.name}: train the "
                "checkpoint's own shape (pass its config.json as the model)"
            )


def tensor_files(path: Path) -> dict[str, Path]:
    """{Hugging Face tensor name: the safetensors file holding it} (headers only, no tensor data)."""
    path = Path(path)
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointFormatError(f"{path}: no *.safetensors files")
    located: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            located.update(dict.fromkeys(handle.keys(), file))
    return located


@torch.no_grad()
def load_pretrained_stage(module: DecoderStage, path: str | Path) -> list[str]:
    """Copy the weights of `module`'s layer range (and its embedding / final norm / LM head) from the Hugging
    Face checkpoint in `path` into `module`, in place and in the module's dtype; returns the tensors read.

    Call it on the plain stage, before its model states are sharded or flattened (`PlanExecutor` does)."""
    from safetensors import safe_open

    path = Path(path)
    check_compatible(module.spec, read_spec(path), path)
    files = tensor_files(path)
    read = []
    for name, param in module.named_parameters():
        key = hf_name(name)
        if key == "lm_head.weight" and key not in files and module.spec.tie_embeddings:
            key = "model.embed_tokens.weight"
        if key not in files:
            raise CheckpointFormatError(f"{path}: tensor {key} (our {name}) is missing")
        with safe_open(str(files[key]), framework="pt") as handle:
            tensor = handle.get_tensor(key)
        if tuple(tensor.shape) != tuple(param.shape):
            raise CheckpointFormatError(
                f"{files[key]}: {key} has shape {tuple(tensor.shape)}, the model expects {tuple(param.shape)}"
            )
        param.copy_(tensor.to(dtype=param.dtype, device=param.device))
        read.append(key)
    return read


def hf_state_dict(state: Mapping[str, torch.Tensor], spec: ModelSpec, dtype: torch.dtype | None = None) -> dict:
    """Our whole-model state dict -> Hugging Face names (contiguous CPU tensors, optionally cast to `dtype`)."""
    expected = {hf_name(n) for n in _whole_model_names(spec)}
    out = {}
    for name, tensor in state.items():
        key = hf_name(name)
        if key not in expected:
            raise CheckpointFormatError(f"tensor {name} is not a parameter of model {spec.name}")
        out[key] = tensor.detach().to("cpu", dtype=dtype or tensor.dtype).contiguous()
    missing = sorted(expected - set(out))
    if missing:
        raise CheckpointFormatError(f"the model state lacks {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    return out


def save_pretrained(
    state: Mapping[str, torch.Tensor], spec: ModelSpec, out_dir: str | Path, dtype: torch.dtype | None = None
) -> Path:
    """Write `state` (our names, whole model) as `config.json` + `model.safetensors` under `out_dir`."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = hf_state_dict(state, spec, dtype)
    saved_dtype = dtype or next(iter(tensors.values())).dtype
    (out / CONFIG_FILE).write_text(json.dumps(hf_config(spec, saved_dtype), indent=2) + "\n")
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    return out


def _whole_model_names(spec: ModelSpec) -> Iterable[str]:
    with torch.device("meta"):  # names only: no memory for a 7B model
        return [n for n, _ in DecoderStage(spec).named_parameters()]
