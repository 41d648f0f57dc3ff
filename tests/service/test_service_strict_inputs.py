"""Strict, bounded inputs: no coercion of strings, floats or booleans, enums for names, physical bounds on every
cluster and profile number, bounded names, and errors that name the field.

Bugs guarded (issue 14): `"solver": "gurobi"` (or `"../../bin/sh"`) was accepted and every plan silently fell
back to greedy; a profile with `attn_s_per_token2 = 1e308` or a bandwidth of 5e-324 was stored and broke every
later plan of the job; a 1 MB profile name was stored; `cluster.peak_flops = 1e-300` answered with raw
pydantic text about a NaN; lengths `"5"` / `5.0` and `seq_ids` of -1 or 2^64 were coerced on `/v1/plans`;
feedback took `measured_iteration_s: true`, `tokens_per_s: true`; a profile took `memory_reserve_bytes: false`;
malformed JSON reported `field: "[23]"`; `/readyz` showed the database path.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from planner_service.cost_model import CostModel
from planner_service.presets import CLUSTERS, MODELS
from proto import Plan
from tests.service.service_inputs import LENGTHS, SMALL_JOB
from tests.service.test_service_routes import assert_error

PROFILE = CostModel.from_specs(CLUSTERS["cpu-2x2"], MODELS["tiny"]).profile.model_dump(mode="json")
CLUSTER = CLUSTERS["cpu-2x2"].model_dump(mode="json")


def stateless(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"cluster": "cpu-2x2", "model": "tiny", "strategy": "greedy"}
    body["batch"] = {"seq_ids": list(range(len(LENGTHS))), "lengths": list(LENGTHS)}
    for key, value in changes.items():
        if key.startswith("batch."):
            body["batch"] = {**body["batch"], key.removeprefix("batch."): value}
        else:
            body[key] = value
    return body


@pytest.mark.parametrize("solver", ["gurobi", "../../bin/sh", "", "CPSAT"])
def test_unknown_solver_is_refused_not_a_silent_greedy_fallback(client: TestClient, solver: str) -> None:
    assert_error(client.post("/v1/jobs", json={**SMALL_JOB, "solver": solver}), 422, "invalid_input", "solver")
    assert_error(client.post("/v1/plans", json=stateless(solver=solver)), 422, "invalid_input", "solver")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"batch.lengths": ["5", *LENGTHS[1:]]}, "batch.lengths[0]"),
        ({"batch.lengths": [5.0, *LENGTHS[1:]]}, "batch.lengths[0]"),
        ({"batch.lengths": [True, *LENGTHS[1:]]}, "batch.lengths[0]"),
        ({"batch.seq_ids": [-1, *range(1, len(LENGTHS))]}, "batch.seq_ids[0]"),
        ({"batch.seq_ids": [2**64, *range(1, len(LENGTHS))]}, "batch.seq_ids[0]"),
        ({"time_limit_s": "1"}, "time_limit_s"),
        ({"time_limit_s": True}, "time_limit_s"),
        ({"strategy": "nope"}, "strategy"),
        ({"cluster": "0"}, "cluster"),
        ({"options": {"zero_stage": "1"}}, "options.zero_stage"),
        ({"options": {"zero_stage": True}}, "options.zero_stage"),
    ],
)
def test_stateless_plans_are_as_strict_as_job_plans(client: TestClient, change: dict[str, Any], field: str) -> None:
    assert_error(client.post("/v1/plans", json=stateless(**change)), 422, "invalid_input", field)


@pytest.mark.parametrize(
    ("number", "value"),
    [
        ("peak_flops", 1e-300),
        ("peak_flops", 1e300),
        ("intra_node_bandwidth", 5e-324),
        ("inter_node_bandwidth", 5e-324),
        ("device_memory_bytes", 1.0),
        ("intra_node_latency_s", 1e9),
        ("num_nodes", 2.0),
        ("num_nodes", "2"),
    ],
)
def test_cluster_numbers_must_be_physical(client: TestClient, number: str, value: Any) -> None:
    body = stateless(cluster={**CLUSTER, number: value})
    assert_error(client.post("/v1/plans", json=body), 422, "invalid_input", f"cluster.{number}")


@pytest.mark.parametrize(
    ("number", "value"),
    [
        ("attn_s_per_token2", 1e308),
        ("alltoall_bw_intra", 5e-324),
        ("p2p_bw_inter", 5e-324),
        ("allreduce_bw_inter", 1e200),
        ("kv_bytes_per_token_layer", 5e-324),
        ("memory_reserve_bytes", False),
        ("memory_reserve_bytes", "0"),
        ("linear_s_per_token", True),
        ("backward_to_forward", 50.0),
    ],
)
def test_profile_numbers_must_be_physical(client: TestClient, job_id: str, number: str, value: Any) -> None:
    url = f"/v1/jobs/{job_id}/profile"
    assert_error(client.put(url, json={**PROFILE, number: value}), 422, "invalid_input", number)
    assert client.get(f"/v1/jobs/{job_id}").json()["counts"]["profiles"] == 0  # nothing stored
    plan = client.post(f"/v1/jobs/{job_id}/plans", json={"step": 0, "lengths": LENGTHS})
    assert plan.status_code == 200, plan.text  # and the job still plans


def test_names_are_bounded_and_profile_versions_are_capped(
    client: TestClient, job_id: str, make_settings: Any, tmp_path: Any
) -> None:
    url = f"/v1/jobs/{job_id}/profile"
    assert_error(client.put(url, json={**PROFILE, "name": "x" * 129}), 422, "invalid_input", "name")
    assert_error(client.put(url, json={**PROFILE, "source": "x" * 1025}), 422, "invalid_input", "source")
    for _ in range(35):
        assert client.put(url, json=PROFILE).status_code == 200
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["profile_version"] == 35 and job["counts"]["profiles"] == 32  # HELIX_MAX_PROFILE_VERSIONS


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"measured_iteration_s": True}, "measured_iteration_s"),
        ({"measured_iteration_s": "1.5"}, "measured_iteration_s"),
        ({"measured_iteration_s": 1e300}, "measured_iteration_s"),
        ({"tokens_per_s": True}, "tokens_per_s"),
        ({"step": 1.0}, "step"),
        ({"step": "0"}, "step"),
        ({"peak_memory_bytes": [1e9, 1e9, 1e9, True]}, "peak_memory_bytes[3]"),
        ({"peak_memory_bytes": [1e9, 1e9, 1e9, -1]}, "peak_memory_bytes[3]"),
        ({"plan_id": "p" * 129}, "plan_id"),
    ],
)
def test_feedback_numbers_are_exact(client: TestClient, job_id: str, change: dict[str, Any], field: str) -> None:
    plan = Plan.model_validate_json(
        client.post(f"/v1/jobs/{job_id}/plans", json={"step": 0, "lengths": LENGTHS}).content
    )
    body = {"step": 0, "plan_id": plan.plan_id, "measured_iteration_s": 1.0, **change}
    assert_error(client.post(f"/v1/jobs/{job_id}/feedback", json=body), 422, "invalid_input", field)


@pytest.mark.parametrize(
    ("change", "field"),
    [({"step": 1.0}, "step"), ({"step": True}, "step"), ({"lengths": [5.0]}, "lengths[0]"),
     ({"seq_ids": [2**64]}, "seq_ids[0]")],
)  # fmt: skip
def test_job_plan_numbers_are_exact(client: TestClient, job_id: str, change: dict[str, Any], field: str) -> None:
    body = {"step": 0, "lengths": [5], **change}
    assert_error(client.post(f"/v1/jobs/{job_id}/plans", json=body), 422, "invalid_input", field)


def test_the_service_size_limits_name_the_field(client: TestClient, job_id: str) -> None:
    too_many = {"step": 0, "lengths": [64] * 257}  # SMALL_SETTINGS: 256 sequences
    body = assert_error(client.post(f"/v1/jobs/{job_id}/plans", json=too_many), 422, "invalid_input", "lengths")
    assert "HELIX_MAX_SEQUENCES" in body["message"]
    huge = stateless(cluster={**CLUSTER, "num_nodes": 4096, "devices_per_node": 64})
    body = assert_error(client.post("/v1/plans", json=huge), 422, "invalid_input", "cluster")
    assert "HELIX_MAX_DEVICES" in body["message"]


def test_malformed_json_names_the_body_not_a_list_index(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs", content=b'{"cluster": "cpu-2x2",, }', headers={"content-type": "application/json"}
    )
    body = assert_error(response, 422, "invalid_input", "body")
    assert "malformed JSON at character 22" in body["message"]


def test_readyz_does_not_show_where_the_store_is(client: TestClient, settings: Any) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["details"]["store"] == "sqlite"
    assert str(settings.db) not in ready.text and "plans.db" not in ready.text


def _integer_maximums(node: Any) -> list[int]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k == "maximum" and isinstance(v, int) and not isinstance(v, bool)]
        return found + [b for v in node.values() for b in _integer_maximums(v)]
    if isinstance(node, list):
        return [b for v in node for b in _integer_maximums(v)]
    return []


def test_every_integer_bound_survives_a_float_based_client(client: TestClient) -> None:
    """A client that holds JSON numbers as doubles sends the largest double within a bound as its shortest
    decimal: for 2**62 that is 4611686018427388000, above the bound, so a request at the documented maximum was
    refused (schemathesis found it for `step`). Every integer maximum of the schema must survive that."""
    maximums = _integer_maximums(client.get("/openapi.json").json())
    assert maximums
    for bound in maximums:
        near = float(bound) if float(bound) <= bound else math.nextafter(float(bound), -math.inf)
        assert Decimal(repr(near)) <= bound, (bound, repr(near))
