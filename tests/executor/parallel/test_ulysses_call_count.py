"""The cost model charges one latency per all-to-all call (`comm_model.ALLTOALLS_PER_LAYER` per layer, forward and
again backward); the executor's Ulysses layer must issue exactly that many. Guards against the two drifting
apart: the model counted 4 (one per tensor) while the executor packs q, k and v into one exchange."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from executor.parallel.ulysses import UlyssesAttention
from planner_service.cost_model.comm_model import ALLTOALLS_PER_LAYER


def test_one_layer_issues_the_all_to_alls_the_cost_model_charges(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[torch.Size] = []

    def exchange(recv: torch.Tensor, send: torch.Tensor, group: object = None) -> None:
        calls.append(send.shape)
        recv.copy_(send)  # counting only: shapes are what matter here, not which rank gets which block

    monkeypatch.setattr(dist, "all_to_all_single", exchange)
    s, shard, heads, d = 2, 6, 4, 8
    attention = UlyssesAttention(group=object(), sp_degree=s, cu_seqlens=[0, s * shard])  # type: ignore[arg-type]
    q, k, v = (torch.randn(shard, heads, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = attention(0, q, k, v)
    assert len(calls) == ALLTOALLS_PER_LAYER
    out.sum().backward()
    assert len(calls) == 2 * ALLTOALLS_PER_LAYER, calls
