"""What `helix profile` measures and how often: the grids of chunk shapes and message sizes, and the settings.

The grids are per device class because the interesting sizes differ by orders of magnitude: a CPU rank runs a tiny
model's layer on a few thousand tokens in tenths of a second, a GPU runs a 7B model's layer on 4K-64K tokens in
milliseconds. Every grid varies what the fit must tell apart: tokens (the linear term against the per-call
overhead), tokens per segment at a fixed token count (attention against GEMMs) and the context of a slice (the
attention of later slices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from executor.profile.timing import Statistic

Dtype = Literal["float32", "float64", "bfloat16"]

PARAM_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.float32}
"""Parameter dtype per setting: 'bfloat16' keeps float32 weights under bf16 autocast (as `helix train` does)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ProfileGrid:
    tokens: tuple[int, ...]
    """Tokens of a chunk on one device."""
    segments: tuple[int, ...]
    """Equal segments a chunk is cut into (1: one sequence; more: packed shorter ones)."""
    context_ratios: tuple[float, ...]
    """Context of a one-segment chunk (a slice) as a multiple of its length; 0: no earlier slices."""
    head_tokens: tuple[int, ...]
    """Tokens of the LM head + loss measurements."""
    memory_tokens: tuple[int, ...]
    """Tokens of the saved-bytes measurements (two sizes give the per-token slope)."""
    exchange_tokens: tuple[int, ...]
    """Chunk tokens of the all-to-all and send/recv measurements."""
    lane_tokens: tuple[int, ...]
    """Sequence lengths of the layer timed on lanes of each SP degree (`lane_bench`): whole sequences a plan gives
    one lane, split over its devices."""
    reduce_bytes: tuple[int, ...]
    """Buffer sizes of the data-parallel reductions."""
    gemm_size: int
    """Side of the square GEMM measured as the device's practical peak."""
    max_keys: int
    """Largest context + segment length measured: the exact CPU attention path materialises a segment's whole
    score matrix in backward (`executor.attention.prefix`), so a 16K-key slice would take GBs per rank."""
    recompute_segments: tuple[int, ...] = (1,)
    """Segment counts whose chunks are also timed with recompute (a check of the cost model, not a fit input)."""
    min_segment_tokens: int = 16
    """Packed segments shorter than this are not measured (the grid point is skipped)."""


GRIDS: dict[str, ProfileGrid] = {
    "tiny": ProfileGrid(
        tokens=(64, 128),
        segments=(1, 2),
        context_ratios=(0.0, 1.0),
        head_tokens=(64, 128),
        memory_tokens=(64, 128),
        exchange_tokens=(64, 256),
        lane_tokens=(64, 128),
        reduce_bytes=(2**14, 2**16),
        gemm_size=128,
        max_keys=256,
    ),
    "cpu": ProfileGrid(
        tokens=(256, 512, 1024, 2048, 4096),
        segments=(1, 4, 16),
        context_ratios=(0.0, 1.0, 3.0),
        head_tokens=(256, 1024, 4096),
        memory_tokens=(256, 1024),
        exchange_tokens=(256, 1024, 4096),
        lane_tokens=(1024, 2048, 4096),
        reduce_bytes=(2**16, 2**19, 2**22),
        gemm_size=512,
        max_keys=4096,
    ),
    "gpu": ProfileGrid(
        tokens=(4096, 8192, 16384, 32768, 65536),
        segments=(1, 4, 16),
        context_ratios=(0.0, 1.0),
        head_tokens=(4096, 16384),
        memory_tokens=(4096, 8192),
        exchange_tokens=(4096, 16384, 65536),
        lane_tokens=(16384, 65536),
        reduce_bytes=(2**22, 2**25, 2**28),
        gemm_size=8192,
        max_keys=131072,
    ),
}
"""tiny: the tests (seconds on 2 CPU ranks); cpu: CPU ranks with a small model; gpu: CUDA devices, 7B-class layers."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ProfileSettings:
    """How one `helix profile` run measures."""

    grid: ProfileGrid = field(default_factory=lambda: GRIDS["cpu"])
    grid_name: str = "cpu"
    warmup: int = 1
    """Untimed calls before each measurement (allocator, kernel selection, caches)."""
    repeats: int = 3
    """Timed calls per measurement."""
    statistic: Statistic = "median"
    """What is kept of the repeats: the median, or the minimum on a machine shared with other work."""
    dtype: Dtype = "float32"
    """Parameters and activations; 'bfloat16' is bf16 autocast over float32 weights, as `helix train` runs it."""
    device: Literal["cpu", "cuda"] = "cpu"
    attention_backend: str = "auto"
    seed: int = 0
    pin_cores: bool = False
    """Pin each rank to one core, contiguous ranks sharing a core (CPU, `timing.pin_to_core`): a fixed, reportable
    mapping of ranks to cores."""
    collectives: bool = True
    """Measure the collectives (a one-rank run has none)."""

    def describe(self) -> dict[str, object]:
        """What the cache key depends on besides the devices, model and software."""
        return {
            "grid": self.grid_name,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "statistic": self.statistic,
            "dtype": self.dtype,
            "device": self.device,
            "attention_backend": self.attention_backend,
            "pin_cores": "contiguous" if self.pin_cores else False,
        }
