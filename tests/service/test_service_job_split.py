"""A job's layer split is a job decision, like P: chosen with P from the sample, or fixed by the caller, and every
later plan of the job (the greedy provisional answer included) is made on it, since the job's executors built
their stage modules from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from planner_service.api.app import create_app
from planner_service.presets import MODELS
from proto import PipelineSpec, Plan
from tests.service.service_inputs import SMALL_JOB, SettingsFactory

BIG_VOCAB_JOB = {"cluster": "h100-80g-8x8", "model": "llama3-8b", "strategy": "helix", "time_limit_s": 1.0}
SHORT = [1800 + 41 * i for i in range(96)]
"""Short sequences on llama3-8b: the 128K-vocabulary LM head costs ~2.4 layers, so a pipeline's last stage is
its bottleneck under the even split."""


def assert_error(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "invalid_input" and body["field"] == field, body


def test_a_fixed_split_is_kept_and_every_plan_uses_it(client: TestClient) -> None:
    ranges = [[0, 1], [1, 2]]
    created = client.post("/v1/jobs", json={**SMALL_JOB, "num_stages": 2, "layer_ranges": ranges})
    assert created.status_code == 201, created.text
    assert created.json()["decisions"]["layer_ranges"] == ranges

    fixed = [[0, 9], [9, 18], [18, 27], [27, 32]]
    job = client.post("/v1/jobs", json={**BIG_VOCAB_JOB, "num_stages": 4, "layer_ranges": fixed}).json()
    for step, lengths in enumerate((SHORT, [30000, 1200, 800])):
        response = client.post(f"/v1/jobs/{job['job_id']}/plans", json={"step": step, "lengths": lengths})
        assert response.status_code == 200, response.text
        assert Plan.model_validate_json(response.content).pipeline.layer_ranges == [tuple(r) for r in fixed]


def test_the_split_is_chosen_with_p_from_the_sample(make_settings: SettingsFactory, tmp_path: Path) -> None:
    # the decision plans the sample at each of 6 pipeline degrees within one deadline: a limit that lets them finish
    with TestClient(create_app(make_settings(tmp_path / "d.db", solver_time_limit_s=8.0))) as client:
        check_split_decision(client)


def check_split_decision(client: TestClient) -> None:
    created = client.post("/v1/jobs", json={**BIG_VOCAB_JOB, "sample_lengths": SHORT[:48], "time_limit_s": 8.0})
    assert created.status_code == 201, created.text
    decisions = created.json()["decisions"]
    assert "fallback" not in decisions["decided_by"], decisions
    split = PipelineSpec(num_stages=decisions["num_stages"], layer_ranges=decisions["layer_ranges"])
    assert split.num_stages > 1  # short sequences on 64 devices: the sample's best plan is a pipeline
    assert split.layers_of(split.num_stages - 1) < max(split.layers_of(p) for p in range(split.num_stages))
    response = client.post(f"/v1/jobs/{created.json()['job_id']}/plans", json={"step": 0, "lengths": SHORT[:40]})
    assert response.status_code == 200, response.text
    assert Plan.model_validate_json(response.content).pipeline == split


def test_a_bad_split_is_refused_naming_the_field(client: TestClient) -> None:
    assert MODELS["tiny"].num_layers == 2
    assert_error(client.post("/v1/jobs", json={**SMALL_JOB, "layer_ranges": [[0, 2]]}), "layer_ranges")
    one_stage = {**SMALL_JOB, "num_stages": 2, "layer_ranges": [[0, 2]]}
    assert_error(client.post("/v1/jobs", json=one_stage), "layer_ranges")
    gap = {**SMALL_JOB, "num_stages": 2, "layer_ranges": [[0, 1], [2, 2]]}
    assert_error(client.post("/v1/jobs", json=gap), "layer_ranges")
