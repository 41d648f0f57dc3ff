"""K/V of earlier slices of a sequence, for token-level pipelining (DESIGN §3, §9).

A long sequence is cut into slices that run as separate chunks through the same lane. Slice j attends to
the keys and values of slices 0..j-1, which ran earlier, and its backward produces gradients for them.
Per (sequence, slice, layer) this stage keeps the K/V of a non-final slice as *detached leaves*
(head-sharded under Ulysses: exactly what the slice's own attention saw after the all-to-all):

- forward of a later slice: its attention takes the leaves of all earlier slices as a prefix (lower-right
  causal), so its backward accumulates dK/dV into the leaves' `.grad`;
- backward of an earlier slice: `KVGradTap`, an identity on the slice's live K/V placed just before its
  own attention, adds the accumulated leaf gradients to the gradient flowing into its K/V rows. The
  schedule runs backward of slices last-first (validate_plan checks it), so the accumulation is complete
  by then; the slice's leaves are released when its backward ends.

Recompute: a layer that recomputes (activation checkpointing) reruns `bind` during backward. Recording is
idempotent per (sequence, slice, layer), so the recomputed forward reuses the leaves it recorded the
first time and never replaces a leaf that already holds gradient. For a recomputed layer the leaf is a
copy of the K/V rows (they must stay resident while the layer's other activations are dropped); for a
kept layer it is a view of the K/V the attention already saved, so it costs no memory of its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from executor.attention.backends import KVPrefix
from proto.plan import Segment


@dataclass(eq=False)
class KVEntry:
    """K and V leaves (requires_grad) of one slice at one layer: (slice tokens, local kv heads, d) each."""

    k: torch.Tensor
    v: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return self.k.shape[0]


@dataclass(eq=False)
class SliceKVCache:
    """One stage's K/V leaves for one step, keyed by (sequence, slice start) then global layer index.

    Owned by the step's pipeline runtime (never module-level state); empty again when the step ends.
    """

    _entries: dict[tuple[int, int], dict[int, KVEntry]] = field(default_factory=dict)

    def record(self, seq_id: int, start: int, layer: int, k: torch.Tensor, v: torch.Tensor, *, copy: bool) -> KVEntry:
        """The leaves of slice (seq_id, start) at `layer`, created from k/v rows the first time only."""
        layers = self._entries.setdefault((seq_id, start), {})
        entry = layers.get(layer)
        if entry is None:
            k_leaf, v_leaf = k.detach(), v.detach()
            if copy:
                k_leaf, v_leaf = k_leaf.clone(), v_leaf.clone()
            entry = KVEntry(k_leaf.requires_grad_(True), v_leaf.requires_grad_(True))
            layers[layer] = entry
        return entry

    def prefix(self, seq_id: int, start: int, layer: int) -> list[KVPrefix]:
        """(k, v) leaves of every earlier slice of `seq_id` at `layer`, oldest first; they cover [0, start)."""
        pieces = sorted(
            (slice_start, layers[layer])
            for (seq, slice_start), layers in self._entries.items()
            if seq == seq_id and slice_start < start and layer in layers
        )
        covered = sum(entry.num_tokens for _, entry in pieces)
        if covered != start:
            raise RuntimeError(
                f"K/V cache of sequence {seq_id} layer {layer} holds {covered} tokens of earlier slices but the slice "
                f"starting at {start} needs {start}: an earlier slice's forward has not run on this stage"
            )
        return [(entry.k, entry.v) for _, entry in pieces]

    def release(self, seq_id: int, start: int) -> None:
        self._entries.pop((seq_id, start), None)

    def held_tensors(self) -> Iterator[torch.Tensor]:
        """Every leaf and every accumulated leaf gradient (for memory accounting)."""
        for layers in self._entries.values():
            for entry in layers.values():
                for t in (entry.k, entry.v):
                    yield t
                    if t.grad is not None:
                        yield t.grad

    def keys(self) -> list[tuple[int, int]]:
        return sorted(self._entries)


class KVGradTap(torch.autograd.Function):
    """Identity on (k, v) whose backward adds each tapped slice's accumulated leaf gradients to its rows."""

    @staticmethod
    def forward(
        ctx: Any, k: torch.Tensor, v: torch.Tensor, taps: tuple[tuple[int, int, KVEntry], ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.taps = taps
        return k.view_as(k), v.view_as(v)

    @staticmethod
    def backward(ctx: Any, grad_k: torch.Tensor, grad_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        grad_k, grad_v = grad_k.clone(), grad_v.clone()
        for lo, hi, entry in ctx.taps:
            if entry.k.grad is not None:
                grad_k[lo:hi] += entry.k.grad
            if entry.v.grad is not None:
                grad_v[lo:hi] += entry.v.grad
        return grad_k, grad_v, None


@dataclass(frozen=True, kw_only=True)
class ChunkKVBinding:
    """Connects one chunk's attention on one stage to the stage's K/V cache (Ulysses' `kv_binding`)."""

    cache: SliceKVCache
    segments: tuple[Segment, ...]
    cu_seqlens: tuple[int, ...]
    lengths: Mapping[int, int]
    first_layer: int
    """Global index of the stage's first layer."""
    recompute_layers: int
    """The stage's first `recompute_layers` layers recompute for this chunk: their leaves are copies."""

    @property
    def is_needed(self) -> bool:
        """Whether any segment is a slice (has a prefix or is read by a later slice)."""
        return any(seg.start > 0 or seg.end < self.lengths[seg.seq_id] for seg in self.segments)

    def bind(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[Sequence[KVPrefix]]]:
        """k, v: (T_pad, local kv heads, d) of the whole chunk. Returns the (tapped) k, v and per-segment
        prefix pieces, recording the K/V of non-final slices for later slices."""
        prefixes: list[Sequence[KVPrefix]] = []
        taps = []
        copy = layer - self.first_layer < self.recompute_layers
        for seg, lo, hi in zip(self.segments, self.cu_seqlens, self.cu_seqlens[1:], strict=False):
            prefixes.append(self.cache.prefix(seg.seq_id, seg.start, layer) if seg.start > 0 else [])
            if seg.end < self.lengths[seg.seq_id]:
                entry = self.cache.record(seg.seq_id, seg.start, layer, k[lo:hi], v[lo:hi], copy=copy)
                taps.append((lo, hi, entry))
        if taps and torch.is_grad_enabled():
            k, v = KVGradTap.apply(k, v, tuple(taps))
        return k, v, prefixes

    def release(self) -> None:
        """Drop the leaves of this chunk's non-final slice (after its backward)."""
        for seg in self.segments:
            if seg.end < self.lengths[seg.seq_id]:
                self.cache.release(seg.seq_id, seg.start)
