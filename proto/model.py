"""The transformer being trained (Llama-style decoder; GPT shapes map onto it)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from proto.cluster import MAX_NAME_CHARS, MAX_SOURCE_CHARS
from proto.wire_types import AS_EXACT_INT, AS_FINITE_NUMBER, ExactBool


class ModelSpec(BaseModel):
    """Shape of a decoder-only transformer with RMSNorm, RoPE, SwiGLU (or GELU MLP) and GQA.

    Cross-field rules: `hidden_size` is divisible by `num_heads`, and `num_heads` by `num_kv_heads`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="custom", max_length=MAX_NAME_CHARS, description="Preset name or a free label.")
    num_layers: Annotated[int, Field(ge=1, le=1024), AS_EXACT_INT] = Field(description="Transformer blocks.")
    hidden_size: Annotated[int, Field(ge=1, le=2**20), AS_EXACT_INT] = Field(description="Model width.")
    num_heads: Annotated[int, Field(ge=1, le=2**14), AS_EXACT_INT] = Field(description="Query heads.")
    num_kv_heads: Annotated[int, Field(ge=1, le=2**14), AS_EXACT_INT] = Field(
        description="Key/value heads (GQA); equals num_heads for MHA."
    )
    ffn_hidden_size: Annotated[int, Field(ge=1, le=2**22), AS_EXACT_INT] = Field(description="Inner width of the MLP.")
    vocab_size: Annotated[int, Field(ge=2, le=2**24), AS_EXACT_INT] = Field(description="Vocabulary size.")
    bytes_per_element: Annotated[int, Field(ge=1, le=8), AS_EXACT_INT] = Field(
        default=2, description="Activation/parameter bytes (2 for bf16)."
    )
    gated_mlp: ExactBool = Field(default=True, description="SwiGLU (3 matrices) rather than a 2-matrix GELU MLP.")
    rope_theta: Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False), AS_FINITE_NUMBER] = Field(
        default=10000.0, description="RoPE base."
    )
    norm_eps: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False), AS_FINITE_NUMBER] = Field(
        default=1e-5, description="RMSNorm epsilon."
    )
    tie_embeddings: ExactBool = Field(default=False, description="LM head shares the embedding matrix.")
    source: str = Field(default="", max_length=MAX_SOURCE_CHARS, description="Where the shape comes from.")

    @model_validator(mode="after")
    def _check_heads(self) -> ModelSpec:
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        """Width of K (or V) per token: kv heads x head dim."""
        return self.num_kv_heads * self.head_dim

    @property
    def params_per_layer(self) -> int:
        """Parameters of one block: q/k/v/o projections, MLP, two norms."""
        h = self.hidden_size
        attn = h * h + 2 * h * self.kv_dim + h * h
        mlp = (3 if self.gated_mlp else 2) * h * self.ffn_hidden_size
        return attn + mlp + 2 * h

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def head_params(self) -> int:
        """Final norm plus the LM head (zero extra matrix when tied)."""
        return self.hidden_size + (0 if self.tie_embeddings else self.vocab_size * self.hidden_size)

    @property
    def total_params(self) -> int:
        return self.num_layers * self.params_per_layer + self.embedding_params + self.head_params

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], name: str = "hf") -> ModelSpec:
        """Build from a Hugging Face `config.json` (Llama/Mistral/Qwen/GPT-NeoX style keys)."""

        def pick(*keys: str, default: Any = None) -> Any:
            for key in keys:
                if key in config and config[key] is not None:
                    return config[key]
            if default is None:
                raise ValueError(f"config.json has none of the keys {', '.join(keys)}")
            return default

        hidden = int(pick("hidden_size", "n_embd", "d_model"))
        heads = int(pick("num_attention_heads", "n_head", "num_heads"))
        act = str(config.get("hidden_act", config.get("activation_function", "silu")))
        dtype = str(config.get("torch_dtype", "bfloat16"))
        return cls(
            name=name,
            num_layers=int(pick("num_hidden_layers", "n_layer", "num_layers")),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=int(pick("num_key_value_heads", default=heads)),
            ffn_hidden_size=int(pick("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)),
            vocab_size=int(pick("vocab_size")),
            bytes_per_element=4 if dtype == "float32" else 2,
            gated_mlp=act in {"silu", "swiglu", "swish"},
            rope_theta=float(config.get("rope_theta", 10000.0)),
            norm_eps=float(pick("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", default=1e-5)),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            source="Hugging Face config.json",
        )
