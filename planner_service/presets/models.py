"""Model presets: the GPT shapes FlexSP evaluates, public Llama configs, and a tiny model for CPU tests.

Why: parameter and activation sizes drive memory and compute, so presets use the published shapes. HelixTrain's
executor is a Llama-style decoder (RoPE, RMSNorm, no biases); GPT shapes are mapped onto it: same layers, width,
heads and a non-gated 4x GELU MLP, with tied embeddings (Megatron-LM's default). Learned position embeddings and
biases of the original GPT are not counted (<1% of parameters).
"""

from __future__ import annotations

from types import MappingProxyType

from proto import ModelSpec

_GPT_SOURCE = "FlexSP (ASPLOS'25) GPT shapes; GELU MLP 4x hidden, MHA, GPT-2 vocab 50257, tied embeddings"

# FlexSP GPT-7B: 32 layers, hidden 4096, 32 heads (head dim 128). ~6.65e9 parameters.
GPT_7B = ModelSpec(
    name="gpt-7b",
    num_layers=32,
    hidden_size=4096,
    num_heads=32,
    num_kv_heads=32,
    ffn_hidden_size=4 * 4096,
    vocab_size=50257,
    gated_mlp=False,
    tie_embeddings=True,
    source=_GPT_SOURCE,
)

# FlexSP GPT-13B: 40 layers, hidden 5120, 40 heads. ~12.8e9 parameters.
GPT_13B = ModelSpec(
    name="gpt-13b",
    num_layers=40,
    hidden_size=5120,
    num_heads=40,
    num_kv_heads=40,
    ffn_hidden_size=4 * 5120,
    vocab_size=50257,
    gated_mlp=False,
    tie_embeddings=True,
    source=_GPT_SOURCE,
)

# FlexSP GPT-30B: 48 layers, hidden 7168, 56 heads (head dim 128). ~30.0e9 parameters.
GPT_30B = ModelSpec(
    name="gpt-30b",
    num_layers=48,
    hidden_size=7168,
    num_heads=56,
    num_kv_heads=56,
    ffn_hidden_size=4 * 7168,
    vocab_size=50257,
    gated_mlp=False,
    tie_embeddings=True,
    source=_GPT_SOURCE,
)

# meta-llama/Llama-2-7b-hf config.json: 32 layers, 4096, 32 heads (MHA), intermediate 11008, vocab 32000,
# rms_norm_eps 1e-5, rope_theta 10000, untied. 6.74e9 parameters.
LLAMA2_7B = ModelSpec(
    name="llama2-7b",
    num_layers=32,
    hidden_size=4096,
    num_heads=32,
    num_kv_heads=32,
    ffn_hidden_size=11008,
    vocab_size=32000,
    rope_theta=10000.0,
    norm_eps=1e-5,
    source="meta-llama/Llama-2-7b-hf config.json",
)

# meta-llama/Llama-2-13b-hf config.json: 40 layers, 5120, 40 heads (MHA), intermediate 13824, vocab 32000.
# 13.0e9 parameters.
LLAMA2_13B = ModelSpec(
    name="llama2-13b",
    num_layers=40,
    hidden_size=5120,
    num_heads=40,
    num_kv_heads=40,
    ffn_hidden_size=13824,
    vocab_size=32000,
    rope_theta=10000.0,
    norm_eps=1e-5,
    source="meta-llama/Llama-2-13b-hf config.json",
)

# meta-llama/Meta-Llama-3-8B config.json: 32 layers, 4096, 32 query heads, 8 KV heads (GQA), intermediate
# 14336, vocab 128256, rope_theta 500000, rms_norm_eps 1e-5, untied. 8.03e9 parameters.
LLAMA3_8B = ModelSpec(
    name="llama3-8b",
    num_layers=32,
    hidden_size=4096,
    num_heads=32,
    num_kv_heads=8,
    ffn_hidden_size=14336,
    vocab_size=128256,
    rope_theta=500000.0,
    norm_eps=1e-5,
    source="meta-llama/Meta-Llama-3-8B config.json",
)

# For CPU executor tests: small enough for a step in well under a second on one core (DESIGN §13). 8 query
# heads of dim 8 and 2 KV heads, so GQA with fewer KV heads than the SP degree (4, 8) is exercised; ffn 176 is
# Llama's 8/3 x hidden rounded up to a multiple of 16; byte-level vocab 256; float32 (tests run float64).
TINY = ModelSpec(
    name="tiny",
    num_layers=2,
    hidden_size=64,
    num_heads=8,
    num_kv_heads=2,
    ffn_hidden_size=176,
    vocab_size=256,
    bytes_per_element=4,
    source="HelixTrain CPU test model (Llama-style, GQA 8q/2kv)",
)

# For `make demo` and CPU training runs: a Llama-style model that learns something from real text in a few
# minutes on a laptop-class CPU (0.7 M parameters besides the embeddings; a 2,048-token byte-level BPE).
SMALL = ModelSpec(
    name="small",
    num_layers=4,
    hidden_size=128,
    num_heads=8,
    num_kv_heads=2,
    ffn_hidden_size=352,
    vocab_size=2048,
    bytes_per_element=4,
    source="HelixTrain CPU demo model (Llama-style, GQA 8q/2kv, SwiGLU)",
)

MODELS: MappingProxyType[str, ModelSpec] = MappingProxyType(
    {m.name: m for m in (GPT_7B, GPT_13B, GPT_30B, LLAMA2_7B, LLAMA2_13B, LLAMA3_8B, TINY, SMALL)}
)
