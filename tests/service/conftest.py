"""Fixtures for the planner service tests: small settings, a TestClient app, a registered job, a live server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from planner_service.api import Settings, create_app
from planner_service.api.service import SolveFn
from planner_service.planner import make_plan
from tests.service.service_inputs import SMALL_JOB, SMALL_SETTINGS, LiveServerFactory, SettingsFactory


@pytest.fixture(scope="session")
def make_settings() -> SettingsFactory:
    """`make_settings(db, **overrides)`: the small test settings on a SQLite file `db`."""

    def make(db: Path, **overrides: Any) -> Settings:
        return Settings(db=db, **{**SMALL_SETTINGS, **overrides})

    return make


@pytest.fixture
def settings(make_settings: SettingsFactory, tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "plans.db")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def job_id(client: TestClient) -> str:
    response = client.post("/v1/jobs", json=SMALL_JOB)
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


@pytest.fixture(scope="session")
def live_server() -> LiveServerFactory:
    """`with live_server(settings[, solve_fn]) as url`: uvicorn on a free loopback port in a background thread,
    stopped (and checked stopped) on exit."""

    @contextmanager
    def serve(settings: Settings, solve_fn: SolveFn = make_plan) -> Iterator[str]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(settings, solve_fn=solve_fn), log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 15  # a hang guard, not a performance check
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

    return serve
