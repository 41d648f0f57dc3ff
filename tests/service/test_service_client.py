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


def test_busy_is_retried_after_its_retry_after_even_for_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    """503 `busy` means the request was refused before any work: the client waits the service's `Retry-After`
    (bounded by `max_retry_after_s`) and retries, a job registration included."""
    slept: list[float] = []
    monkeypatch.setattr("planner_service.client.time.sleep", slept.append)
    busy = {"code": "busy", "message": "the solve queue is full", "field": None}
    job = {"cluster": "cpu-2x2", "model": "tiny", "strategy": "greedy"}
    transport, seen = scripted(
        httpx.Response(503, json=busy, headers={"Retry-After": "3"}),
        httpx.Response(503, json=busy, headers={"Retry-After": "3600"}),
        httpx.Response(503, json={"code": "not_ready", "message": "x", "field": None}),
    )
    with (
        PlannerClient("http://planner", transport=transport, retries=5, max_retry_after_s=20) as client,
        pytest.raises(PlannerApiError) as err,
    ):
        client.create_job(**job)
    assert err.value.code == "not_ready" and len(seen) == 3  # not_ready is not retried for a registration
    assert slept == [3.0, 20.0]


def test_busy_retries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("planner_service.client.time.sleep", slept.append)
    busy = {"code": "busy", "message": "full", "field": None}
    transport, seen = scripted(*(httpx.Response(503, json=busy, headers={"Retry-After": "1"}) for _ in range(3)))
    with (
        PlannerClient("http://planner", transport=transport, retries=2) as client,
        pytest.raises(PlannerApiError) as err,
    ):
        client.plan_bytes_for_step("j", 0, [1, 2])
    assert (err.value.status, err.value.code) == (503, "busy") and len(seen) == 3 and slept == [1.0, 1.0]


def test_a_body_the_service_would_refuse_is_refused_without_a_request() -> None:
    transport, seen = scripted()
    with PlannerClient("http://planner", transport=transport) as client, pytest.raises(PlannerApiError) as err:
        client.create_job(cluster="cpu-2x2", model="tiny", strategy="../../bin/sh")
    assert (err.value.status, err.value.code, err.value.field) == (422, "invalid_input", "strategy") and not seen
