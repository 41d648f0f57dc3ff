"""A throwaway PostgreSQL server for the store tests, started from the Debian package's binaries.

Why in the test session: CI runs `.ci/run` on a fresh clone as root with no database running, so the
session finds `initdb`/`postgres` (`/usr/lib/postgresql/*/bin`, or on PATH), initialises a cluster in a
temporary folder owned by the unprivileged `postgres` user (PostgreSQL refuses to run as root), starts it
on a free loopback port with trust auth, and stops it at the end. Tests that need it skip with the reason
when any of that is impossible.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from planner_service.store import PlanStore

StoreFactory = Callable[..., PlanStore]
"""Type of the `open_store` fixture: `open_store(**PlanStore kwargs)` opens the test's store (again)."""
START_GUARD_S = 60.0


def find_postgres_bin() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for folder in candidates:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "postgres").exists():
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """A running server; `new_database()` returns the URL of a fresh, empty database."""

    process: subprocess.Popen[bytes]
    folder: str
    port: int
    user: str = "helix"

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres() -> PostgresServer | str:
    """A started server, or the reason it could not be started."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'helixtrain[service]')"
    binaries = find_postgres_bin()
    if binaries is None:
        return "no PostgreSQL server binaries (apt-get install postgresql)"
    run_as: str | None = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            run_as = pwd.getpwnam("postgres").pw_name
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    folder = tempfile.mkdtemp(prefix="helix-pg-")
    data, sockets = Path(folder) / "data", Path(folder) / "sockets"
    sockets.mkdir()
    if run_as is not None:
        for path in (folder, sockets):
            shutil.chown(path, user=run_as)
    init = subprocess.run(
        [str(binaries / "initdb"), "-D", str(data), "-U", "helix", "-A", "trust", "--no-sync", "-E", "UTF8"],
        user=run_as,
        capture_output=True,
        check=False,
    )
    if init.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        return f"initdb failed: {init.stderr.decode()[-300:]}"
    port = _free_port()
    process = subprocess.Popen(
        [str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=100"],
        user=run_as, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    server = PostgresServer(process, folder, port)
    import psycopg

    give_up = time.monotonic() + START_GUARD_S
    while True:
        try:
            psycopg.connect(server.url("postgres"), connect_timeout=2).close()
            return server
        except psycopg.OperationalError as exc:
            if process.poll() is not None or time.monotonic() > give_up:
                err = process.stderr.read().decode()[-300:] if process.stderr and process.poll() is not None else ""
                server.stop()
                return f"the PostgreSQL server did not start: {err or exc}"
            time.sleep(0.2)
