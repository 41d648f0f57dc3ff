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


def test_held_tensors_are_walked_at_op_boundaries_and_counted_once() -> None:
    """Held tensors (K/V leaves, operands queued for W ops) are walked when an op ends, not at every save (a walk per
    save made steps with long W queues 20% slower); one that a forward also saves counts once, as saved."""
    w = torch.nn.Parameter(torch.randn(16, 16, dtype=torch.float64))
    queued = torch.randn(100, 16, dtype=torch.float64)  # e.g. a GEMM input waiting for its W op
    walks = []

    def held() -> list[torch.Tensor]:
        walks.append(1)
        return [queued]

    probe = ActivationMemoryProbe(exclude=[w], held=held)
    probe.sample()  # an op boundary
    assert probe.live_bytes == queued.numel() * 8
    x = torch.randn(10, 16, dtype=torch.float64, requires_grad=True)
    walks.clear()
    with probe.forward():
        y = x @ w
        for _ in range(20):
            y = torch.tanh(y)  # saves its output: 20 storages
        z = (y * queued[:10]).sum()  # saves a view of the held storage: it moves from held to saved
    assert walks == [1]  # once, when the op ended
    saved = x.numel() * 8 + 20 * y.numel() * 8 + queued.numel() * 8
    assert probe.live_bytes == saved
    assert probe.peak_bytes == saved
    z.backward()
    probe.sample()
    assert probe.live_bytes == queued.numel() * 8
