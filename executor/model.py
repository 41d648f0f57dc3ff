"""Llama-style decoder built from a `proto.ModelSpec`, instantiable by layer range (one pipeline stage).

RMSNorm -> attention (RoPE, GQA) -> residual -> RMSNorm -> SwiGLU (or GELU) MLP -> residual.
Tokens are packed along one dimension, without a batch dimension: a stage sees (T,) token ids or a
(T, H) hidden state, plus (T,) RoPE positions counted inside each *original* sequence (a segment
[start, end) uses positions start..end-1, so slices of one sequence rotate exactly like the whole).

The model knows nothing about parallelism: attention calls `attend(layer, q, k, v)`, supplied by the
caller (plain varlen attention in one process, Ulysses over an SP group, K/V caches for slices).

Initialisation is deterministic per parameter *name* (seed, global name), so a stage holding layers
[lo, hi) gets exactly the weights those layers have in the whole model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from proto.model import ModelSpec


class AttendFn(Protocol):
    """Causal attention for one layer: q (T, h_q, d), k/v (T, h_kv, d) -> (T, h_q, d)."""

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, 1, head_dim) for the given (T,) integer positions (computed in float64)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (T, d/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None, :]  # (T, 1, d)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (Llama/HF convention). x (T, h, d).

    Computed in x's dtype: under bf16 autocast q and k leave their projections in bf16, and fp32 tables would
    promote them to fp32, which the fused attention kernels refuse and which doubles the K/V kept for backward."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.wq = nn.Linear(spec.hidden_size, spec.num_heads * spec.head_dim, bias=False)
        self.wk = nn.Linear(spec.hidden_size, spec.kv_dim, bias=False)
        self.wv = nn.Linear(spec.hidden_size, spec.kv_dim, bias=False)
        self.wo = nn.Linear(spec.num_heads * spec.head_dim, spec.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: AttendFn) -> torch.Tensor:
        t = x.shape[0]
        q = self.wq(x).view(t, self.num_heads, self.head_dim)  # (T, h_q, d)
        k = self.wk(x).view(t, self.num_kv_heads, self.head_dim)  # (T, h_kv, d)
        v = self.wv(x).view(t, self.num_kv_heads, self.head_dim)  # (T, h_kv, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = attend(self.layer, q, k, v)  # (T, h_q, d)
        return self.wo(y.reshape(t, self.num_heads * self.head_dim))  # (T, H)


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.gated = spec.gated_mlp
        self.w_up = nn.Linear(spec.hidden_size, spec.ffn_hidden_size, bias=False)
        self.w_gate = nn.Linear(spec.hidden_size, spec.ffn_hidden_size, bias=False) if spec.gated_mlp else None
        self.w_down = nn.Linear(spec.ffn_hidden_size, spec.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w_gate is not None:
            return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))  # SwiGLU
        return self.w_down(F.gelu(self.w_up(x)))


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.attn = Attention(spec, layer)
        self.mlp_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.mlp = MLP(spec)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: AttendFn, *, recompute_mlp: bool = False
    ) -> torch.Tensor:
        """`recompute_mlp`: the MLP half keeps only its input and reruns its forward during backward (activation
        checkpointing of the half that holds most of the layer's bytes and little of its time on long sequences);
        the attention half keeps its activations."""
        x = x + self.attn(self.attn_norm(x), cos, sin, attend)
        if recompute_mlp:
            return x + checkpoint(self.mlp_branch, x, use_reentrant=False)
        return x + self.mlp_branch(x)

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP half without its residual: norm, then MLP."""
        return self.mlp(self.mlp_norm(x))


class DecoderStage(nn.Module):
    """Layers [lo, hi) of the decoder; the embedding when lo == 0; final norm + LM head when hi == num_layers.

    Parameter names are global (`layers.5.attn.wq.weight`), so the state dicts of all stages of a
    pipeline merge into the state dict of the whole model. With tied embeddings and P > 1 both the first
    and the last stage hold `embed.weight` (the same values: the executor keeps them equal).
    """

    def __init__(self, spec: ModelSpec, layer_range: tuple[int, int] | None = None) -> None:
        super().__init__()
        lo, hi = layer_range if layer_range is not None else (0, spec.num_layers)
        assert 0 <= lo < hi <= spec.num_layers, f"layer range [{lo}, {hi}) outside [0, {spec.num_layers})"
        self.spec, self.lo, self.hi = spec, lo, hi
        self.is_first, self.is_last = lo == 0, hi == spec.num_layers
        # tied: the last stage holds its own copy of the shared matrix (same name, same init) as its LM head;
        # the executor sums the two copies' gradients each step, so they stay equal
        holds_embedding = self.is_first or (self.is_last and spec.tie_embeddings)
        self.embed = nn.Embedding(spec.vocab_size, spec.hidden_size) if holds_embedding else None
        self.layers = nn.ModuleDict({str(i): Block(spec, i) for i in range(lo, hi)})
        self.norm = RMSNorm(spec.hidden_size, spec.norm_eps) if self.is_last else None
        self.lm_head = (
            nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
            if self.is_last and not spec.tie_embeddings
            else None
        )

    def forward(
        self,
        inputs: torch.Tensor,
        positions: torch.Tensor,
        attend: AttendFn,
        recompute_layers: int = 0,
        *,
        recompute_mlp_only: bool = False,
    ) -> torch.Tensor:
        """inputs: (T,) token ids on the first stage, else (T, H) hidden. Returns (T, V) logits on the
        last stage, else (T, H) hidden. The first `recompute_layers` blocks keep no activations and
        recompute their forward during backward (activation checkpointing); with `recompute_mlp_only` they
        keep their attention half's activations and recompute only their MLP half (`RecomputeScope.MLP`)."""
        assert 0 <= recompute_layers <= len(self.layers), f"recompute {recompute_layers} of {len(self.layers)} layers"
        if self.is_first:
            assert self.embed is not None
            assert inputs.dim() == 1, f"first stage takes (T,) token ids, got {tuple(inputs.shape)}"
            x = self.embed(inputs)  # (T, H)
        else:
            assert inputs.dim() == 2, f"stage {self.lo}.. takes (T, H) hidden states, got {tuple(inputs.shape)}"
            x = inputs
        cos, sin = rope_cos_sin(positions, self.spec.head_dim, self.spec.rope_theta, x.dtype)
        for i, block in enumerate(self.layers.values()):
            if i >= recompute_layers:
                x = block(x, cos, sin, attend)
            elif recompute_mlp_only:
                x = block(x, cos, sin, attend, recompute_mlp=True)
            else:
                x = checkpoint(block, x, cos, sin, attend, use_reentrant=False)
        if not self.is_last:
            return x
        assert self.norm is not None
        x = self.norm(x)
        head = self.lm_head if self.lm_head is not None else self.embed  # the embedding when tied
        assert head is not None
        return F.linear(x, head.weight)  # (T, V)


def init_parameters(module: nn.Module, seed: int) -> None:
    """Deterministic init from (seed, parameter name): norms 1, embedding N(0, 1), linears N(0, 1/fan_in).

    The unit-variance scales keep activations O(1) in a tiny model, so a wrong mask or a dropped
    gradient shows up as an O(1) error in tests.
    """
    with torch.no_grad():
        for name, param in module.named_parameters():
            gen = torch.Generator().manual_seed(_name_seed(seed, name))
            if name.endswith("norm.weight"):
                param.fill_(1.0)
                continue
            std = 1.0 if name.startswith("embed.") else 1.0 / math.sqrt(param.shape[1])
            values = torch.randn(param.shape, generator=gen, dtype=torch.float64) * std
            param.copy_(values.to(param.dtype))


def build_stage(
    spec: ModelSpec,
    *,
    seed: int,
    layer_range: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> DecoderStage:
    """A stage (the whole model by default) with deterministic weights in `dtype` on `device`."""
    stage = DecoderStage(spec, layer_range).to(dtype=dtype)
    init_parameters(stage, seed)
    return stage.to(device)


def named_gradients(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, grad) for every parameter; a parameter that received no gradient yields zeros."""
    for name, param in module.named_parameters():
        yield name, param.grad if param.grad is not None else torch.zeros_like(param)


def _name_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
