"""OpenAPI response declarations shared by the routers (every error body is a `proto.ErrorBody`)."""

from __future__ import annotations

from typing import Any

from proto import ErrorBody, Plan

_DESCRIPTIONS = {
    401: "Missing or wrong bearer token (code `unauthorized`).",
    404: "No such job or plan (code `not_found`).",
    409: "The step was already planned for another batch, or feedback names another plan (code `conflict`).",
    413: "Request body over the limit (code `too_large`).",
    422: "Invalid input (code `invalid_input`) or a workload no layout can run (code `infeasible`).",
    503: "The service is starting or stopping (code `not_ready`).",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS[s]} for s in (401, 413, 422, *statuses)}


PLAN_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"model": Plan, "description": "The plan, as the exact JSON bytes stored (compact)."}
}
