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
from planner_service.api.server import uvicorn_config
from planner_service.api.solve_tasks import SolveFn
from planner_service.planner import make_plan
from planner_service.store import PlanStore
from tests.service.service_inputs import SMALL_JOB, SMALL_SETTINGS, LiveServerFactory, SettingsFactory
from tests.service.store_backends import PostgresServer, StoreFactory, start_postgres


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
        app = create_app(settings, solve_fn=solve_fn)
        server = uvicorn.Server(uvicorn_config(app, settings, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60  # a hang guard, not a performance check
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=60)
            sock.close()
            assert not thread.is_alive(), "uvicorn did not stop"

    return serve


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | str]:
    """A PostgreSQL server for the whole session (started on first use), or why there is none."""
    server = start_postgres()
    try:
        yield server
    finally:
        if isinstance(server, PostgresServer):
            server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer | str) -> str:
    """A fresh, empty database on the session's server (the test skips, with the reason, without one)."""
    if isinstance(postgres_server, str):
        pytest.skip(f"PostgreSQL unavailable: {postgres_server}")
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store test's data lives: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def open_store(store_location: str) -> Iterator[StoreFactory]:
    """`open_store(**kwargs)`: a PlanStore on this test's location (call again to reopen); all closed after."""
    opened: list[PlanStore] = []

    def open_(**kwargs: Any) -> PlanStore:
        store = PlanStore(store_location, **kwargs)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()
