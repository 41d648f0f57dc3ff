"""HTTP hygiene of the live server: read deadlines for slow clients, and docs that need no internet.

Bugs guarded (issue 14): a connection that sent partial headers was still open after 30 s (uvicorn has no
header or body read timeout); `/docs` loaded its JavaScript and CSS from a public CDN, which GPU clusters
without internet cannot reach.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from planner_service.api import create_app
from tests.service.service_inputs import LiveServerFactory, SettingsFactory

SOCKET_GUARD_S = 30.0
"""How long the test waits for the server to close the socket; the server's deadline is far shorter."""


def closed_by_server(url: str, payload: bytes) -> bool:
    """Send `payload` and stall; True when the server closes the connection (recv returns EOF)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=SOCKET_GUARD_S) as sock:
        sock.sendall(payload)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return False
        while data:  # a 408/400 answer may come before the close
            data = sock.recv(65536)
        return True


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # connected, sends nothing
        b"GET /healthz HTTP/1.1\r\nHost: planner\r\nX-Slow: ",  # a partial head
        b"POST /v1/jobs HTTP/1.1\r\nHost: planner\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"cluster": ',  # a complete head, a partial body
    ],
    ids=["idle", "partial-head", "partial-body"],
)
def test_a_stalled_request_is_closed(
    tmp_path: Path, make_settings: SettingsFactory, live_server: LiveServerFactory, payload: bytes
) -> None:
    settings = make_settings(tmp_path / "t.db", header_timeout_s=0.5, body_timeout_s=0.5)
    with live_server(settings) as url:
        assert closed_by_server(url, payload)


def test_a_slow_head_after_a_kept_alive_request_is_closed(
    tmp_path: Path, make_settings: SettingsFactory, live_server: LiveServerFactory
) -> None:
    settings = make_settings(tmp_path / "k.db", header_timeout_s=0.5, keep_alive_s=60)
    with live_server(settings) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=SOCKET_GUARD_S) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: planner\r\n\r\n")
            answer = b""
            while b'"ok"' not in answer:
                answer += sock.recv(65536)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: pl")  # the next request stalls mid-head
            try:
                while sock.recv(65536):
                    pass
            except TimeoutError:
                pytest.fail("the server kept a connection with a stalled request head open")


def test_docs_are_served_offline(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        assert not re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html.text), f"{page} links off-site"
        for asset in re.findall(r'(?:src|href)="(/[^"]+)"', html.text):
            assert client.get(asset).status_code == 200, asset
    assert "validatorUrl" in client.get("/docs").text  # Swagger UI's online validator is switched off


def test_docs_can_be_switched_off(tmp_path: Path, make_settings: SettingsFactory) -> None:
    with TestClient(create_app(make_settings(tmp_path / "n.db", docs=False))) as client:
        assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
        assert client.get("/openapi.json").status_code == 200
