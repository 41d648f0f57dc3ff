"""The job's layer split on the executor side: chosen with P (or fixed, or resumed), built by the executors, and
every plan of the job made on it; checkpoints remember it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from executor.train.checkpoint import TrainState
from executor.train.job_start import choose_stages_in_process
from executor.train.plan_source import JobPlanning, JobRequest, LocalPlanSource
from planner_service.presets import CLUSTERS, MODELS
from proto import Batch, PipelineSpec

BIG_VOCAB = {"cluster": CLUSTERS["h100-80g-8x8"], "model": MODELS["llama3-8b"], "time_limit_s": 1.0}
SHORT = Batch.from_lengths([1800 + 41 * i for i in range(48)])


def test_only_p_given_means_the_even_split() -> None:
    job = JobPlanning(cluster=CLUSTERS["cpu-2x2"], model=MODELS["tiny"], strategy="greedy", num_stages=2)
    assert job.pipeline == PipelineSpec.even(2, 2)
    request = JobRequest(strategy="helix", **BIG_VOCAB)  # type: ignore[arg-type]
    assert request.with_stages(4).pipeline == PipelineSpec.even(32, 4)
    chosen = request.with_stages(4, [(0, 9), (9, 18), (18, 27), (27, 32)])
    assert chosen.pipeline.layer_ranges == [(0, 9), (9, 18), (18, 27), (27, 32)]
    with pytest.raises(ValueError):
        request.with_stages(4, [(0, 16), (16, 32)])


@pytest.mark.parametrize("strategy", ["greedy", "helix"])
def test_every_plan_of_the_job_is_made_on_its_split(strategy: str) -> None:
    fixed = [(0, 9), (9, 18), (18, 27), (27, 32)]
    job = JobRequest(strategy=strategy, **BIG_VOCAB).with_stages(4, fixed)  # type: ignore[arg-type]
    source = LocalPlanSource(job, calibrate=False)
    assert source.plan(0, SHORT).plan.pipeline.layer_ranges == fixed


def test_the_in_process_decision_chooses_the_split_with_p() -> None:
    request = JobRequest(strategy="helix", **{**BIG_VOCAB, "time_limit_s": 2.0})  # type: ignore[arg-type]
    stages, split, how = choose_stages_in_process(request, SHORT)
    assert "chosen in-process" in how and len(split) == stages > 1
    pipeline = request.with_stages(stages, split).pipeline
    assert pipeline.layers_of(stages - 1) < max(pipeline.layers_of(p) for p in range(stages))  # the head's stage


def test_checkpoints_remember_the_split(tmp_path: Path) -> None:
    state = TrainState(
        next_step=3,
        data_position={"epoch": 0},
        scheduler={},
        job_id=None,
        num_stages=2,
        world_size=4,
        layer_ranges=[[0, 3], [3, 4]],
    )
    again = TrainState.from_json(state.to_json(), tmp_path)
    assert again.split() == [(0, 3), (3, 4)]
    old = json.loads(state.to_json())
    del old["layer_ranges"]  # a checkpoint from before the split was saved: the even split
    assert TrainState.from_json(json.dumps(old), tmp_path).split() is None
