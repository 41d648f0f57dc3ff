"""The single-process reference: the whole model on the whole batch, one sequence at a time.

Same weights (seed), same token ids (a `TokenSource`), same loss normalisation (sum of token
cross-entropies / target tokens of the global batch) and the same AdamW as the executor, with no
parallelism at all. Every executor result is compared against this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from executor.attention.backends import varlen_causal_attention
from executor.model import build_stage, named_gradients
from executor.parallel.data import AdamWConfig, build_optimizer
from executor.parallel.pipeline.shards import IGNORE_INDEX, TokenSource, sequence_inputs, total_targets
from executor.verify.synthetic_tokens import SyntheticTokens
from proto.batch import Batch
from proto.model import ModelSpec


@dataclass(frozen=True)
class ReferenceStep:
    loss: float
    grads: dict[str, torch.Tensor]


@dataclass(kw_only=True)
class ReferenceTrainer:
    """Whole model + AdamW in one process. `step` returns the loss and gradients before the update."""

    model: ModelSpec
    seed: int
    dtype: torch.dtype = torch.float64
    attention_backend: str = "sdpa"
    optimizer_config: AdamWConfig = field(default_factory=AdamWConfig)

    def __post_init__(self) -> None:
        self.module = build_stage(self.model, seed=self.seed, dtype=self.dtype)
        self.optimizer = build_optimizer(self.module.parameters(), self.optimizer_config)

    def forward_backward(self, batch: Batch, *, tokens: TokenSource) -> ReferenceStep:
        self.module.zero_grad(set_to_none=True)
        norm = max(total_targets(batch.length_of()), 1)
        backend = self.attention_backend
        total = 0.0
        for seq_id, length in zip(batch.seq_ids, batch.lengths, strict=True):
            inputs = sequence_inputs(seq_id, length, tokens=tokens)

            def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n: int = length) -> torch.Tensor:
                return varlen_causal_attention(q, k, v, [0, n], backend=backend)

            logits = self.module(inputs.token_ids, inputs.positions, attend)  # (L, V)
            loss = F.cross_entropy(logits, inputs.targets, ignore_index=IGNORE_INDEX, reduction="sum") / norm
            loss.backward()
            total += float(loss.detach())
        grads = {name: g.detach().clone() for name, g in named_gradients(self.module)}
        return ReferenceStep(total, grads)

    def clip_grad_norm(self, max_norm: float) -> float:
        """torch's own global-norm clipping over the whole model; the norm before clipping."""
        return float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm))

    def gradients(self) -> dict[str, torch.Tensor]:
        return {name: g.detach().clone() for name, g in named_gradients(self.module)}

    def optimizer_step(self) -> None:
        self.optimizer.step()

    def parameters(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.module.named_parameters()}


def reference_step(
    model: ModelSpec, batch: Batch, *, seed: int, token_seed: int, dtype: torch.dtype = torch.float64
) -> ReferenceStep:
    """Loss and gradients of one step of the freshly initialised model (no optimizer update)."""
    tokens = SyntheticTokens(token_seed, model.vocab_size)
    return ReferenceTrainer(model=model, seed=seed, dtype=dtype).forward_backward(batch, tokens=tokens)
