"""The typed client's retry policy (httpx MockTransport): retry transient failures of idempotent calls, never
retry caller mistakes, and never repeat a job registration that may have reached the server."""

from __future__ import annotations

import httpx
import pytest

from planner_service.client import PlannerApiError, PlannerClient


def scripted(*responses: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return httpx.MockTransport(handler), seen


def test_idempotent_calls_retry_transient_errors() -> None:
    transport, seen = scripted(
        httpx.ConnectError("refused"),
        httpx.Response(503, json={"code": "not_ready", "message": "starting", "field": None}),
        httpx.Response(200, json={"status": "ok", "details": {}}),
    )
    with PlannerClient("http://planner", token="tok-12345678", transport=transport, backoff_s=0.0) as client:
        assert client.health().status == "ok"
    assert len(seen) == 3 and seen[-1].headers["authorization"] == "Bearer tok-12345678"


def test_caller_mistakes_raise_at_once_with_the_code() -> None:
    body = {"code": "invalid_input", "message": "lengths[3]: must be >= 1", "field": "lengths[3]"}
    transport, seen = scripted(httpx.Response(422, json=body))
    with (
        PlannerClient("http://planner", transport=transport, backoff_s=0.0) as client,
        pytest.raises(PlannerApiError) as err,
    ):
        client.plan_bytes_for_step("j", 0, [1, 2, 3, 0])
    assert (err.value.status, err.value.code, err.value.field) == (422, "invalid_input", "lengths[3]")
    assert len(seen) == 1


def test_job_registration_is_not_repeated_after_a_server_error() -> None:
    transport, seen = scripted(httpx.Response(503, json={"code": "not_ready", "message": "x", "field": None}))
    with (
        PlannerClient("http://planner", transport=transport, backoff_s=0.0) as client,
        pytest.raises(PlannerApiError) as err,
    ):
        client.create_job(cluster="cpu-2x2", model="tiny", strategy="greedy")
    assert err.value.code == "not_ready" and len(seen) == 1


def test_gives_up_after_the_retries() -> None:
    transport, seen = scripted(*(httpx.ConnectError("refused") for _ in range(3)))
    with (
        PlannerClient("http://planner", transport=transport, retries=2, backoff_s=0.0) as client,
        pytest.raises(PlannerApiError) as err,
    ):
        client.get_plan("j", 1)
    assert err.value.code == "unreachable" and err.value.status is None and len(seen) == 3
