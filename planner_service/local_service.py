"""Run `helix serve` as a child process on loopback: for `make demo`, the end-to-end tests and benchmarks.

A separate process (not a thread) so the service can be stopped and started again mid-run, exactly as an
operator restarting the planner would, and so its CPU work does not share the caller's interpreter.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

START_TIMEOUT_S = 60.0
"""How long `start` waits for /healthz before giving up (a hang guard: start-up takes ~1-3 s)."""
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalService:
    """`with LocalService(db) as svc:` a planner service on `svc.url`; `stop()`/`start()` restart it on the
    same port and store."""

    def __init__(
        self, db: Path, *, port: int | None = None, log_file: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.db = db
        self.port = port or free_port()
        self.log_file = log_file
        self.env = env or {}
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalService:
        assert not self.running, "the service is already running"
        self.db.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "planner_service.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--db", str(self.db)]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115 - owned by Popen
        self._proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"the planner service exited with code {self._proc.returncode} at start-up{self._last_log_line()}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the planner service did not answer on {self.url} within {START_TIMEOUT_S} s")
            time.sleep(0.1)

    def _last_log_line(self) -> str:
        if self.log_file is None or not self.log_file.is_file():
            return ""
        lines = self.log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return f": {lines[-1]}" if lines else ""

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down cleanly), SIGKILL if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> LocalService:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
