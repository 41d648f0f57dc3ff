"""The K/V cache of earlier slices: leaves recorded once per (sequence, slice, layer), prefixes of later slices."""

from __future__ import annotations

import pytest
import torch

from executor.parallel.pipeline.kv_cache import ChunkKVBinding, SliceKVCache
from proto.plan import Segment

pytestmark = pytest.mark.timeout(60)


def _slice_binding(cache: SliceKVCache, start: int, end: int, *, recompute_layers: int) -> ChunkKVBinding:
    """The binding of a chunk holding slice [start, end) of sequence 5 (12 tokens), on a stage from layer 4."""
    return ChunkKVBinding(
        cache=cache,
        segments=(Segment(seq_id=5, start=start, end=end),),
        cu_seqlens=(0, end - start),
        lengths={5: 12},
        first_layer=4,
        recompute_layers=recompute_layers,
    )


def test_recompute_keeps_the_cached_leaves_and_their_gradients() -> None:
    """A recomputed layer re-runs `bind` in backward: it must reuse the recorded leaves (same objects, same
    values), never replace a leaf that already holds dK/dV from a later slice."""
    cache = SliceKVCache()
    binding = _slice_binding(cache, 0, 7, recompute_layers=1)
    k, v = torch.randn(7, 2, 4, dtype=torch.float64), torch.randn(7, 2, 4, dtype=torch.float64)
    binding.bind(4, k, v)
    (entry,) = cache._entries[(5, 0)].values()
    entry.k.grad = torch.ones_like(entry.k)
    binding.bind(4, k * 2, v * 2)  # what a recomputation with different values would try to record
    again = cache._entries[(5, 0)][4]
    assert again is entry and torch.equal(entry.k, k) and torch.equal(entry.k.grad, torch.ones_like(k))
    assert entry.k.untyped_storage().data_ptr() != k.untyped_storage().data_ptr()  # a recomputed layer copies
    later = _slice_binding(cache, 7, 12, recompute_layers=0)
    _, _, prefixes = later.bind(4, k[:5], v[:5])
    assert prefixes[0][0][0] is entry.k
    with pytest.raises(RuntimeError, match="holds 0 tokens of earlier slices but the slice starting at 7"):
        later.bind(6, k[:5], v[:5])
    binding.release()
    assert cache.keys() == []
