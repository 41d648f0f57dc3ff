"""Recompute ILP: the exact optimum on a hand-solved instance, its greedy, and the none-needed/infeasible ends.

Guards against a formulation that recomputes more than memory requires (wasted time) or too little (OOM).
"""

from __future__ import annotations

import pytest

from planner_service.simulator.memory_timeline import StageMemory
from planner_service.solvers.integer_program import BACKENDS
from planner_service.solvers.recompute_ilp import choose_recompute, greedy_recompute, trim_recompute


def two_chunk_memory() -> StageMemory:
    """Two chunks held together at B1 (200 bytes) with a 150-byte budget; recomputing a layer of chunk 0
    saves 30 bytes, of chunk 1 saves 20."""
    return StageMemory(
        num_layers=2,
        base=(100.0, 100.0),
        per_layer=(-30.0, -20.0),
        op_chunks=(0, 1, 1, 0),
        op_is_forward=(True, True, False, False),
        op_constant=(0.0, 0.0, 0.0, 0.0),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_recompute_ilp_hand_optimum(backend: str) -> None:
    """Need 50 bytes saved. With layer times 1.0 (chunk 0) and 0.5 (chunk 1): r=(1,1) saves 50 for 1.5 s;
    (2,0) saves 60 for 2.0 s; (0,2) saves only 40; (1,2) and (2,x) cost >= 2.0. Optimum (1, 1)."""
    memory = two_chunk_memory()
    result = choose_recompute(memory, [1.0, 0.5], 150.0, backend=backend, time_limit_s=5.0)
    assert result.counts == (1, 1)
    assert result.status == "optimal"
    assert memory.peak(result.counts) <= 150.0


def test_recompute_greedy_then_trims_what_it_did_not_need() -> None:
    """The greedy picks the best bytes-per-second chunk first (chunk 1: 0.5/20 < 1.0/30): (0, 2) saves 40 of the
    50 bytes, then chunk 0 takes one layer: (1, 2), 2.0 s, saving 70. The trim gives back what is not needed,
    costliest per byte first: chunk 0 cannot give its layer (30 > the 20 spare), chunk 1 gives one (20): (1, 1),
    1.5 s, here the optimum."""
    memory = two_chunk_memory()
    counts = greedy_recompute(memory, [1.0, 0.5], 150.0)
    assert counts == (1, 1)
    assert trim_recompute(memory, (1, 2), [1.0, 0.5], 150.0) == (1, 1)
    assert trim_recompute(memory, (2, 2), [1.0, 0.5], 150.0) == (1, 1)  # 100 saved: chunk 0 gives one back first
    assert memory.peak(counts) <= 150.0


def test_recompute_none_needed_and_infeasible() -> None:
    memory = two_chunk_memory()
    assert choose_recompute(memory, [1.0, 0.5], 250.0).status == "none-needed"
    assert choose_recompute(memory, [1.0, 0.5], 50.0).status == "infeasible"  # even (2, 2) holds 100
