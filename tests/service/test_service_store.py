"""The SQLite store on its own: WAL mode, first writer wins per (job, step), conflicts, idempotent feedback,
profile versions, and everything still there after reopening the file."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from planner_service.store import PlanConflictError, PlanRecord, PlanStore


def record(step: int, fp: str = "fp-a", payload: bytes = b'{"plan": 1}') -> PlanRecord:
    return PlanRecord(
        job_id="j1", step=step, batch_fingerprint=fp, plan_id="p" + fp, predicted_s=2.0, plan_json=payload
    )


def test_store_round_trip_and_reopen(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = PlanStore(db)
    assert store.journal_mode() == "wal" and store.ping()
    store.create_job("j1", {"strategy": "greedy"}, {"num_stages": 2})
    assert store.put_plan(record(0)).plan_json == b'{"plan": 1}'
    assert store.put_plan(record(0, payload=b"other bytes, same batch")).plan_json == b'{"plan": 1}'  # first wins
    with pytest.raises(PlanConflictError):
        store.put_plan(record(0, fp="fp-b"))
    store.put_feedback("j1", 0, "pfp-a", 2.5, 2.0, {"step": 0})
    store.put_feedback("j1", 0, "pfp-a", 2.4, 2.0, {"step": 0})  # a retried report replaces the first
    assert store.put_profile("j1", {"name": "a"}) == 1 and store.put_profile("j1", {"name": "b"}) == 2
    store.close()

    reopened = PlanStore(db)
    job = reopened.get_job("j1")
    assert job is not None and job.decisions == {"num_stages": 2}
    stored = reopened.get_plan("j1", 0)
    assert stored is not None and stored.plan_json == b'{"plan": 1}'
    assert reopened.job_counts("j1") == {"plans": 1, "feedback": 1, "profiles": 2}
    latest = reopened.latest_feedback("j1")
    assert latest is not None and latest.measured_s == 2.4
    assert reopened.latest_profile("j1") == (2, {"name": "b"})
    assert reopened.get_plan("j1", 1) is None and reopened.get_job("nope") is None
    reopened.close()


def test_plans_need_a_job_and_writers_in_threads_agree(tmp_path: Path) -> None:
    store = PlanStore(tmp_path / "t.db")
    with pytest.raises(sqlite3.IntegrityError):
        store.put_plan(record(0))  # foreign key: no such job
    store.create_job("j1", {}, {"num_stages": 1})
    results: list[bytes] = []

    def write(i: int) -> None:
        results.append(store.put_plan(record(3, payload=f"writer {i}".encode())).plan_json)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 16
    store.close()
