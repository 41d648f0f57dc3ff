"""Where each parameter of a stage sits in one flat buffer, how that buffer is cut into buckets, and which
slice of every bucket each rank of the data-parallel group owns (ZeRO-1/2).

Pure arithmetic, shared by the gradient sync, the sharded optimizer and the tests. The buffer is padded to a
multiple of the group size d and every bucket holds a multiple of d elements, so a bucket reduce-scatters
into d equal slices: rank r owns elements [lo + r*n/d, lo + (r+1)*n/d) of a bucket [lo, lo + n). Rank r's
shard is the concatenation of its slices of every bucket, in bucket order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class FlatLayout:
    """Offsets of parameters (in flat order) and the bucket cut of a buffer of `padded` elements."""

    sizes: tuple[int, ...]
    """Elements of each parameter, in flat order."""
    offsets: tuple[int, ...]
    dp_size: int
    bucket_elems: int
    """Elements per bucket (a multiple of `dp_size`); the last bucket may be shorter."""
    padded: int
    """Buffer length: the parameters' elements rounded up to a multiple of `dp_size`."""

    @property
    def num_elems(self) -> int:
        return sum(self.sizes)

    @property
    def buckets(self) -> tuple[tuple[int, int], ...]:
        return tuple((lo, min(lo + self.bucket_elems, self.padded)) for lo in range(0, self.padded, self.bucket_elems))

    @property
    def shard_elems(self) -> int:
        return self.padded // self.dp_size

    def bucket_of(self, element: int) -> int:
        return element // self.bucket_elems

    def owned(self, bucket: int, rank: int) -> tuple[int, int]:
        """Flat range of `bucket` that `rank` owns after the bucket's reduce-scatter."""
        lo, hi = self.buckets[bucket]
        part = (hi - lo) // self.dp_size
        return lo + rank * part, lo + (rank + 1) * part

    def shard_offset(self, bucket: int) -> int:
        """Where a rank's slice of `bucket` starts inside the rank's shard."""
        return (bucket * self.bucket_elems) // self.dp_size

    def param_pieces(self, index: int) -> list[tuple[int, int, int]]:
        """(bucket, flat lo, flat hi) pieces of parameter `index` (one per bucket it spans)."""
        lo, hi = self.offsets[index], self.offsets[index] + self.sizes[index]
        pieces = []
        while lo < hi:
            bucket = self.bucket_of(lo)
            end = min(hi, (bucket + 1) * self.bucket_elems)
            pieces.append((bucket, lo, end))
            lo = end
        return pieces


def plan_flat_layout(sizes: Sequence[int], *, elem_bytes: int, bucket_bytes: float, dp_size: int) -> FlatLayout:
    """Lay `sizes` end to end; buckets of at most `bucket_bytes` (rounded down to a multiple of `dp_size`
    elements, at least `dp_size`), so a stage of G gradient bytes has ceil(G / bucket_bytes) buckets."""
    assert dp_size >= 1 and elem_bytes >= 1, f"dp_size {dp_size}, elem_bytes {elem_bytes}"
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total += n
    padded = max(-(-total // dp_size) * dp_size, dp_size)
    bucket = max(int(bucket_bytes // elem_bytes) // dp_size * dp_size, dp_size)
    return FlatLayout(
        sizes=tuple(sizes), offsets=tuple(offsets), dp_size=dp_size, bucket_elems=min(bucket, padded), padded=padded
    )
