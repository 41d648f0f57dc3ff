"""Property-based API test: schemathesis generates requests from the app's own OpenAPI schema (valid and
invalid) and every response must be a non-5xx that conforms to the documented status codes, content types,
headers and response schemas; every schema-invalid request must be refused (ST201), and a schema-valid
request may only be refused for a rule the schema documents (ST202: `documented_rejections_only`).

Bugs guarded (issue 14): `tokens_per_s: true` and `memory_reserve_bytes: false` were accepted (ST201), and
schema-valid requests were refused for rules the schema did not state (preset name "0", a lengths/seq_ids
count mismatch, the per-rank memory count).

Bounded (25 examples per operation and mode) and marked slow. Schemathesis' pytest plugin does not support
this pytest version, so operations are enumerated here and each runs its own hypothesis loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from planner_service.api import create_app
from planner_service.api.schemas import CROSS_FIELD_RULES
from proto.wire_types import INTEGER_RULE
from tests.service.service_inputs import SMALL_JOB, SettingsFactory

OPERATIONS = (
    "GET /healthz",
    "GET /metrics",
    "GET /readyz",
    "GET /v1/jobs/{job_id}",
    "GET /v1/jobs/{job_id}/plans/{step}",
    "POST /v1/jobs",
    "POST /v1/jobs/{job_id}/feedback",
    "POST /v1/jobs/{job_id}/plans",
    "POST /v1/plans",
    "PUT /v1/jobs/{job_id}/profile",
)
"""Every operation of the API; `test_every_operation_is_fuzzed` fails when the schema gains or loses one."""


def documented_rejections_only(ctx: object, response: object, case: schemathesis.Case) -> None:
    """ST202, exactly: a schema-valid request is refused with 422 only for a workload no layout can run
    (`infeasible`) or for a cross-field rule the API documents (`CROSS_FIELD_RULES`, named by the error's field)."""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 422:  # type: ignore[attr-defined]
        return
    body = response.json()  # type: ignore[attr-defined]
    if body["code"] == "infeasible" or INTEGER_RULE in body["message"]:
        return  # no layout can run it; or 5.0 for an integer, which JSON Schema allows and the API documents it refuses
    field = body.get("field") or ""
    documented = any(field == rule or field.startswith((f"{rule}.", f"{rule}[")) for rule in CROSS_FIELD_RULES)
    assert documented, f"a schema-valid request was refused for a rule the schema does not state: {body}"


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    missing_required_header,
    documented_rejections_only,
]

# Operations without inputs have no invalid variant to generate.
CASES = [(label, GenerationMode.POSITIVE) for label in OPERATIONS] + [
    (label, GenerationMode.NEGATIVE) for label in OPERATIONS if "/v1/" in label
]


@dataclass(frozen=True)
class FuzzTarget:
    operations: dict[str, schemathesis.APIOperation]
    seeded_job: str
    """A real job, so generated valid requests also reach the job routes past the 404."""


@pytest.fixture(scope="module")
def fuzz_target(make_settings: SettingsFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    """The app under test on a fresh DB, with one job registered through another app on the same file."""
    db = tmp_path_factory.mktemp("schemathesis") / "fuzz.db"
    fuzz_settings = make_settings(db, solver_time_limit_s=1.0, default_sample_size=8)
    with TestClient(create_app(fuzz_settings)) as client:
        response = client.post("/v1/jobs", json={**SMALL_JOB, "num_stages": 1})
        assert response.status_code == 201, response.text
        seeded = str(response.json()["job_id"])
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(fuzz_settings))
    yield FuzzTarget({op.label: op for op in (r.ok() for r in schema.get_all_operations())}, seeded)


def test_every_operation_is_fuzzed(fuzz_target: FuzzTarget) -> None:
    assert sorted(fuzz_target.operations) == sorted(OPERATIONS)


@pytest.mark.slow
@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label}-{mode.value}" for label, mode in CASES])
def test_api_never_errors_on_generated_input(fuzz_target: FuzzTarget, label: str, mode: GenerationMode) -> None:
    operation = fuzz_target.operations[label]
    seen = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: schemathesis.Case) -> None:
        nonlocal seen
        seen += 1
        if mode is GenerationMode.POSITIVE and case.path_parameters and "job_id" in case.path_parameters and seen % 2:
            case.path_parameters["job_id"] = fuzz_target.seeded_job
        response = case.call()
        case.validate_response(response, checks=CHECKS)

    run()
