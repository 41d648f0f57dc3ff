"""SQLite plan store (WAL mode): jobs, per-step plans, feedback and cost profiles.

Why SQLite: the service is one process per cluster; an embedded, transactional file needs no operator
and survives restarts. Why these choices:

- one connection guarded by a lock — simple and correct with the worker threads that commit plans
  (SQLite serialises writers anyway, and every statement here is tiny);
- `journal_mode=WAL` so readers never block the writer, and `synchronous=FULL` so a plan is on disk
  when `put_plan` returns: the service commits a plan *before* returning it, so an executor never runs
  a plan the service could forget after a crash;
- plans are stored as the exact JSON bytes that were returned, so a later GET is byte-identical (the
  executor and other nodes compare plans by content).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    spec_json TEXT NOT NULL,
    decisions_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS plans (
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    step INTEGER NOT NULL,
    batch_fingerprint TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    predicted_s REAL NOT NULL,
    plan_json BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, step)
);
CREATE TABLE IF NOT EXISTS feedback (
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    step INTEGER NOT NULL,
    plan_id TEXT NOT NULL,
    measured_s REAL NOT NULL,
    predicted_s REAL,
    feedback_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, step)
);
CREATE TABLE IF NOT EXISTS profiles (
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    version INTEGER NOT NULL,
    profile_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, version)
);
"""


class StoreError(RuntimeError):
    """The store cannot be opened or used (a corrupt or unwritable file)."""


class PlanConflictError(Exception):
    """A different batch was already planned for this (job, step)."""

    def __init__(self, job_id: str, step: int, stored_fingerprint: str) -> None:
        super().__init__(f"job {job_id} step {step} was already planned for another batch ({stored_fingerprint})")
        self.stored_fingerprint = stored_fingerprint


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    created_at: float
    spec: dict[str, Any]
    decisions: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PlanRecord:
    job_id: str
    step: int
    batch_fingerprint: str
    plan_id: str
    predicted_s: float
    plan_json: bytes


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    step: int
    plan_id: str
    measured_s: float
    predicted_s: float | None


class PlanStore:
    """Thread-safe access to one SQLite file. Open once per app; `close()` on shutdown."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the plan store {self.path}: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction under the lock; committed (and fsynced) when the block ends."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def ping(self) -> bool:
        """True when the database answers a query (used by /readyz)."""
        try:
            with self._lock:
                self._conn.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def journal_mode(self) -> str:
        with self._lock:
            return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])

    # jobs -------------------------------------------------------------------------------------------
    def create_job(self, job_id: str, spec: dict[str, Any], decisions: dict[str, Any]) -> JobRecord:
        now = time.time()
        with self._write():
            self._conn.execute(
                "INSERT INTO jobs (job_id, created_at, spec_json, decisions_json) VALUES (?, ?, ?, ?)",
                (job_id, now, json.dumps(spec, sort_keys=True), json.dumps(decisions, sort_keys=True)),
            )
        return JobRecord(job_id=job_id, created_at=now, spec=spec, decisions=decisions)

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT job_id, created_at, spec_json, decisions_json FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
        if row is None:
            return None
        return JobRecord(job_id=row[0], created_at=row[1], spec=json.loads(row[2]), decisions=json.loads(row[3]))

    def job_counts(self, job_id: str) -> dict[str, int]:
        """Plans, feedback reports and profile versions stored for a job."""
        with self._lock:
            plans = self._conn.execute("SELECT COUNT(*) FROM plans WHERE job_id = ?", (job_id,)).fetchone()[0]
            feedback = self._conn.execute("SELECT COUNT(*) FROM feedback WHERE job_id = ?", (job_id,)).fetchone()[0]
            profiles = self._conn.execute("SELECT COUNT(*) FROM profiles WHERE job_id = ?", (job_id,)).fetchone()[0]
        return {"plans": int(plans), "feedback": int(feedback), "profiles": int(profiles)}

    # plans ------------------------------------------------------------------------------------------
    def get_plan(self, job_id: str, step: int) -> PlanRecord | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT job_id, step, batch_fingerprint, plan_id, predicted_s, plan_json FROM plans "
                "WHERE job_id = ? AND step = ?",
                (job_id, step),
            ).fetchone()
        if row is None:
            return None
        return PlanRecord(
            job_id=row[0],
            step=row[1],
            batch_fingerprint=row[2],
            plan_id=row[3],
            predicted_s=row[4],
            plan_json=bytes(row[5]),
        )

    def put_plan(self, record: PlanRecord) -> PlanRecord:
        """Commit a plan unless one is already stored for (job, step); return the stored one.

        Raises `PlanConflictError` when the stored plan is for a different batch. The first writer wins,
        so two racing writers (e.g. two service processes on one file) still agree on one plan per step.
        """
        with self._write():
            self._conn.execute(
                "INSERT OR IGNORE INTO plans (job_id, step, batch_fingerprint, plan_id, predicted_s, plan_json, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.job_id,
                    record.step,
                    record.batch_fingerprint,
                    record.plan_id,
                    record.predicted_s,
                    record.plan_json,
                    time.time(),
                ),
            )
        stored = self.get_plan(record.job_id, record.step)
        assert stored is not None, f"plan for job {record.job_id} step {record.step} vanished after commit"
        if stored.batch_fingerprint != record.batch_fingerprint:
            raise PlanConflictError(record.job_id, record.step, stored.batch_fingerprint)
        return stored

    # feedback ---------------------------------------------------------------------------------------
    def put_feedback(
        self, job_id: str, step: int, plan_id: str, measured_s: float, predicted_s: float | None, body: dict[str, Any]
    ) -> None:
        """Store (or replace) the feedback of one step: a retried report must not count twice."""
        with self._write():
            self._conn.execute(
                "INSERT OR REPLACE INTO feedback (job_id, step, plan_id, measured_s, predicted_s, feedback_json, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, step, plan_id, measured_s, predicted_s, json.dumps(body, sort_keys=True), time.time()),
            )

    def latest_feedback(self, job_id: str) -> FeedbackRecord | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT step, plan_id, measured_s, predicted_s FROM feedback WHERE job_id = ? "
                "ORDER BY step DESC LIMIT 1",
                (job_id,),
            ).fetchone()
        if row is None:
            return None
        return FeedbackRecord(step=row[0], plan_id=row[1], measured_s=row[2], predicted_s=row[3])

    # profiles ---------------------------------------------------------------------------------------
    def put_profile(self, job_id: str, profile: dict[str, Any]) -> int:
        """Append a profile version for a job; the latest version is used for later plans."""
        with self._write():
            row = self._conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM profiles WHERE job_id = ?", (job_id,)
            ).fetchone()
            version = int(row[0]) + 1
            self._conn.execute(
                "INSERT INTO profiles (job_id, version, profile_json, created_at) VALUES (?, ?, ?, ?)",
                (job_id, version, json.dumps(profile, sort_keys=True), time.time()),
            )
        return version

    def latest_profile(self, job_id: str) -> tuple[int, dict[str, Any]] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT version, profile_json FROM profiles WHERE job_id = ? ORDER BY version DESC LIMIT 1", (job_id,)
            ).fetchone()
        return None if row is None else (int(row[0]), json.loads(row[1]))
