"""Every route of the planner service through TestClient: happy paths and every error with its exact code.

Guards the wire contract the executor depends on: status codes, ErrorBody {code, message, field}, byte-identical
stored plans, idempotent per-step planning and the job-level pipeline-degree decision.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from planner_service.presets import CLUSTERS, MODELS
from planner_service.strategies.registry import STRATEGIES
from proto import Batch, Plan, validate_plan
from tests.service.service_inputs import LENGTHS, SMALL_JOB


def assert_error(response: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "field"}, body
    assert body["code"] == code, body
    assert body["message"], body
    if field is not None:
        assert body["field"] == field, body
    return dict(body)


# health, readiness, metrics -------------------------------------------------------------------------
def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "details": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["details"]["strategies"] == list(STRATEGIES)  # picked up from the registry
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    for name in ("helix_plan_latency_seconds", "helix_plan_cache_hits_total", "helix_measured_to_predicted_ratio"):
        assert name in metrics.text


def test_openapi_documents_every_route_with_a_description(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    expected = {
        ("/v1/plans", "post"), ("/v1/jobs", "post"), ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}/plans", "post"), ("/v1/jobs/{job_id}/plans/{step}", "get"),
        ("/v1/jobs/{job_id}/feedback", "post"), ("/v1/jobs/{job_id}/profile", "put"),
        ("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get"),
    }  # fmt: skip
    found = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert expected <= found
    for path, method in expected:
        assert spec["paths"][path][method].get("description"), f"{method} {path} has no docstring"


# stateless plans ------------------------------------------------------------------------------------
def test_stateless_plan_with_presets_is_valid(client: TestClient) -> None:
    body = {
        "cluster": "cpu-2x2",
        "model": "tiny",
        "strategy": "greedy",
        "batch": Batch.from_lengths(LENGTHS).model_dump(),
    }
    response = client.post("/v1/plans", json=body)
    assert response.status_code == 200, response.text
    plan = Plan.model_validate_json(response.content)
    validate_plan(plan, Batch.from_lengths(LENGTHS), CLUSTERS["cpu-2x2"], MODELS["tiny"])
    assert plan.strategy == "greedy" and plan.job_id is None


def test_stateless_plan_with_full_specs(client: TestClient) -> None:
    body = {
        "cluster": CLUSTERS["cpu-2x2"].model_dump(mode="json"),
        "model": MODELS["tiny"].model_dump(mode="json"),
        "strategy": "static",
        "batch": {"seq_ids": [10, 11, 12], "lengths": [100, 2000, 30]},
    }
    response = client.post("/v1/plans", json=body)
    assert response.status_code == 200, response.text
    assert Plan.model_validate_json(response.content).cluster_name == "cpu-2x2"


def test_stateless_plan_errors(client: TestClient) -> None:
    base: dict[str, Any] = {
        "cluster": "cpu-2x2",
        "model": "tiny",
        "strategy": "greedy",
        "batch": {"seq_ids": [0, 1], "lengths": [5, 6]},
    }
    assert_error(client.post("/v1/plans", json={**base, "cluster": "nope"}), 422, "invalid_input", "cluster")
    assert_error(client.post("/v1/plans", json={**base, "model": "../etc/passwd"}), 422, "invalid_input", "model")
    assert_error(client.post("/v1/plans", json={**base, "strategy": "nope"}), 422, "invalid_input", "strategy")
    bad = {**base, "batch": {"seq_ids": [0, 1, 2, 3], "lengths": [5, 6, 7, 0]}}
    assert_error(client.post("/v1/plans", json=bad), 422, "invalid_input", "batch.lengths[3]")
    huge = {**base, "batch": {"seq_ids": [0, 1], "lengths": [5, 10**10]}}
    assert_error(client.post("/v1/plans", json=huge), 422, "infeasible", "batch.lengths")
    assert_error(client.post("/v1/plans", json={**base, "extra": 1}), 422, "invalid_input", "extra")
    assert_error(
        client.post("/v1/plans", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "invalid_input",
    )
    too_many = {**base, "batch": Batch.from_lengths([1] * 257).model_dump()}
    assert_error(client.post("/v1/plans", json=too_many), 422, "invalid_input", "batch.lengths")
    big_cluster = {**base, "cluster": {**CLUSTERS["cpu-2x2"].model_dump(mode="json"), "num_nodes": 4096}}
    assert_error(client.post("/v1/plans", json=big_cluster), 422, "invalid_input", "cluster")


def test_non_finite_numbers_are_rejected_not_500(client: TestClient) -> None:
    """Python's JSON parser turns 1e999 into inf; that must be a 422, not a serialisation crash."""
    cluster = json.dumps(CLUSTERS["cpu-2x2"].model_dump(mode="json")).replace(
        '"peak_flops": 50000000000.0', '"peak_flops": 1e999'
    )
    body = (
        '{"cluster": ' + cluster + ', "model": "tiny", "strategy": "greedy", "batch": {"seq_ids": [0], "lengths": [5]}}'
    )
    response = client.post("/v1/plans", content=body, headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_input", "cluster.peak_flops")


# jobs -----------------------------------------------------------------------------------------------
def test_register_job_chooses_pipeline_degree_from_sample(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs",
        json={"cluster": "a800-80g-4x8", "model": "llama2-7b", "strategy": "greedy", "sample_lengths": LENGTHS * 2},
    )
    assert response.status_code == 201, response.text
    job = response.json()
    decisions = job["decisions"]
    assert decisions["sample_source"] == "sample_lengths" and decisions["sample_size"] == 16
    tried = {c["num_stages"]: c for c in decisions["candidates"]}
    assert sorted(tried) == [1, 2, 4, 8, 16, 32]  # powers of two dividing 32 devices, <= 32 layers
    feasible = [c for c in tried.values() if c["feasible"]]
    best = min(feasible, key=lambda c: (c["iteration_s"], c["num_stages"]))
    assert decisions["num_stages"] == best["num_stages"]
    assert len(decisions["layer_ranges"]) == decisions["num_stages"]
    assert job["counts"] == {"plans": 0, "pruned_plans": 0, "feedback": 0, "profiles": 0}
    assert job["latest_error"] is None and decisions["decided_by"] == "greedy"


def test_register_job_defaults_to_synthetic_sample_and_per_step_plans_use_its_p(
    client: TestClient, job_id: str
) -> None:
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["decisions"]["sample_source"] == "synthetic"
    assert [c["num_stages"] for c in job["decisions"]["candidates"]] == [1, 2]  # tiny has 2 layers
    plan = Plan.model_validate_json(
        client.post(f"/v1/jobs/{job_id}/plans", json={"step": 0, "lengths": LENGTHS}).content
    )
    assert plan.pipeline.num_stages == job["decisions"]["num_stages"]


def test_register_job_with_fixed_stages_and_full_specs(client: TestClient) -> None:
    body = {
        "cluster": CLUSTERS["cpu-2x2"].model_dump(mode="json"),
        "model": MODELS["tiny"].model_dump(mode="json"),
        "strategy": "static",
        "num_stages": 2,
    }
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["decisions"] == {
        "num_stages": 2, "layer_ranges": [[0, 1], [1, 2]], "sample_source": "fixed", "sample_size": 0,
        "decided_by": "", "candidates": [],
    }  # fmt: skip


def test_register_job_errors(client: TestClient) -> None:
    assert_error(client.post("/v1/jobs", json={**SMALL_JOB, "cluster": "nope"}), 422, "invalid_input", "cluster")
    assert_error(client.post("/v1/jobs", json={**SMALL_JOB, "model": "nope"}), 422, "invalid_input", "model")
    assert_error(client.post("/v1/jobs", json={**SMALL_JOB, "strategy": "nope"}), 422, "invalid_input", "strategy")
    assert_error(
        client.post("/v1/jobs", json={"cluster": "cpu-2x2", "model": "tiny"}), 422, "invalid_input", "strategy"
    )
    assert_error(client.post("/v1/jobs", json={**SMALL_JOB, "num_stages": 3}), 422, "invalid_input", "num_stages")
    bad = {**SMALL_JOB, "sample_lengths": [5, 6, -1]}
    assert_error(client.post("/v1/jobs", json=bad), 422, "invalid_input", "sample_lengths[2]")
    floats = {**SMALL_JOB, "sample_lengths": [5, 6.5]}
    assert_error(client.post("/v1/jobs", json=floats), 422, "invalid_input", "sample_lengths[1]")
    infeasible = {**SMALL_JOB, "sample_lengths": [10**11]}
    body = assert_error(client.post("/v1/jobs", json=infeasible), 422, "infeasible", "sample_lengths")
    assert "P=1" in body["message"] and "P=2" in body["message"]


def test_unknown_job_and_route(client: TestClient) -> None:
    assert_error(client.get("/v1/jobs/job_missing"), 404, "not_found", "job_id")
    assert_error(
        client.post("/v1/jobs/job_missing/plans", json={"step": 0, "lengths": [5]}), 404, "not_found", "job_id"
    )
    assert_error(client.get("/v1/jobs/job_missing/plans/0"), 404, "not_found", "job_id")
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.delete("/v1/jobs"), 405, "method_not_allowed")
    assert_error(client.get("/v1/jobs/bad%20id"), 422, "invalid_input", "job_id")


# per-step plans -------------------------------------------------------------------------------------
def test_step_plan_is_idempotent_and_stored_byte_identical(client: TestClient, job_id: str) -> None:
    first = client.post(f"/v1/jobs/{job_id}/plans", json={"step": 3, "lengths": LENGTHS})
    assert first.status_code == 200 and first.headers["x-helix-plan-source"] == "solve"
    again = client.post(f"/v1/jobs/{job_id}/plans", json={"step": 3, "lengths": LENGTHS, "seq_ids": list(range(8))})
    assert again.status_code == 200 and again.headers["x-helix-plan-source"] == "store"
    assert again.content == first.content
    stored = client.get(f"/v1/jobs/{job_id}/plans/3")
    assert stored.status_code == 200 and stored.content == first.content
    plan = Plan.model_validate_json(first.content)
    assert plan.job_id == job_id and plan.step == 3 and plan.plan_id == plan.content_hash()
    validate_plan(plan, Batch.from_lengths(LENGTHS), CLUSTERS["cpu-2x2"], MODELS["tiny"])
    assert "helix_plan_cache_hits_total 1.0" in client.get("/metrics").text
    assert client.get(f"/v1/jobs/{job_id}").json()["counts"]["plans"] == 1


def test_step_plan_errors(client: TestClient, job_id: str) -> None:
    url = f"/v1/jobs/{job_id}/plans"
    assert client.post(url, json={"step": 1, "lengths": LENGTHS}).status_code == 200
    assert_error(client.post(url, json={"step": 1, "lengths": [*LENGTHS[:-1], 9]}), 409, "conflict", "lengths")
    assert_error(client.post(url, json={"step": 1, "lengths": LENGTHS, "seq_ids": list(range(1, 9))}), 409, "conflict")
    assert_error(client.post(url, json={"step": 2, "lengths": [5, 6, 7, 0]}), 422, "invalid_input", "lengths[3]")
    assert_error(client.post(url, json={"step": 2, "lengths": ["5"]}), 422, "invalid_input", "lengths[0]")
    assert_error(client.post(url, json={"step": 2, "lengths": []}), 422, "invalid_input", "lengths")
    assert_error(client.post(url, json={"step": -1, "lengths": [5]}), 422, "invalid_input", "step")
    assert_error(client.post(url, json={"lengths": [5]}), 422, "invalid_input", "step")
    assert_error(
        client.post(url, json={"step": 2, "lengths": [5, 6], "seq_ids": [1, 1]}), 422, "invalid_input", "seq_ids"
    )
    assert_error(client.post(url, json={"step": 2, "lengths": [5, 6], "seq_ids": [1]}), 422, "invalid_input", "seq_ids")
    assert_error(client.post(url, json={"step": 2, "lengths": [1] * 257}), 422, "invalid_input", "lengths")
    assert_error(client.post(url, json={"step": 2, "lengths": [10**12]}), 422, "infeasible", "lengths")
    assert_error(client.post(url, json={"step": 2**63, "lengths": [5]}), 422, "invalid_input", "step")
    assert_error(client.get(f"{url}/99"), 404, "not_found", "step")
    assert_error(client.get(f"{url}/x"), 422, "invalid_input", "step")
    assert_error(client.get(f"{url}/{2**70}"), 422, "invalid_input", "step")


def test_a_failed_step_can_be_planned_again(client: TestClient, job_id: str) -> None:
    """An infeasible batch stores nothing: the step stays free for a valid batch."""
    url = f"/v1/jobs/{job_id}/plans"
    assert_error(client.post(url, json={"step": 4, "lengths": [10**12]}), 422, "infeasible")
    assert client.post(url, json={"step": 4, "lengths": LENGTHS}).status_code == 200


# feedback and profiles ------------------------------------------------------------------------------
def test_feedback_updates_latest_error_and_metrics(client: TestClient, job_id: str) -> None:
    plan = Plan.model_validate_json(
        client.post(f"/v1/jobs/{job_id}/plans", json={"step": 0, "lengths": LENGTHS}).content
    )
    measured = plan.predicted.iteration_s * 1.25
    body = {"step": 0, "plan_id": plan.plan_id, "measured_iteration_s": measured, "peak_memory_bytes": [1e9] * 4}
    response = client.post(f"/v1/jobs/{job_id}/feedback", json=body)
    assert response.status_code == 200, response.text
    assert abs(response.json()["ratio"] - 1.25) < 1e-9
    again = client.post(f"/v1/jobs/{job_id}/feedback", json=body)  # a retry replaces, does not double count
    assert again.status_code == 200
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["counts"]["feedback"] == 1
    err = job["latest_error"]
    assert err["step"] == 0 and err["plan_id"] == plan.plan_id
    assert abs(err["ratio"] - 1.25) < 1e-9 and abs(err["relative_error"] - 0.25) < 1e-9
    assert "helix_last_measured_to_predicted_ratio 1.25" in client.get("/metrics").text


def test_feedback_errors(client: TestClient, job_id: str) -> None:
    plan = Plan.model_validate_json(
        client.post(f"/v1/jobs/{job_id}/plans", json={"step": 0, "lengths": LENGTHS}).content
    )
    url = f"/v1/jobs/{job_id}/feedback"
    good = {"step": 0, "plan_id": plan.plan_id, "measured_iteration_s": 1.0}
    assert_error(client.post(url, json={**good, "plan_id": "other"}), 409, "conflict", "plan_id")
    assert_error(
        client.post(url, json={**good, "measured_iteration_s": 0}), 422, "invalid_input", "measured_iteration_s"
    )
    assert_error(client.post(url, json={**good, "peak_memory_bytes": [1.0]}), 422, "invalid_input", "peak_memory_bytes")
    assert_error(client.post(url, json={**good, "step": 2**63}), 422, "invalid_input", "step")
    assert_error(client.post("/v1/jobs/job_missing/feedback", json=good), 404, "not_found", "job_id")
    # feedback for a step planned elsewhere (the executor's local fallback) is kept, without a prediction
    response = client.post(url, json={**good, "step": 7, "plan_id": "local"})
    assert response.status_code == 200 and response.json()["ratio"] is None


def test_profile_is_used_for_later_plans(client: TestClient, job_id: str) -> None:
    url = f"/v1/jobs/{job_id}/plans"
    before = Plan.model_validate_json(client.post(url, json={"step": 0, "lengths": LENGTHS}).content)
    from planner_service.cost_model import CostModel

    profile = CostModel.from_specs(CLUSTERS["cpu-2x2"], MODELS["tiny"]).profile
    slower = profile.model_copy(update={"linear_s_per_token": profile.linear_s_per_token * 10, "name": "measured"})
    response = client.put(f"/v1/jobs/{job_id}/profile", json=slower.model_dump(mode="json"))
    assert response.status_code == 200 and response.json() == {"job_id": job_id, "version": 1}
    after = Plan.model_validate_json(client.post(url, json={"step": 1, "lengths": LENGTHS}).content)
    assert after.predicted.iteration_s > before.predicted.iteration_s * 2
    assert client.get(f"{url}/0").content == before.model_dump_json().encode()  # stored plans are unchanged
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["profile_version"] == 1 and job["counts"]["profiles"] == 1


def test_profile_errors(client: TestClient, job_id: str) -> None:
    assert_error(client.put(f"/v1/jobs/{job_id}/profile", json={"name": "x"}), 422, "invalid_input")
    from planner_service.cost_model import CostModel

    profile = CostModel.from_specs(CLUSTERS["cpu-2x2"], MODELS["tiny"]).profile.model_dump(mode="json")
    assert_error(client.put("/v1/jobs/job_missing/profile", json=profile), 404, "not_found", "job_id")
    bad = {**profile, "alltoall_bw_intra": -1}
    assert_error(client.put(f"/v1/jobs/{job_id}/profile", json=bad), 422, "invalid_input", "alltoall_bw_intra")
