"""How `helix serve` (and the live-server tests) run the app under uvicorn: timeouts and connection limits.

Why a protocol subclass: uvicorn closes idle keep-alive connections, but has no deadline for reading a
request, so a client that sends half its headers (or half its body) and stalls holds a connection and its
buffers forever (slowloris). `TimedH11Protocol` closes a connection whose request head has not arrived
within `header_timeout_s` of its first byte (or of the connection opening), or whose body has not arrived
within `body_timeout_s` of its head. The head size is bounded by h11 (`max_header_bytes`), concurrent
connections by uvicorn's `limit_concurrency` (503 beyond), idle keep-alive by `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from planner_service.api.settings import Settings


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with read deadlines for a request's head and body (class attributes are set
    per server by `timed_protocol`)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None
        self._reading: str = ""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("head", self.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _track_request(self) -> None:
        """Arm the head deadline while a request's head is partial, the body deadline while its body is."""
        state = self.conn.their_state
        if state is h11.IDLE and self.conn.trailing_data[0]:
            self._arm("head", self.header_timeout_s)  # bytes of a next request are buffered: its head is partial
        elif state is h11.SEND_BODY:
            self._arm("body", self.body_timeout_s)
        elif state is not h11.IDLE:
            self._disarm()  # the request is complete (or the connection is closing): the app has it

    def _arm(self, phase: str, seconds: float) -> None:
        if self._reading == phase:
            return  # the deadline runs from the phase's start, not from the latest byte
        self._disarm()
        self._reading = phase
        self._read_timer = self.loop.call_later(seconds, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer, self._reading = None, ""

    def _read_timed_out(self) -> None:
        phase = self._reading
        self._read_timer, self._reading = None, ""
        if not self.transport.is_closing():
            self.logger.info("closing a connection whose request %s did not arrive in time", phase)
            self.transport.close()


def timed_protocol(settings: Settings) -> type[TimedH11Protocol]:
    """The protocol class with this service's read deadlines."""
    return type(
        "HelixH11Protocol",
        (TimedH11Protocol,),
        {"header_timeout_s": settings.header_timeout_s, "body_timeout_s": settings.body_timeout_s},
    )


def uvicorn_config(
    app: Any, settings: Settings, *, host: str = "127.0.0.1", port: int = 8000, **kw: Any
) -> uvicorn.Config:
    """uvicorn's settings for the planner: read deadlines, keep-alive, head size and connection limits."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=timed_protocol(settings),
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_graceful_shutdown=int(settings.solver_time_limit_s + settings.deadline_margin_s) + 1,
        **kw,
    )
