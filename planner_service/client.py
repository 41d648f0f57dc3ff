"""Typed HTTP client of the planner service (used by the executor's rank 0 and by `helix inspect --server`).

Why retries here: a training job must not die because the planner restarted or a packet was lost. Every
call the service makes idempotent (per-step plans, GETs, feedback per step, profile PUT) is retried on
connection errors, timeouts, 429 and 5xx with exponential backoff; job registration is only retried when
the request never reached the server, or was refused unexecuted (503 `busy`). A 503 `busy` is retried after
its `Retry-After` (at most `max_retry_after_s`), within the same retry budget. Caller mistakes (4xx) raise
`PlannerApiError` at once, with the service's `code`, `message` and `field`; a body the service would refuse
(an unknown strategy, a bad number) is refused here the same way, without a request.

Depends on httpx, pydantic and `proto` only (no FastAPI).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import httpx
from pydantic import ValidationError

from planner_service.api.schemas import FeedbackAccepted, Health, JobCreate, JobPublic, ProfileAccepted
from proto import ClusterSpec, CostProfile, ErrorBody, Feedback, ModelSpec, Plan, PlanOptions

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=120.0, write=30.0, pool=10.0)
MAX_RETRY_AFTER_S = 30.0
"""The longest `Retry-After` the client honours; a longer one is cut to this."""


class PlannerApiError(RuntimeError):
    """The service answered with an error (or not at all, after every retry)."""

    def __init__(self, status: int | None, code: str, message: str, field: str | None = None) -> None:
        where = f" [{field}]" if field else ""
        super().__init__(f"{status or 'no response'} {code}{where}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class PlannerClient:
    """Synchronous client; one instance per process, usable as a context manager."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff_s: float = 0.2,
        max_retry_after_s: float = MAX_RETRY_AFTER_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PlannerClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # transport --------------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, json: Any = None, idempotent: bool = True) -> httpx.Response:
        """Send with retries; return a 2xx response or raise `PlannerApiError`."""
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, json=json)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # never reached the server: always safe
                error: Exception | httpx.Response = exc
            except httpx.TransportError as exc:  # may have reached it: retry only idempotent calls
                if not idempotent:
                    raise PlannerApiError(None, "transport_error", f"{method} {path}: {exc}") from exc
                error = exc
            else:
                if response.is_success:
                    return response
                if response.status_code not in RETRY_STATUSES and response.status_code < 500:
                    raise _api_error(response)
                if not idempotent and not _refused_unexecuted(response):
                    raise _api_error(response)
                error = response
            if attempt >= self.retries:
                if isinstance(error, httpx.Response):
                    raise _api_error(error)
                raise PlannerApiError(None, "unreachable", f"{method} {path}: {error}") from error
            delay = self._delay(error, attempt)
            log.warning("planner %s %s failed (%s); retry %d/%d in %.2fs", method, path, _describe(error),
                        attempt + 1, self.retries, delay)  # fmt: skip
            time.sleep(delay)
            attempt += 1

    def _delay(self, error: Exception | httpx.Response, attempt: int) -> float:
        """The service's `Retry-After` when it sent one (bounded), else exponential backoff."""
        if isinstance(error, httpx.Response):
            retry_after = _retry_after_s(error)
            if retry_after is not None:
                return min(retry_after, self.max_retry_after_s)
        return float(self.backoff_s * 2**attempt)

    # API --------------------------------------------------------------------------------------------
    def health(self) -> Health:
        """Liveness of the service (`GET /healthz`)."""
        return Health.model_validate_json(self.request("GET", "/healthz").content)

    def create_job(
        self,
        *,
        cluster: ClusterSpec | str,
        model: ModelSpec | str,
        strategy: str,
        options: PlanOptions | None = None,
        solver: str = "cpsat",
        time_limit_s: float | None = None,
        sample_lengths: Sequence[int] | None = None,
        num_stages: int | None = None,
        profile: CostProfile | None = None,
        layer_ranges: Sequence[tuple[int, int]] | None = None,
    ) -> JobPublic:
        """Register a job; the service chooses its pipeline degree once (see `JobPublic.decisions`)."""
        try:
            body = JobCreate(
                cluster=cluster,
                model=model,
                strategy=strategy,
                options=options or PlanOptions(),
                solver=solver,
                time_limit_s=time_limit_s,
                sample_lengths=list(sample_lengths) if sample_lengths is not None else None,
                num_stages=num_stages,
                layer_ranges=[tuple(r) for r in layer_ranges] if layer_ranges is not None else None,
                profile=profile,
            )
        except ValidationError as exc:  # what the service would answer with 422, without sending it
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ()) if not str(p)[:1].isupper()) or None
            raise PlannerApiError(422, "invalid_input", str(first.get("msg", "invalid")), field) from None
        response = self.request("POST", "/v1/jobs", json=body.model_dump(mode="json"), idempotent=False)
        return JobPublic.model_validate_json(response.content)

    def get_job(self, job_id: str) -> JobPublic:
        return JobPublic.model_validate_json(self.request("GET", f"/v1/jobs/{job_id}").content)

    def plan_for_step(
        self, job_id: str, step: int, lengths: Sequence[int], seq_ids: Sequence[int] | None = None
    ) -> Plan:
        """The plan of one step's batch (solved once per (job, step); retried safely)."""
        return _parse_plan(self.plan_bytes_for_step(job_id, step, lengths, seq_ids))

    def plan_bytes_for_step(
        self, job_id: str, step: int, lengths: Sequence[int], seq_ids: Sequence[int] | None = None
    ) -> bytes:
        """Like `plan_for_step`, but the exact bytes (what rank 0 broadcasts, byte-identical on every node)."""
        body: dict[str, Any] = {"step": step, "lengths": list(lengths)}
        if seq_ids is not None:
            body["seq_ids"] = list(seq_ids)
        return self.request("POST", f"/v1/jobs/{job_id}/plans", json=body).content

    def get_plan(self, job_id: str, step: int) -> Plan:
        """A stored plan (404 `not_found` when the step was never planned)."""
        return _parse_plan(self.get_plan_bytes(job_id, step))

    def get_plan_bytes(self, job_id: str, step: int) -> bytes:
        return self.request("GET", f"/v1/jobs/{job_id}/plans/{step}").content

    def plan(self, body: dict[str, Any]) -> Plan:
        """Stateless planning (`POST /v1/plans` with a `proto.PlanRequest` body)."""
        return _parse_plan(self.request("POST", "/v1/plans", json=body).content)

    def send_feedback(self, job_id: str, feedback: Feedback) -> FeedbackAccepted:
        """Report a step's measured time; a retried report replaces the first, so retries are safe."""
        response = self.request("POST", f"/v1/jobs/{job_id}/feedback", json=feedback.model_dump(mode="json"))
        return FeedbackAccepted.model_validate_json(response.content)

    def put_profile(self, job_id: str, profile: CostProfile) -> ProfileAccepted:
        """Use `profile` for the job's later plans."""
        response = self.request("PUT", f"/v1/jobs/{job_id}/profile", json=profile.model_dump(mode="json"))
        return ProfileAccepted.model_validate_json(response.content)


def _parse_plan(data: bytes) -> Plan:
    try:
        return Plan.model_validate_json(data)
    except ValidationError as exc:
        raise PlannerApiError(200, "bad_response", f"the service returned something that is not a plan: {exc}") from exc


def _api_error(response: httpx.Response) -> PlannerApiError:
    try:
        body = ErrorBody.model_validate_json(response.content)
    except ValidationError:
        text = response.text[:200] or response.reason_phrase
        return PlannerApiError(response.status_code, "http_error", text)
    return PlannerApiError(response.status_code, body.code, body.message, body.field)


def _refused_unexecuted(response: httpx.Response) -> bool:
    """503 `busy`: the service refused the request before doing anything, so even a registration may retry."""
    if response.status_code != 503:
        return False
    try:
        return ErrorBody.model_validate_json(response.content).code == "busy"
    except ValidationError:
        return False


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: fall back to backoff
    return max(0.0, seconds)


def _describe(error: Exception | httpx.Response) -> str:
    if isinstance(error, httpx.Response):
        return f"HTTP {error.status_code}"
    return f"{type(error).__name__}: {error}"
