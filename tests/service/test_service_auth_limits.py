"""Bearer-token auth on every /v1 route, the body-size limit, and the settings' refusal of weak tokens.

Guards the pitfall of an unauthenticated plan store (DESIGN §12) and of unbounded request bodies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from planner_service.api import Settings, create_app
from tests.service.service_inputs import LENGTHS, SMALL_JOB, TOKEN, SettingsFactory

V1_CALLS = [
    ("post", "/v1/plans"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs/j1"),
    ("post", "/v1/jobs/j1/plans"),
    ("get", "/v1/jobs/j1/plans/0"),
    ("post", "/v1/jobs/j1/feedback"),
    ("put", "/v1/jobs/j1/profile"),
]


@pytest.fixture
def auth_client(make_settings: SettingsFactory, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path / "auth.db", api_token=TOKEN))) as c:
        yield c


@pytest.mark.parametrize(("method", "path"), V1_CALLS)
def test_every_v1_route_needs_the_token(auth_client: TestClient, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-123"}, {"Authorization": f"Basic {TOKEN}"}):
        response = auth_client.request(method, path, json={}, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"


def test_right_token_passes_and_ops_routes_stay_open(auth_client: TestClient) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = auth_client.post("/v1/jobs", json=SMALL_JOB, headers=headers)
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    plan = auth_client.post(f"/v1/jobs/{job_id}/plans", json={"step": 0, "lengths": LENGTHS}, headers=headers)
    assert plan.status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert auth_client.get(path).status_code == 200


def test_body_over_the_limit_is_413(client: TestClient, job_id: str) -> None:
    huge = {"step": 0, "lengths": [1] * 40_000}  # > 64 KiB of JSON
    response = client.post(f"/v1/jobs/{job_id}/plans", json=huge)
    assert response.status_code == 413
    assert response.json() == {
        "code": "too_large", "message": "request body exceeds 65536 bytes (HELIX_MAX_BODY_BYTES)", "field": "body"
    }  # fmt: skip

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"step": 0, "lengths": ['
        for _ in range(20_000):
            yield b"1, 1, "
        yield b"1]}"

    streamed = client.post(f"/v1/jobs/{job_id}/plans", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["code"] == "too_large"


def test_settings_from_env_and_weak_tokens(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HELIX_API_TOKEN", TOKEN)
    monkeypatch.setenv("HELIX_DB", str(tmp_path / "env.db"))
    monkeypatch.setenv("HELIX_MAX_CONCURRENT_SOLVES", "3")
    settings = Settings()
    assert settings.token == TOKEN and settings.db == str(tmp_path / "env.db") and settings.max_concurrent_solves == 3
    assert TOKEN not in repr(settings)  # a secret never lands in a log line
    monkeypatch.setenv("HELIX_API_TOKEN", "")
    assert Settings().token is None
    for weak in ("short", "changeme"):
        monkeypatch.setenv("HELIX_API_TOKEN", weak)
        with pytest.raises(ValidationError, match="HELIX_API_TOKEN must be at least"):
            Settings()


@pytest.mark.parametrize("blank", [" " * 8, " " * 40, "\t" * 9, " s3cret-token-0123 ", "s3cret token 0123"])
def test_a_token_of_spaces_or_with_spaces_is_refused(monkeypatch: pytest.MonkeyPatch, blank: str) -> None:
    """Bug: an API token of eight spaces passed the length check, so the service "had auth" that any
    client sending eight spaces (or a client trimming headers, none) would fail or pass unpredictably."""
    monkeypatch.setenv("HELIX_API_TOKEN", blank)
    with pytest.raises(ValidationError, match="HELIX_API_TOKEN must not contain spaces"):
        Settings()
