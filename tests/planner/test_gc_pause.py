"""The cyclic collector is paused for a planning call and left as the call found it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from planner_service.gc_pause import collector_paused
from planner_service.planner import make_plan
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.workloads import load_workload


@pytest.fixture
def collector_restored() -> Iterator[None]:
    was_on = gc.isenabled()
    yield
    if was_on:
        gc.enable()
    else:
        gc.disable()


def test_pause_turns_the_collector_off_and_back_on(collector_restored: None) -> None:
    gc.enable()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a failing planning call")
    assert gc.isenabled()


def test_pause_leaves_a_collector_that_was_off_alone(collector_restored: None) -> None:
    """Overlapping calls (threads), or a user who turned it off: the inner call must not turn it on."""
    gc.enable()
    with collector_paused():
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer call still runs
    assert gc.isenabled()
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_make_plan_runs_without_the_collector_and_restores_it(
    collector_restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import planner_service.planner as planner

    seen: list[bool] = []
    real = planner.check_workload

    def spy(*args: object, **kwargs: object) -> None:
        seen.append(gc.isenabled())
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(planner, "check_workload", spy)
    gc.enable()
    batch = load_workload(lengths_path=None, dataset="github", batch_size=8, seed=0, max_len=8192)
    make_plan(batch=batch, cluster=resolve_cluster("a800-80g-4x8"), model=resolve_model("llama2-7b"), strategy="greedy")
    assert seen == [False] and gc.isenabled()
