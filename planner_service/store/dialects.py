"""The two databases the plan store runs on: an embedded SQLite file (the default) or a PostgreSQL server
(several planner processes behind a load balancer share it).

A dialect knows only what differs between them: how to connect, the column types, how one write
transaction starts, and the cross-process lock that serialises the claims of one (job, step). Every query
is shared (`plan_store.py`), written with `?` placeholders.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from planner_service.store.records import StoreError
from planner_service.store.sqlite_files import check_sqlite_file

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class Connection(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def close(self) -> None: ...


class Dialect(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions of the driver; the store turns them into `StoreError`."""
        ...

    def connect(self) -> Connection: ...
    def sql(self, text: str) -> str:
        """A query written with `?` placeholders, in this driver's parameter style."""
        ...

    def types(self) -> dict[str, str]: ...
    def begin(self, conn: Connection) -> None:
        """Start a write transaction that other processes' writers wait for."""
        ...

    def lock_step(self, conn: Connection, job_id: str, step: int) -> None:
        """Inside a transaction: serialise every claim of (job, step) across processes."""
        ...

    def describe(self) -> str:
        """Where the data lives, without credentials (for logs and error messages)."""
        ...


@dataclass(frozen=True)
class SqliteDialect:
    """One SQLite file in WAL mode; `BEGIN IMMEDIATE` takes the file's write lock, which already serialises
    every writer of every process, so claims need no extra lock."""

    path: str
    name: str = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def connect(self) -> Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            check_sqlite_file(Path(self.path))
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise StoreError(f"the plan store {self.path} cannot be opened: {exc}") from exc
        return conn

    def sql(self, text: str) -> str:
        return text

    def types(self) -> dict[str, str]:
        return {"blob": "BLOB", "real": "REAL", "bigint": "INTEGER"}

    def begin(self, conn: Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def lock_step(self, conn: Connection, job_id: str, step: int) -> None:
        return None  # BEGIN IMMEDIATE already holds the database's single write lock

    def describe(self) -> str:
        return self.path


@dataclass(frozen=True)
class PostgresDialect:
    """A PostgreSQL database (psycopg 3). A transaction-scoped advisory lock keyed by (job, step) serialises
    the claim of a step across every planner process, on top of the unique (job, step) rows."""

    url: str
    name: str = "postgresql"
    errors: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        import psycopg

        object.__setattr__(self, "errors", (psycopg.Error,))

    def connect(self) -> Connection:
        import psycopg

        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StoreError(f"the plan store {self.describe()} cannot be reached: {_one_line(exc)}") from exc
        return conn  # type: ignore[return-value]

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def types(self) -> dict[str, str]:
        return {"blob": "BYTEA", "real": "DOUBLE PRECISION", "bigint": "BIGINT"}

    def begin(self, conn: Connection) -> None:
        conn.execute("BEGIN")

    def lock_step(self, conn: Connection, job_id: str, step: int) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(f"{job_id}/{step}"),))

    def describe(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        try:
            info = conninfo_to_dict(self.url)
        except Exception:
            return "postgresql://(unparsable url)"
        return f"postgresql://{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def advisory_key(text: str) -> int:
    """A signed 64-bit key for PostgreSQL's advisory locks."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)


def dialect_for(location: str) -> Dialect:
    """`postgresql://...` runs on PostgreSQL; anything else is a SQLite file path."""
    if location.startswith(POSTGRES_SCHEMES):
        return PostgresDialect(location)
    return SqliteDialect(location)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
