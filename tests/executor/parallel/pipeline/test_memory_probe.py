"""The activation-memory probe: saved tensors counted once per storage, released after backward."""

from __future__ import annotations

import pytest
import torch

from executor.parallel.pipeline.memory_probe import ActivationMemoryProbe

pytestmark = pytest.mark.timeout(60)


def test_memory_probe_counts_storages_once_and_releases_them() -> None:
    w = torch.nn.Parameter(torch.randn(16, 16, dtype=torch.float64))
    probe = ActivationMemoryProbe(exclude=[w])
    x = torch.randn(10, 16, dtype=torch.float64, requires_grad=True)
    with probe.forward():
        y = x @ w  # saves x (and w: excluded)
        z = (y * y).sum() + (x * 2).sum()  # y saved twice (one storage); x again
    assert probe.live_bytes == x.numel() * 8 + y.numel() * 8
    z.backward()
    assert probe.live_bytes == 0
    assert probe.peak_bytes == x.numel() * 8 + y.numel() * 8
