"""Bounded work per request: a strategy that ignores its time limit cannot hold a request (or a worker).

Bug guarded (issue 14): `POST /v1/plans` with 4096 devices and 16,384 sequences ran static for 232 s while
`time_limit_s` was capped at 2 s, and a job registration kept solving for ~470 s after its client gave up.
Now each solve runs in a worker process that sends the greedy plan first; at the request's time limit
plus the margin the worker is killed and the greedy plan is answered (`solver.status` =
`timeout-fallback`). These tests use a solve function that never returns for the strategy (only the
greedy fallback gets through), so the only way to answer is the deadline; nothing here is timed against a
threshold (the bound itself is measured by bench/service_load.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from planner_service.api import create_app
from planner_service.presets import CLUSTERS, MODELS
from proto import Batch, Plan, validate_plan
from tests.service.service_inputs import LENGTHS, SMALL_JOB, LiveServerFactory, SettingsFactory
from tests.service.solve_fns import HANG_GUARD_S, CrashingSolve, HangingSolve, alive

FAST = {"solver_time_limit_s": 0.3, "deadline_margin_s": 0.6}
"""A short limit and margin, so the deadline passes quickly (hang guards are separate and generous)."""


def wait_until(condition: object, what: str) -> None:
    give_up = time.monotonic() + HANG_GUARD_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < give_up, f"never happened: {what}"
        time.sleep(0.02)


@pytest.fixture
def hanging(tmp_path: Path) -> HangingSolve:
    folder = tmp_path / "hang"
    folder.mkdir()
    return HangingSolve(str(folder))


def test_stateless_plan_past_the_deadline_is_the_greedy_plan(
    tmp_path: Path, make_settings: SettingsFactory, hanging: HangingSolve
) -> None:
    body = {
        "cluster": "cpu-2x2",
        "model": "tiny",
        "strategy": "static",
        "batch": Batch.from_lengths(LENGTHS).model_dump(),
    }
    app = create_app(make_settings(tmp_path / "d.db", **FAST), solve_fn=hanging)
    with TestClient(app) as client:
        response = client.post("/v1/plans", json=body)
        assert response.status_code == 200, response.text
        plan = Plan.model_validate_json(response.content)
        assert plan.strategy == "static" and plan.solver.status.value == "timeout-fallback"
        assert "did not finish within the 0.3 s limit" in plan.solver.message
        validate_plan(plan, Batch.from_lengths(LENGTHS), CLUSTERS["cpu-2x2"], MODELS["tiny"])
        assert len(hanging.pids()) == 1
        wait_until(lambda: not alive(hanging.pids()[0]), "the overrunning worker is killed")
        metrics = client.get("/metrics").text
        assert 'helix_solve_abandoned_total{reason="deadline"} 1.0' in metrics
        assert 'helix_solver_status_total{status="timeout-fallback"} 1.0' in metrics
        # the pool replaced the worker: the next request is served
        again = client.post("/v1/plans", json={**body, "strategy": "greedy"})
        assert again.status_code == 200 and Plan.model_validate_json(again.content).solver.status.value == "heuristic"


def test_job_step_past_the_deadline_is_stored_and_served_again(
    tmp_path: Path, make_settings: SettingsFactory, hanging: HangingSolve
) -> None:
    app = create_app(make_settings(tmp_path / "d.db", **FAST), solve_fn=hanging)
    with TestClient(app) as client:
        job = client.post("/v1/jobs", json={**SMALL_JOB, "strategy": "helix", "num_stages": 1}).json()["job_id"]
        first = client.post(f"/v1/jobs/{job}/plans", json={"step": 0, "lengths": LENGTHS})
        assert first.status_code == 200, first.text
        assert Plan.model_validate_json(first.content).solver.status.value == "timeout-fallback"
        assert client.get(f"/v1/jobs/{job}/plans/0").content == first.content
        assert client.post(f"/v1/jobs/{job}/plans", json={"step": 0, "lengths": LENGTHS}).content == first.content


def test_no_plan_at_all_within_the_deadline_is_a_503_timeout(tmp_path: Path, make_settings: SettingsFactory) -> None:
    folder = tmp_path / "hang"
    folder.mkdir()
    everything_hangs = HangingSolve(str(folder), hang_greedy=True)
    app = create_app(make_settings(tmp_path / "d.db", **FAST), solve_fn=everything_hangs)
    with TestClient(app) as client:
        job = client.post("/v1/jobs", json={**SMALL_JOB, "num_stages": 1}).json()["job_id"]
        response = client.post(f"/v1/jobs/{job}/plans", json={"step": 0, "lengths": LENGTHS})
        assert response.status_code == 503 and response.json()["code"] == "timeout", response.text
        assert int(response.headers["retry-after"]) >= 1
        assert client.get(f"/v1/jobs/{job}/plans/0").status_code == 404  # nothing half-stored
        wait_until(lambda: not any(alive(p) for p in everything_hangs.pids()), "the worker is killed")


def test_job_registration_past_the_deadline_decides_on_greedy_plans(
    tmp_path: Path, make_settings: SettingsFactory, hanging: HangingSolve
) -> None:
    app = create_app(make_settings(tmp_path / "d.db", **FAST), solve_fn=hanging)
    with TestClient(app) as client:
        response = client.post("/v1/jobs", json={**SMALL_JOB, "strategy": "static", "sample_lengths": LENGTHS})
        assert response.status_code == 201, response.text
        decisions = response.json()["decisions"]
        assert decisions["decided_by"] == "greedy (timeout-fallback)"
        assert [c["num_stages"] for c in decisions["candidates"]] == [1, 2]
        assert decisions["num_stages"] in (1, 2)


def test_a_client_that_gives_up_leaves_no_work_running(
    tmp_path: Path, make_settings: SettingsFactory, live_server: LiveServerFactory, hanging: HangingSolve
) -> None:
    """Bug guarded: a registration whose client gave up at 60 s kept solving for ~470 s. The client here gives
    up at once; the hanging strategy's worker must still be killed (at the deadline), and the service stays
    usable."""
    settings = make_settings(tmp_path / "d.db", **FAST)
    with live_server(settings, hanging) as url:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{url}/v1/jobs", json={**SMALL_JOB, "strategy": "static"}, timeout=0.05)
        wait_until(lambda: len(hanging.pids()) >= 1, "the registration's strategy started")
        wait_until(lambda: not any(alive(p) for p in hanging.pids()), "its worker is killed")
        health = httpx.get(f"{url}/readyz", timeout=HANG_GUARD_S)
        assert health.status_code == 200 and health.json()["details"]["queued"] == 0


def test_a_worker_that_dies_answers_with_the_greedy_plan(tmp_path: Path, make_settings: SettingsFactory) -> None:
    body = {
        "cluster": "cpu-2x2",
        "model": "tiny",
        "strategy": "flexsp",
        "batch": Batch.from_lengths(LENGTHS).model_dump(),
    }
    app = create_app(make_settings(tmp_path / "d.db", **FAST), solve_fn=CrashingSolve())
    with TestClient(app) as client:
        response = client.post("/v1/plans", json=body)
        assert response.status_code == 200, response.text
        assert Plan.model_validate_json(response.content).solver.status.value == "timeout-fallback"
        assert 'helix_solve_abandoned_total{reason="crash"} 1.0' in client.get("/metrics").text
        assert client.post("/v1/plans", json={**body, "strategy": "greedy"}).status_code == 200  # replaced
