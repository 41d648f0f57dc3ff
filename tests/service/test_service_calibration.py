"""Profiles and online calibration through the service: a PUT profile is what later plans are made with (and GET
shows its version); step feedback refines the job's profile so that prediction error falls over steps; the
service's `--profile` default applies only to the cluster and model it was measured for.

The job's "true" costs are the preset scaled per coefficient group; each step's measured time is its stored plan
simulated under them (synthetic feedback, as a training job would send it). Guards against feedback that is
stored but never used, calibrated profiles that plans ignore, and errors reported in sample.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from planner_service.api import create_app
from planner_service.calibration.coefficient_groups import scale_profile
from planner_service.cost_model import CostModel, preset_profile
from planner_service.cost_model.profile_document import write_document
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.simulator.pipeline_simulator import simulate
from planner_service.workloads import load_workload
from proto import Batch, Feedback, Plan
from tests.cost_model.synthetic_profile import synthetic_document
from tests.service.service_inputs import SettingsFactory

CLUSTER = resolve_cluster("cpu-2x2")
MODEL = resolve_model("tiny")
PRESET = preset_profile(CLUSTER, MODEL)
TRUE = CostModel.from_specs(
    CLUSTER, MODEL, scale_profile(PRESET, {"attention": 3.0, "linear": 1.8, "communication": 0.5, "collectives": 1.0})
)
TRUE_WITH_OP_OVERHEAD = CostModel.from_specs(CLUSTER, MODEL, TRUE.profile.model_copy(update={"op_overhead_s": 5e-3}))
JOB = {"cluster": "cpu-2x2", "model": "tiny", "strategy": "greedy", "num_stages": 1}


def _batch(step: int) -> Batch:
    return load_workload(lengths_path=None, dataset="github", batch_size=16, seed=step, max_len=2048)


def _plan(client: TestClient, job_id: str, step: int) -> Plan:
    batch = _batch(step)
    response = client.post(f"/v1/jobs/{job_id}/plans", json={"step": step, "lengths": batch.lengths})
    assert response.status_code == 200, response.text
    return Plan.model_validate_json(response.content)


def _send_true_feedback(
    client: TestClient, job_id: str, step: int, plan: Plan, truth: CostModel | None = None
) -> float:
    measured = simulate(plan, _batch(step), truth or TRUE, record_events=False).predicted.iteration_s
    body = Feedback(step=step, plan_id=plan.plan_id, measured_iteration_s=measured)
    assert client.post(f"/v1/jobs/{job_id}/feedback", json=body.model_dump(mode="json")).status_code == 200
    return measured


def test_put_profile_is_used_by_later_plans_and_shown_by_get(client: TestClient) -> None:
    """PUT -> version 1 in GET; the next step's plan predicts with that profile, not the preset."""
    job_id = client.post("/v1/jobs", json=JOB).json()["job_id"]
    before = _plan(client, job_id, 0)
    measured = PRESET.model_copy(update={"attn_s_per_token2": PRESET.attn_s_per_token2 * 7, "name": "measured:x"})
    put = client.put(f"/v1/jobs/{job_id}/profile", json=measured.model_dump(mode="json"))
    assert put.status_code == 200 and put.json()["version"] == 1
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["profile_version"] == 1 and job["counts"]["profiles"] == 1
    after = _plan(client, job_id, 1)
    expected = simulate(after, _batch(1), CostModel.from_specs(CLUSTER, MODEL, measured)).predicted.iteration_s
    preset = simulate(after, _batch(1), CostModel.from_specs(CLUSTER, MODEL)).predicted.iteration_s
    assert after.predicted.iteration_s == expected and expected > 1.5 * preset
    assert _plan(client, job_id, 0).plan_id == before.plan_id  # stored plans are unchanged


def test_feedback_calibrates_the_job_and_error_falls(client: TestClient) -> None:
    """Eight steps of synthetic feedback from costs 0.5-3x the preset's: the job's later plans predict within 10%
    (the first was off by >40%), GET reports out-of-sample error well below the preset's, a calibrated profile
    version is stored, and /metrics exports both errors."""
    job_id = client.post("/v1/jobs", json=JOB).json()["job_id"]
    errors = []
    for step in range(8):
        plan = _plan(client, job_id, step)
        measured = _send_true_feedback(client, job_id, step, plan)
        errors.append(abs(plan.predicted.iteration_s / measured - 1.0))
    assert errors[0] > 0.4 and max(errors[4:]) < 0.1, errors
    job = client.get(f"/v1/jobs/{job_id}").json()
    calibration = job["calibration"]
    assert calibration["steps_observed"] == 8 and calibration["error_steps"] == 8
    assert calibration["step_time_mape_calibrated"] < calibration["step_time_mape_base"] / 3
    assert job["profile_version"] == calibration["profile_version"] >= 1
    assert calibration["scales"]["attention"] > 1.5 and calibration["recent"][-1]["step"] == 7
    metrics = client.get("/metrics").text
    assert 'helix_step_time_mape{profile="calibrated"}' in metrics
    assert 'helix_step_time_mape{profile="base"}' in metrics
    assert "helix_calibration_observations_total 8.0" in metrics


def test_put_profile_restarts_calibration(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=JOB).json()["job_id"]
    _send_true_feedback(client, job_id, 0, _plan(client, job_id, 0))
    assert client.get(f"/v1/jobs/{job_id}").json()["calibration"]["steps_observed"] == 1
    client.put(f"/v1/jobs/{job_id}/profile", json=PRESET.model_dump(mode="json"))
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["calibration"] is None
    stored = client.get(f"/v1/jobs/{job_id}").json()["profile_version"]
    plan = _plan(client, job_id, 1)
    assert (
        plan.predicted.iteration_s
        == simulate(plan, _batch(1), CostModel.from_specs(CLUSTER, MODEL)).predicted.iteration_s
    )
    assert stored == 2  # the calibrated version 1, then the PUT


def test_calibration_can_be_switched_off(make_settings: SettingsFactory, tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path / "p.db", calibrate=False))) as client:
        job_id = client.post("/v1/jobs", json=JOB).json()["job_id"]
        _send_true_feedback(client, job_id, 0, _plan(client, job_id, 0))
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["calibration"] is None and job["profile_version"] is None


def test_op_overhead_calibration_can_be_switched_off(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """HELIX_CALIBRATE_OP_OVERHEAD=false: the job's calibration keeps the profile's op overhead (0 here) while the
    true costs have one; with the default the job learns one."""
    learned = {}
    for switch in (False, True):
        with TestClient(create_app(make_settings(tmp_path / f"{switch}.db", calibrate_op_overhead=switch))) as client:
            job_id = client.post("/v1/jobs", json={**JOB, "strategy": "infinipipe", "num_stages": 2}).json()["job_id"]
            for step in range(6):
                _send_true_feedback(client, job_id, step, _plan(client, job_id, step), truth=TRUE_WITH_OP_OVERHEAD)
            learned[switch] = client.get(f"/v1/jobs/{job_id}").json()["calibration"]["op_overhead_s"]
    assert learned[False] == 0.0 and learned[True] > 0.0, learned


def test_serve_profile_applies_to_its_own_cluster_and_model(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """`helix serve --profile doc.json`: jobs on the document's cluster and model start with it (version 1) and
    plan with it; a job on another cluster gets the preset."""
    doc = synthetic_document(CLUSTER, MODEL)
    path = tmp_path / "profile.json"
    write_document(path, doc)
    with TestClient(create_app(make_settings(tmp_path / "p.db", profile=path))) as client:
        job_id = client.post("/v1/jobs", json=JOB).json()["job_id"]
        assert client.get(f"/v1/jobs/{job_id}").json()["profile_version"] == 1
        plan = _plan(client, job_id, 0)
        cost = CostModel.from_specs(CLUSTER, MODEL, doc.profile)
        assert plan.predicted.iteration_s == simulate(plan, _batch(0), cost).predicted.iteration_s
        other = client.post("/v1/jobs", json={**JOB, "cluster": "cpu-1x2"}).json()["job_id"]
        assert client.get(f"/v1/jobs/{other}").json()["profile_version"] is None
        stateless = client.post(
            "/v1/plans",
            json={"cluster": "cpu-2x2", "model": "tiny", "strategy": "greedy", "batch": _batch(0).model_dump()},
        )
        assert stateless.status_code == 200
        predicted = Plan.model_validate_json(stateless.content).predicted.iteration_s
        assert predicted == simulate(Plan.model_validate_json(stateless.content), _batch(0), cost).predicted.iteration_s


def test_feedback_is_calibrated_on_its_own_thread(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Observations run on the calibration's thread, not in the event loop's default executor, where the store
    calls every served plan waits for run."""
    from planner_service.api.calibration import JobCalibrations

    threads: list[str] = []
    real = JobCalibrations._observe_sync

    def spy(self: JobCalibrations, *args: object) -> None:
        threads.append(threading.current_thread().name)
        real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(JobCalibrations, "_observe_sync", spy)
    job_id = client.post("/v1/jobs", json=JOB).json()["job_id"]
    for step in range(2):
        _send_true_feedback(client, job_id, step, _plan(client, job_id, step))
    assert len(threads) == 2 and all(name.startswith("helix-calibration") for name in threads), threads
