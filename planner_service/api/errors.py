"""Every error the service returns is a JSON `proto.ErrorBody` {code, message, field} with a stable code.

Why: the executor and other clients branch on `code`, not on prose; a caller mistake is always a 4xx
naming the offending field, never a 500 and never FastAPI's default `{"detail": ...}` shape.

Codes: 401 `unauthorized`, 404 `not_found`, 405 `method_not_allowed`, 409 `conflict`, 410 `gone` (a plan
pruned by the retention policy), 413 `too_large`, 422 `invalid_input` (malformed or out-of-limit input) and
`infeasible` (a valid workload no layout of the cluster can run), 503 `not_ready`, `busy` (the solve queue is
full; `Retry-After` says when to retry), `timeout` (no plan, not even the greedy one, within the deadline) and
`store_unavailable` (the database failed), 500 `internal` (a bug, logged with its traceback).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from planner_service.errors import InfeasibleWorkload, PlanningError
from planner_service.presets import PresetError
from planner_service.store import StoreError
from proto import ErrorBody

log = logging.getLogger(__name__)

# Status -> code for errors raised by Starlette itself (unknown route, wrong method).
_HTTP_CODES = {
    400: "invalid_input",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "too_large",
    422: "invalid_input",
    503: "not_ready",
}
# A model validator's message that starts with the field it is about: "lengths[3] = 0: ...", "seq_ids has ...".
_FIELD_IN_MESSAGE = re.compile(r"^(?:Value error, )?([a-z][a-z0-9]*(?:_[a-z0-9]+)+|lengths|seq_ids)(\[\d+\])?[ :(]")


class ApiError(Exception):
    """Raised by routes and dependencies; rendered as an ErrorBody with `status`."""

    def __init__(
        self, status: int, code: str, message: str, *, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


def not_found(what: str, *, field: str | None = None) -> ApiError:
    return ApiError(404, "not_found", f"{what} does not exist", field=field)


def error_response(status: int, code: str, message: str, field: str | None = None, **kw: Any) -> JSONResponse:
    body = ErrorBody(code=code, message=message, field=field)
    return JSONResponse(status_code=status, content=body.model_dump(mode="json"), **kw)


def format_loc(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """FastAPI's ("body", "batch", "lengths", 3) -> "batch.lengths[3]"; None for the whole body."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, str) and (part.startswith(("function-", "tagged-")) or part in ("str", "int")):
            continue  # pydantic's name for a union member ("ClusterSpec" / "str") is not a field
        else:
            text += f".{part}" if text else str(part)
    return text or None


def validation_field(error: dict[str, Any]) -> str | None:
    """The offending field of one pydantic error, refined from the message of a model-level validator."""
    if error.get("type") == "json_invalid":
        return "body"  # its loc holds a character offset, not a list index
    loc = [p for p in error.get("loc", ()) if not (isinstance(p, str) and p[:1].isupper())]  # drop union tags
    base = format_loc(loc)
    match = _FIELD_IN_MESSAGE.match(str(error.get("msg", "")))
    if match and error.get("type") == "value_error":
        inner = match.group(1) + (match.group(2) or "")
        return f"{base}.{inner}" if base else inner
    return base


def planning_error_response(exc: PlanningError | PresetError) -> JSONResponse:
    code = "infeasible" if isinstance(exc, InfeasibleWorkload) else "invalid_input"
    return error_response(422, code, str(exc), getattr(exc, "field", None))


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception a request can raise to an ErrorBody."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else exc.headers
        return error_response(exc.status, exc.code, exc.message, exc.field, headers=headers)

    @app.exception_handler(StoreError)
    async def _store_error(_: Request, exc: StoreError) -> JSONResponse:
        log.error("store failure: %s", exc)
        return error_response(503, "store_unavailable", f"{exc}; retry later")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if not errors:
            return error_response(422, "invalid_input", "invalid request")
        first = errors[0]
        field = validation_field(first)
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            offset = next((p for p in first.get("loc", ()) if isinstance(p, int)), None)
            msg = f"malformed JSON at character {offset}: {first.get('ctx', {}).get('error', msg)}"
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        where = f"{field}: " if field else ""
        return error_response(422, "invalid_input", f"{where}{msg}{more}", field)

    @app.exception_handler(PlanningError)
    async def _planning_error(_: Request, exc: PlanningError) -> JSONResponse:
        return planning_error_response(exc)

    @app.exception_handler(PresetError)
    async def _preset_error(_: Request, exc: PresetError) -> JSONResponse:
        return planning_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. bytes that are not UTF-8)
            return error_response(422, "invalid_input", f"body: {exc.detail}", "body")
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = str(exc.detail) if exc.detail else code
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", exc)
        return error_response(500, "internal", f"internal error ({type(exc).__name__}); see the service log")
