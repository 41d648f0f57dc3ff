"""Property-based API test: schemathesis generates requests from the app's own OpenAPI schema (valid and
invalid) and every response must be a non-5xx that conforms to the documented status codes, content types and
response schemas.

Bounded (25 examples per operation and mode) and marked slow. Schemathesis' pytest plugin does not support
this pytest version, so operations are enumerated here and each runs its own hypothesis loop.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from planner_service.api import create_app
from tests.service.conftest import SMALL_JOB, small_settings

_TMP = tempfile.TemporaryDirectory(prefix="helix-schemathesis-")
_SETTINGS = small_settings(Path(_TMP.name) / "fuzz.db", solver_time_limit_s=1.0, default_sample_size=8)


def _seed_job() -> str:
    """A real job (registered through another app on the same DB), so generated valid requests also reach the
    job routes past the 404."""
    with TestClient(create_app(_SETTINGS)) as client:
        response = client.post("/v1/jobs", json={**SMALL_JOB, "num_stages": 1})
        assert response.status_code == 201, response.text
        return str(response.json()["job_id"])


SEEDED_JOB = _seed_job()
APP = create_app(_SETTINGS)
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


# Operations without inputs have no invalid variant to generate.
CASES = [(label, GenerationMode.POSITIVE) for label in sorted(OPERATIONS)] + [
    (label, GenerationMode.NEGATIVE) for label in sorted(OPERATIONS) if "/v1/" in label
]


@pytest.mark.slow
@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label}-{mode.value}" for label, mode in CASES])
def test_api_never_errors_on_generated_input(label: str, mode: GenerationMode) -> None:
    operation = OPERATIONS[label]
    seen = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: schemathesis.Case) -> None:
        nonlocal seen
        seen += 1
        if mode is GenerationMode.POSITIVE and case.path_parameters and "job_id" in case.path_parameters and seen % 2:
            case.path_parameters["job_id"] = SEEDED_JOB
        response = case.call()
        case.validate_response(response, checks=CHECKS)

    run()
