"""Deterministic synthetic token ids: token t of sequence `seq_id` is a pure function of (seed, seq_id, t).

Every rank can materialise just its share of a sequence, and the single-process reference rebuilds the
same ids, without shipping data between processes. A counter-based hash (splitmix64) makes any slice
[start, end) cost O(end - start), independent of what other slices exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def synthetic_token_ids(*, seed: int, seq_id: int, start: int, end: int, vocab_size: int) -> torch.Tensor:
    """(end - start,) int64 ids in [0, vocab_size) for positions start..end-1 of sequence `seq_id`."""
    assert 0 <= start <= end, f"bad token range [{start}, {end})"
    assert vocab_size >= 1, f"vocab_size must be positive, got {vocab_size}"
    with np.errstate(over="ignore"):
        key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        key = _splitmix64(key ^ np.uint64(seq_id & 0xFFFFFFFFFFFFFFFF))
        counters = np.arange(start, end, dtype=np.uint64)
        values = _splitmix64(counters ^ key) & _MASK64
    return torch.from_numpy((values % np.uint64(vocab_size)).astype(np.int64))


@dataclass(frozen=True)
class SyntheticTokens:
    """The token source of `helix verify` (an `executor.parallel.pipeline.shards.TokenSource`)."""

    seed: int
    vocab_size: int

    def __call__(self, seq_id: int, start: int, end: int) -> torch.Tensor:
        return synthetic_token_ids(seed=self.seed, seq_id=seq_id, start=start, end=end, vocab_size=self.vocab_size)
