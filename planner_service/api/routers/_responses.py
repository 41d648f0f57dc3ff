"""OpenAPI response declarations shared by the routers (every error body is a `proto.ErrorBody`), and the
plan response: the stored gzip bytes as-is to a client that accepts gzip, the JSON otherwise."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from planner_service.api.service import ServedPlan
from proto import ErrorBody, Plan

_DESCRIPTIONS = {
    401: "Missing or wrong bearer token (code `unauthorized`).",
    404: "No such job or plan (code `not_found`).",
    409: "The step was already planned for another batch, or feedback names another plan (code `conflict`).",
    410: "The step's plan was pruned by the retention policy (code `gone`).",
    413: "Request body over the limit (code `too_large`).",
    422: "Invalid input (code `invalid_input`, naming the field; see the cross-field rules in the field "
    "descriptions) or a workload no layout can run (code `infeasible`).",
    503: "Not ready (`not_ready`), the solve queue is full (`busy`, with `Retry-After`), no plan within the "
    "deadline (`timeout`) or the store failed (`store_unavailable`).",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {
        s: {"model": ErrorBody, "description": _DESCRIPTIONS[s]} for s in (401, 413, 422, 503, *statuses)
    }
    out[503]["headers"] = _RETRY_AFTER
    return out


PLAN_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"model": Plan, "description": "The plan, as the exact JSON bytes stored (compact)."}
}


def plan_response(request: Request, served: ServedPlan, headers: dict[str, str]) -> Response:
    """The plan's bytes: gzip-encoded straight from the store when the client accepts gzip."""
    accepts = request.headers.get("accept-encoding", "")
    if "gzip" in accepts.lower():
        headers = {**headers, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        return Response(content=served.plan_gz, media_type="application/json", headers=headers)
    return Response(content=served.json_bytes(), media_type="application/json", headers=headers)
