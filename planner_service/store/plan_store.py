"""The plan store: jobs, per-step plans (gzip), step claims, feedback and cost profiles, on SQLite or PostgreSQL.

Why these choices:

- one connection guarded by a lock: simple and correct with the threads that read and commit (SQLite
  serialises writers anyway, and every statement here is small);
- SQLite in WAL mode with `synchronous=FULL`, PostgreSQL with autocommit plus explicit transactions: a
  plan is durable when `put_plan` returns, and the service commits a plan *before* returning it;
- a step is claimed before it is solved: a unique (job, step) row in `plan_claims`, written under the
  database's write lock (SQLite) or an advisory lock (PostgreSQL), so several planner processes on one
  database solve each step once; a claim expires (its owner died) after its lease;
- plans are stored gzip-compressed, and decompress to the exact bytes that were returned;
- retention keeps the last `keep_last_steps` steps of a job and every step with feedback; older plans are
  dropped, leaving a small row so the step answers "gone" rather than "never planned";
- a job keeps at most `max_profile_versions` profile versions (the oldest are dropped; numbers keep rising).

Driver errors become `StoreError`; a SQLite error that means the file is damaged also marks the store
failed, so readiness reports it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from planner_service.store.dialects import Connection, Dialect, dialect_for
from planner_service.store.records import (
    FeedbackRecord,
    JobRecord,
    PlanConflictError,
    PlanRecord,
    StepClaim,
    StoreError,
    StoreUsage,
)

SCHEMA_VERSION = "2"
SCHEMA = """
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    created_at {real} NOT NULL,
    spec_json TEXT NOT NULL,
    decisions_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS plans (
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    step {bigint} NOT NULL,
    batch_fingerprint TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    predicted_s {real} NOT NULL,
    plan_gz {blob},
    raw_size {bigint} NOT NULL,
    created_at {real} NOT NULL,
    pruned_at {real},
    PRIMARY KEY (job_id, step)
);
CREATE TABLE IF NOT EXISTS plan_claims (
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    step {bigint} NOT NULL,
    batch_fingerprint TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires_at {real} NOT NULL,
    PRIMARY KEY (job_id, step)
);
CREATE TABLE IF NOT EXISTS feedback (
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    step {bigint} NOT NULL,
    plan_id TEXT NOT NULL,
    measured_s {real} NOT NULL,
    predicted_s {real},
    feedback_json TEXT NOT NULL,
    created_at {real} NOT NULL,
    PRIMARY KEY (job_id, step)
);
CREATE TABLE IF NOT EXISTS profiles (
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    version {bigint} NOT NULL,
    profile_json TEXT NOT NULL,
    created_at {real} NOT NULL,
    PRIMARY KEY (job_id, version)
)
"""
_PLAN_COLUMNS = "job_id, step, batch_fingerprint, plan_id, predicted_s, plan_gz, raw_size"
_SCHEMA_LOCK_KEY = "helix-store-schema"


@dataclass(frozen=True, kw_only=True, slots=True)
class Retention:
    """Which plans a job keeps (the rest are pruned to a tombstone that answers 410 `gone`)."""

    keep_last_steps: int | None = 1024
    """The most recent steps (by step number) whose plans are kept; None keeps every plan."""
    keep_feedback_steps: bool = True
    """Keep the plan of every step that received feedback (calibration compares it with the measurement)."""


class PlanStore:
    """Thread-safe access to one store (`location`: a SQLite path or a `postgresql://` URL)."""

    def __init__(
        self, location: str | Any, *, retention: Retention | None = None, max_profile_versions: int = 32
    ) -> None:
        self.dialect: Dialect = dialect_for(str(location))
        self.retention = retention or Retention()
        self.max_profile_versions = max_profile_versions
        self._lock = threading.Lock()
        self._failure: str | None = None
        self._conn: Connection | None = self.dialect.connect()
        try:
            self._create_schema()
        except self.dialect.errors as exc:
            raise StoreError(f"the plan store {self.describe()} cannot be used: {_one_line(exc)}") from exc

    # plumbing ---------------------------------------------------------------------------------------
    def describe(self) -> str:
        return self.dialect.describe()

    def _connection(self) -> Connection:
        if self._conn is None:  # a PostgreSQL connection that broke is reopened on the next use
            self._conn = self.dialect.connect()
        return self._conn

    def _q(self, conn: Connection, sql: str, params: Sequence[Any] = ()) -> Any:
        return conn.execute(self.dialect.sql(sql), tuple(params))

    def _failed(self, exc: BaseException) -> StoreError:
        """Turn a driver error into StoreError; remember damage (readiness fails) and drop broken connections."""
        message = _one_line(exc)
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
            exc, (sqlite3.IntegrityError, sqlite3.OperationalError)
        ):
            self._failure = message  # "database disk image is malformed", "file is not a database"
        elif self.dialect.name == "postgresql" and _is_connection_error(exc):
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):  # already broken
                    conn.close()
        return StoreError(f"the plan store {self.describe()} failed: {message}")

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._lock:
            try:
                yield self._connection()
            except self.dialect.errors as exc:
                raise self._failed(exc) from exc

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction under the lock; committed (and fsynced) when the block ends."""
        with self._lock:
            try:
                conn = self._connection()
                self.dialect.begin(conn)
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except self.dialect.errors as exc:
                raise self._failed(exc) from exc

    def _create_schema(self) -> None:
        conn = self._connection()
        ddl = SCHEMA.format(**self.dialect.types())
        with self._lock:
            self.dialect.begin(conn)
            try:
                self.dialect.lock_step(conn, _SCHEMA_LOCK_KEY, 0)  # concurrent first starts on one PostgreSQL
                old = _table_columns(conn, self.dialect.name, "plans")
                if old and "plan_json" in old:
                    raise StoreError(
                        f"the plan store {self.describe()} was written by an older HelixTrain (schema 1, "
                        "uncompressed plans); start with a new HELIX_DB"
                    )
                for statement in ddl.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                self._q(
                    conn,
                    "INSERT INTO store_meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO NOTHING",
                    (SCHEMA_VERSION,),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def failure(self) -> str | None:
        """Why the store cannot serve (damage seen by a query, or no answer to a ping); None when healthy."""
        if self._failure is not None:
            return self._failure
        try:
            with self._read() as conn:
                conn.execute("SELECT 1").fetchone()
        except StoreError as exc:
            return str(exc)
        return None

    def ping(self) -> bool:
        return self.failure() is None

    def journal_mode(self) -> str:
        with self._read() as conn:
            return str(conn.execute("PRAGMA journal_mode").fetchone()[0])

    # jobs -------------------------------------------------------------------------------------------
    def create_job(self, job_id: str, spec: dict[str, Any], decisions: dict[str, Any]) -> JobRecord:
        now = time.time()
        with self._write() as conn:
            self._q(
                conn,
                "INSERT INTO jobs (job_id, created_at, spec_json, decisions_json) VALUES (?, ?, ?, ?)",
                (job_id, now, json.dumps(spec, sort_keys=True), json.dumps(decisions, sort_keys=True)),
            )
        return JobRecord(job_id=job_id, created_at=now, spec=spec, decisions=decisions)

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._read() as conn:
            row = self._q(
                conn, "SELECT job_id, created_at, spec_json, decisions_json FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
        if row is None:
            return None
        return JobRecord(job_id=row[0], created_at=row[1], spec=json.loads(row[2]), decisions=json.loads(row[3]))

    def job_counts(self, job_id: str) -> dict[str, int]:
        """Plans kept, plans pruned, feedback reports and profile versions stored for a job."""
        with self._read() as conn:
            plans, pruned = self._q(
                conn,
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN plan_gz IS NULL THEN 1 ELSE 0 END), 0) FROM plans "
                "WHERE job_id = ?",
                (job_id,),
            ).fetchone()
            feedback = self._q(conn, "SELECT COUNT(*) FROM feedback WHERE job_id = ?", (job_id,)).fetchone()[0]
            profiles = self._q(conn, "SELECT COUNT(*) FROM profiles WHERE job_id = ?", (job_id,)).fetchone()[0]
        return {
            "plans": int(plans) - int(pruned),
            "pruned_plans": int(pruned),
            "feedback": int(feedback),
            "profiles": int(profiles),
        }

    # plans ------------------------------------------------------------------------------------------
    def get_plan(self, job_id: str, step: int) -> PlanRecord | None:
        """The step's plan (a tombstone with `pruned` set when retention dropped it), or None."""
        with self._read() as conn:
            row = self._q(
                conn, f"SELECT {_PLAN_COLUMNS} FROM plans WHERE job_id = ? AND step = ?", (job_id, step)
            ).fetchone()
        return None if row is None else _plan_record(row)

    def claim_step(self, job_id: str, step: int, fingerprint: str, owner: str, lease_s: float) -> StepClaim:
        """Claim (job, step) for solving, unless a plan is stored or another live claim holds it.

        Raises `PlanConflictError` when the stored plan, or the live claim, is for another batch.
        """
        now = time.time()
        with self._write() as conn:
            self.dialect.lock_step(conn, job_id, step)
            row = self._q(
                conn, f"SELECT {_PLAN_COLUMNS} FROM plans WHERE job_id = ? AND step = ?", (job_id, step)
            ).fetchone()
            if row is not None:
                stored = _plan_record(row)
                if stored.batch_fingerprint != fingerprint:
                    raise PlanConflictError(job_id, step, stored.batch_fingerprint)
                return StepClaim("stored", stored)
            claim = self._q(
                conn,
                "SELECT batch_fingerprint, owner, expires_at FROM plan_claims WHERE job_id = ? AND step = ?",
                (job_id, step),
            ).fetchone()
            if claim is not None and claim[2] > now and claim[1] != owner:
                if claim[0] != fingerprint:
                    raise PlanConflictError(job_id, step, claim[0])
                return StepClaim("held")
            self._q(
                conn,
                "INSERT INTO plan_claims (job_id, step, batch_fingerprint, owner, expires_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id, step) DO UPDATE SET batch_fingerprint = excluded.batch_fingerprint, "
                "owner = excluded.owner, expires_at = excluded.expires_at",
                (job_id, step, fingerprint, owner, now + lease_s),
            )
        return StepClaim("claimed")

    def release_claim(self, job_id: str, step: int, owner: str) -> None:
        """Give up a claim (the solve failed), so that a retry, here or in another process, solves again."""
        with self._write() as conn:
            self._q(conn, "DELETE FROM plan_claims WHERE job_id = ? AND step = ? AND owner = ?", (job_id, step, owner))

    def put_plan(self, record: PlanRecord) -> PlanRecord:
        """Commit a plan unless one is already stored for (job, step); return the stored one.

        Clears the step's claim and applies the retention policy in the same transaction. Raises
        `PlanConflictError` when the stored plan is for a different batch: the first writer wins, so racing
        writers (threads or processes) agree on one plan per step.
        """
        assert record.plan_gz is not None, "a new plan must carry its bytes"
        with self._write() as conn:
            self._q(
                conn,
                "INSERT INTO plans (job_id, step, batch_fingerprint, plan_id, predicted_s, plan_gz, raw_size, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, step) DO NOTHING",
                (
                    record.job_id,
                    record.step,
                    record.batch_fingerprint,
                    record.plan_id,
                    record.predicted_s,
                    record.plan_gz,
                    record.raw_size,
                    time.time(),
                ),
            )
            self._q(conn, "DELETE FROM plan_claims WHERE job_id = ? AND step = ?", (record.job_id, record.step))
            self._apply_retention(conn, record.job_id)
            row = self._q(
                conn,
                f"SELECT {_PLAN_COLUMNS} FROM plans WHERE job_id = ? AND step = ?",
                (record.job_id, record.step),
            ).fetchone()
        assert row is not None, f"plan for job {record.job_id} step {record.step} vanished after commit"
        stored = _plan_record(row)
        if stored.batch_fingerprint != record.batch_fingerprint:
            raise PlanConflictError(record.job_id, record.step, stored.batch_fingerprint)
        return stored

    def _apply_retention(self, conn: Connection, job_id: str) -> None:
        keep = self.retention.keep_last_steps
        if keep is None:
            return
        boundary = self._q(
            conn,
            "SELECT step FROM plans WHERE job_id = ? ORDER BY step DESC LIMIT 1 OFFSET ?",
            (job_id, keep),
        ).fetchone()
        if boundary is None:
            return
        feedback_clause = (
            " AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.job_id = plans.job_id AND f.step = plans.step)"
            if self.retention.keep_feedback_steps
            else ""
        )
        self._q(
            conn,
            "UPDATE plans SET plan_gz = NULL, pruned_at = ? WHERE job_id = ? AND step <= ? AND plan_gz IS NOT NULL"
            + feedback_clause,
            (time.time(), job_id, boundary[0]),
        )

    def usage(self, job_id: str | None = None) -> StoreUsage:
        """Plans kept and pruned and their uncompressed and stored bytes (one job, or the whole store)."""
        where, params = ("WHERE job_id = ?", (job_id,)) if job_id is not None else ("", ())
        with self._read() as conn:
            row = self._q(
                conn,
                "SELECT COALESCE(SUM(CASE WHEN plan_gz IS NULL THEN 0 ELSE 1 END), 0), "
                "COALESCE(SUM(CASE WHEN plan_gz IS NULL THEN 1 ELSE 0 END), 0), "
                "COALESCE(SUM(CASE WHEN plan_gz IS NULL THEN 0 ELSE raw_size END), 0), "
                f"COALESCE(SUM(LENGTH(plan_gz)), 0) FROM plans {where}",
                params,
            ).fetchone()
        return StoreUsage(plans=int(row[0]), pruned=int(row[1]), raw_bytes=int(row[2]), stored_bytes=int(row[3]))

    # feedback ---------------------------------------------------------------------------------------
    def put_feedback(
        self, job_id: str, step: int, plan_id: str, measured_s: float, predicted_s: float | None, body: dict[str, Any]
    ) -> None:
        """Store (or replace) the feedback of one step: a retried report must not count twice."""
        with self._write() as conn:
            self._q(
                conn,
                "INSERT INTO feedback (job_id, step, plan_id, measured_s, predicted_s, feedback_json, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, step) DO UPDATE SET plan_id = excluded.plan_id, "
                "measured_s = excluded.measured_s, predicted_s = excluded.predicted_s, "
                "feedback_json = excluded.feedback_json, created_at = excluded.created_at",
                (job_id, step, plan_id, measured_s, predicted_s, json.dumps(body, sort_keys=True), time.time()),
            )

    def latest_feedback(self, job_id: str) -> FeedbackRecord | None:
        with self._read() as conn:
            row = self._q(
                conn,
                "SELECT step, plan_id, measured_s, predicted_s FROM feedback WHERE job_id = ? "
                "ORDER BY step DESC LIMIT 1",
                (job_id,),
            ).fetchone()
        if row is None:
            return None
        return FeedbackRecord(step=row[0], plan_id=row[1], measured_s=row[2], predicted_s=row[3])

    def feedback_since(self, job_id: str, after_step: int = -1, limit: int = 1000) -> list[dict[str, Any]]:
        """Feedback bodies of steps after `after_step`, oldest first (what online calibration reads)."""
        with self._read() as conn:
            rows = self._q(
                conn,
                "SELECT feedback_json FROM feedback WHERE job_id = ? AND step > ? ORDER BY step LIMIT ?",
                (job_id, after_step, limit),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    # profiles ---------------------------------------------------------------------------------------
    def put_profile(self, job_id: str, profile: dict[str, Any]) -> int:
        """Append a profile version (the latest is used for later plans); keep the newest
        `max_profile_versions` versions."""
        with self._write() as conn:
            row = self._q(conn, "SELECT COALESCE(MAX(version), 0) FROM profiles WHERE job_id = ?", (job_id,)).fetchone()
            version = int(row[0]) + 1
            self._q(
                conn,
                "INSERT INTO profiles (job_id, version, profile_json, created_at) VALUES (?, ?, ?, ?)",
                (job_id, version, json.dumps(profile, sort_keys=True), time.time()),
            )
            self._q(
                conn,
                "DELETE FROM profiles WHERE job_id = ? AND version <= ?",
                (job_id, version - self.max_profile_versions),
            )
        return version

    def latest_profile(self, job_id: str) -> tuple[int, dict[str, Any]] | None:
        with self._read() as conn:
            row = self._q(
                conn,
                "SELECT version, profile_json FROM profiles WHERE job_id = ? ORDER BY version DESC LIMIT 1",
                (job_id,),
            ).fetchone()
        return None if row is None else (int(row[0]), json.loads(row[1]))

    def profile_versions(self, job_id: str) -> list[int]:
        """The versions still stored for a job, oldest first."""
        with self._read() as conn:
            rows = self._q(conn, "SELECT version FROM profiles WHERE job_id = ? ORDER BY version", (job_id,)).fetchall()
        return [int(r[0]) for r in rows]


def _plan_record(row: Sequence[Any]) -> PlanRecord:
    return PlanRecord(
        job_id=row[0],
        step=int(row[1]),
        batch_fingerprint=row[2],
        plan_id=row[3],
        predicted_s=float(row[4]),
        plan_gz=bytes(row[5]) if row[5] is not None else None,
        raw_size=int(row[6]),
    )


def _table_columns(conn: Connection, dialect: str, table: str) -> set[str]:
    if dialect == "sqlite":
        return {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s AND table_schema = current_schema()",
        (table,),
    ).fetchall()
    return {str(r[0]) for r in rows}


def _is_connection_error(exc: BaseException) -> bool:
    import psycopg

    return isinstance(exc, psycopg.OperationalError) or getattr(exc, "sqlstate", "") in ("57P01", "08006", "08003")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
