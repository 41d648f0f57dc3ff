"""Fixtures for the planner service tests: small settings, TestClient apps, a registered job, a live server.

Workloads stay tiny (cluster cpu-2x2, model tiny, strategy greedy, <= 64 sequences) so the suite is fast on
a 2-core machine; these tests are about the service contract, not plan quality.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from planner_service.api import Settings, create_app
from planner_service.planner import make_plan
from proto import Plan

TOKEN = "s3cret-token-for-tests-0123456789"
SMALL_JOB: dict[str, Any] = {"cluster": "cpu-2x2", "model": "tiny", "strategy": "greedy"}
LENGTHS = [700, 120, 300, 90, 1500, 64, 256, 800]


def small_settings(db: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "db": db,
        "solver_time_limit_s": 2.0,
        "max_concurrent_solves": 2,
        "max_body_bytes": 64 * 1024,
        "max_sequences": 256,
        "default_sample_size": 16,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return small_settings(tmp_path / "plans.db")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def job_id(client: TestClient) -> str:
    response = client.post("/v1/jobs", json=SMALL_JOB)
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


class SolveCounter:
    """A `plan_fn` that counts calls and can be slowed down, so coalescing is observable."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, **kwargs: Any) -> Plan:
        with self._lock:
            self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        return make_plan(**kwargs)


@contextmanager
def live_server(settings: Settings, plan_fn: Callable[..., Plan] = make_plan) -> Iterator[str]:
    """uvicorn on a free loopback port in a background thread; yields the base URL, stops on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings, plan_fn=plan_fn), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"
