"""One SP rank's share of a chunk: token ids, RoPE positions and next-token targets.

A chunk's segments are laid end to end and padded to a multiple of the SP degree s; SP rank r holds
rows [r*S, (r+1)*S) of that padded chunk (S = padded / s). Padding rows have token id 0, position 0 and
no target, and attention never looks at them (they lie past the last segment boundary).

Targets belong to the original sequence: the token at position t predicts token t+1 of the same
sequence, so the last token of a segment [start, end) predicts token `end` when end < length; only a
sequence's final token has no target.

Token ids come from a `TokenSource`, which serves any range of a sequence on its own, so a rank builds
only its rows (synthetic ids in `helix verify`; a tokenised corpus in training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from proto.plan import Chunk, Segment

IGNORE_INDEX = -100


class TokenSource(Protocol):
    """Token ids of positions [start, end) of sequence `seq_id`: an (end - start,) int64 tensor."""

    def __call__(self, seq_id: int, start: int, end: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class ChunkLayout:
    """Where each segment of a chunk sits once the chunk is padded for SP degree `sp_degree`."""

    segments: tuple[Segment, ...]
    sp_degree: int
    cu_seqlens: tuple[int, ...]
    """Segment boundaries in the padded chunk; the last one is the number of real tokens."""
    padded_tokens: int

    @property
    def num_tokens(self) -> int:
        return self.cu_seqlens[-1]

    @property
    def shard_tokens(self) -> int:
        return self.padded_tokens // self.sp_degree

    def shard_range(self, sp_rank: int) -> tuple[int, int]:
        return sp_rank * self.shard_tokens, (sp_rank + 1) * self.shard_tokens


def chunk_layout(chunk: Chunk, sp_degree: int) -> ChunkLayout:
    bounds = [0]
    for seg in chunk.segments:
        bounds.append(bounds[-1] + seg.num_tokens)
    padded = -(-bounds[-1] // sp_degree) * sp_degree
    return ChunkLayout(tuple(chunk.segments), sp_degree, tuple(bounds), padded)


@dataclass(frozen=True)
class ChunkShard:
    """Inputs of one SP rank for one chunk; every tensor is (S,)."""

    token_ids: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    """Next-token ids, IGNORE_INDEX where there is none (a sequence's last token, padding)."""

    @property
    def num_targets(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


def materialize_shard(
    layout: ChunkLayout,
    sp_rank: int,
    *,
    lengths: dict[int, int],
    tokens: TokenSource,
    device: torch.device | str = "cpu",
) -> ChunkShard:
    """Build only rows [r*S, (r+1)*S) of the padded chunk for SP rank `sp_rank`."""
    lo, hi = layout.shard_range(sp_rank)
    size = hi - lo
    token_ids = torch.zeros(size, dtype=torch.long)
    positions = torch.zeros(size, dtype=torch.long)
    targets = torch.full((size,), IGNORE_INDEX, dtype=torch.long)
    for seg, seg_lo in zip(layout.segments, layout.cu_seqlens, strict=False):
        a, b = max(lo, seg_lo), min(hi, seg_lo + seg.num_tokens)
        if a >= b:
            continue
        first = seg.start + (a - seg_lo)  # position in the sequence of row a
        last = first + (b - a)  # one past the position of row b - 1
        length = lengths[seg.seq_id]
        ids = tokens(seg.seq_id, first, min(last + 1, length))
        token_ids[a - lo : b - lo] = ids[: b - a]
        positions[a - lo : b - lo] = torch.arange(first, last)
        targets[a - lo : a - lo + ids.numel() - 1] = ids[1:]
    return ChunkShard(token_ids.to(device), positions.to(device), targets.to(device))


def sequence_inputs(seq_id: int, length: int, *, tokens: TokenSource, device: torch.device | str = "cpu") -> ChunkShard:
    """A whole sequence as one shard (the single-process reference's view)."""
    layout = chunk_layout(Chunk(segments=[Segment(seq_id=seq_id, start=0, end=length)]), 1)
    return materialize_shard(layout, 0, lengths={seq_id: length}, tokens=tokens, device=device)


def total_targets(lengths: dict[int, int]) -> int:
    """Target tokens of a global batch: a sequence of length L has L - 1."""
    return sum(n - 1 for n in lengths.values())
