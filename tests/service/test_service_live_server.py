"""A real uvicorn on a free loopback port, driven over HTTP by the typed client and by `helix inspect --server`;
and restart survival: plan, stop the server, start a new one on the same DB, GET the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner_service.cli import main
from planner_service.client import PlannerApiError, PlannerClient
from planner_service.cost_model import CostModel
from planner_service.presets import CLUSTERS, MODELS
from proto import Batch, Feedback, Plan, validate_plan
from tests.service.service_inputs import LENGTHS, TOKEN, LiveServerFactory, SettingsFactory


def test_client_against_live_server_and_restart_survival(
    tmp_path: Path, make_settings: SettingsFactory, live_server: LiveServerFactory
) -> None:
    settings = make_settings(tmp_path / "live.db", api_token=TOKEN)
    with live_server(settings) as url, PlannerClient(url, token=TOKEN, retries=1) as client:
        assert client.health().status == "ok"
        job = client.create_job(cluster="cpu-2x2", model="tiny", strategy="greedy", sample_lengths=LENGTHS)
        assert job.decisions.sample_source == "sample_lengths"
        plan = client.plan_for_step(job.job_id, 0, LENGTHS)
        validate_plan(plan, Batch.from_lengths(LENGTHS), CLUSTERS["cpu-2x2"], MODELS["tiny"])
        raw = client.plan_bytes_for_step(job.job_id, 0, LENGTHS)
        assert raw == plan.model_dump_json().encode()
        accepted = client.send_feedback(
            job.job_id, Feedback(step=0, plan_id=plan.plan_id, measured_iteration_s=plan.predicted.iteration_s * 0.9)
        )
        assert accepted.ratio is not None and abs(accepted.ratio - 0.9) < 1e-9
        calibrated = client.get_job(job.job_id)  # the feedback's 10% error was calibrated into profile version 1
        assert calibrated.profile_version == 1 and calibrated.calibration is not None
        profile = CostModel.from_specs(CLUSTERS["cpu-2x2"], MODELS["tiny"]).profile
        assert client.put_profile(job.job_id, profile).version == 2
        with pytest.raises(PlannerApiError) as err:
            client.plan_for_step(job.job_id, 0, [*LENGTHS, 1])
        assert (err.value.status, err.value.code, err.value.field) == (409, "conflict", "lengths")
        with pytest.raises(PlannerApiError) as err:
            client.get_plan(job.job_id, 42)
        assert (err.value.status, err.value.code) == (404, "not_found")
        with PlannerClient(url, token="not-the-token", retries=0) as intruder, pytest.raises(PlannerApiError) as err:
            intruder.get_plan(job.job_id, 0)
        assert (err.value.status, err.value.code) == (401, "unauthorized")

    # the server is gone; a new one on the same file serves the same bytes, the job, its feedback and profile
    with (
        live_server(make_settings(tmp_path / "live.db", api_token=TOKEN)) as url,
        PlannerClient(url, token=TOKEN, retries=1) as client,
    ):
        assert client.get_plan_bytes(job.job_id, 0) == raw
        again = client.get_job(job.job_id)
        assert again.decisions == job.decisions
        assert again.counts.plans == 1 and again.counts.feedback == 1 and again.profile_version == 2
        assert again.latest_error is not None and again.latest_error.step == 0
        assert client.plan_bytes_for_step(job.job_id, 0, LENGTHS) == raw  # still idempotent after restart


def test_inspect_fetches_a_stored_plan_from_the_server(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    make_settings: SettingsFactory,
    live_server: LiveServerFactory,
) -> None:
    monkeypatch.setenv("HELIX_API_TOKEN", TOKEN)
    with live_server(make_settings(tmp_path / "inspect.db", api_token=TOKEN)) as url:
        with PlannerClient(url, token=TOKEN) as client:
            job = client.create_job(cluster="cpu-2x2", model="tiny", strategy="greedy")
            plan: Plan = client.plan_for_step(job.job_id, 7, LENGTHS)
        capsys.readouterr()
        code = main(["inspect", "--server", url, "--job", job.job_id, "--step", "7", "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        summary = json.loads(out)
        assert summary["plan_id"] == plan.plan_id and summary["num_lanes"] == len(plan.lanes)
        code = main(["inspect", "--server", url, "--job", job.job_id, "--step", "8"])
        _, err = capsys.readouterr()
        assert code == 2 and len(err.strip().splitlines()) == 1 and "404 not_found" in err
