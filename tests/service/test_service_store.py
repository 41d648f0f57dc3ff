"""The plan store on its own, on SQLite and (when a server can be started) PostgreSQL: WAL mode, first writer
wins per (job, step), conflicts, step claims, idempotent feedback, bounded profile versions, compressed plans
that decompress byte-identical, retention with tombstones, and everything still there after reopening."""

from __future__ import annotations

import threading

import pytest

from planner_service.store import PlanConflictError, PlanRecord, Retention, StoreError
from tests.service.store_backends import StoreFactory


def record(step: int, fp: str = "fp-a", payload: bytes = b'{"plan": 1}', job: str = "j1") -> PlanRecord:
    return PlanRecord.of_json(
        job_id=job, step=step, batch_fingerprint=fp, plan_id="p" + fp, predicted_s=2.0, plan_json=payload
    )


def test_store_round_trip_and_reopen(open_store: StoreFactory) -> None:
    store = open_store()
    assert store.ping()
    store.create_job("j1", {"strategy": "greedy"}, {"num_stages": 2})
    assert store.put_plan(record(0)).plan_json == b'{"plan": 1}'
    assert store.put_plan(record(0, payload=b"other bytes, same batch")).plan_json == b'{"plan": 1}'  # first wins
    with pytest.raises(PlanConflictError):
        store.put_plan(record(0, fp="fp-b"))
    store.put_feedback("j1", 0, "pfp-a", 2.5, 2.0, {"step": 0})
    store.put_feedback("j1", 0, "pfp-a", 2.4, 2.0, {"step": 0})  # a retried report replaces the first
    assert store.put_profile("j1", {"name": "a"}) == 1 and store.put_profile("j1", {"name": "b"}) == 2
    store.close()

    reopened = open_store()
    job = reopened.get_job("j1")
    assert job is not None and job.decisions == {"num_stages": 2}
    stored = reopened.get_plan("j1", 0)
    assert stored is not None and stored.plan_json == b'{"plan": 1}'
    assert reopened.job_counts("j1") == {"plans": 1, "pruned_plans": 0, "feedback": 1, "profiles": 2}
    latest = reopened.latest_feedback("j1")
    assert latest is not None and latest.measured_s == 2.4
    assert reopened.feedback_since("j1") == [{"step": 0}]
    assert reopened.latest_profile("j1") == (2, {"name": "b"})
    assert reopened.get_plan("j1", 1) is None and reopened.get_job("nope") is None
    reopened.close()


def test_sqlite_store_uses_wal(open_store: StoreFactory) -> None:
    store = open_store()
    if store.dialect.name != "sqlite":
        pytest.skip("WAL is SQLite's journal mode")
    assert store.journal_mode() == "wal"


def test_plans_need_a_job_and_writers_in_threads_agree(open_store: StoreFactory) -> None:
    store = open_store()
    with pytest.raises(StoreError):
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


def test_plans_are_stored_compressed_and_decompress_to_the_same_bytes(open_store: StoreFactory) -> None:
    """Bug guarded: plans were stored as raw JSON (330 KB for a 512-sequence greedy plan, 318 MB per 1,000
    steps). They are gzip now, and what comes back is byte-identical to what was returned."""
    store = open_store()
    store.create_job("j1", {}, {"num_stages": 1})
    payload = b'{"lanes": [' + b", ".join(b'{"chunk": %d, "ops": ["F", "B"]}' % i for i in range(2000)) + b"]}"
    stored = store.put_plan(record(0, payload=payload))
    assert stored.plan_gz is not None and len(stored.plan_gz) * 5 < len(payload)
    assert store.get_plan("j1", 0).plan_json == payload  # type: ignore[union-attr]
    usage = store.usage("j1")
    assert usage.plans == 1 and usage.raw_bytes == len(payload) and usage.stored_bytes == len(stored.plan_gz)


def test_retention_keeps_the_last_steps_and_every_step_with_feedback(open_store: StoreFactory) -> None:
    """Bug guarded: plans were append-only. Now only the newest `keep_last_steps` (plus steps with feedback)
    keep their bytes; older ones leave a tombstone so the step reads as pruned, not as never planned."""
    store = open_store(retention=Retention(keep_last_steps=3))
    store.create_job("j1", {}, {"num_stages": 1})
    store.put_plan(record(0))
    store.put_feedback("j1", 0, "pfp-a", 1.0, 2.0, {"step": 0})
    for step in range(1, 7):
        store.put_plan(record(step))
    kept = {s for s in range(7) if not store.get_plan("j1", s).pruned}  # type: ignore[union-attr]
    assert kept == {0, 4, 5, 6}
    pruned = store.get_plan("j1", 2)
    assert pruned is not None and pruned.pruned and pruned.batch_fingerprint == "fp-a"
    assert store.job_counts("j1")["pruned_plans"] == 3 and store.usage("j1").pruned == 3


def test_profile_versions_are_bounded(open_store: StoreFactory) -> None:
    """Bug guarded: profiles were append-only without limit (7,015 versions for one job)."""
    store = open_store(max_profile_versions=3)
    store.create_job("j1", {}, {"num_stages": 1})
    versions = [store.put_profile("j1", {"v": i}) for i in range(10)]
    assert versions == list(range(1, 11))
    assert store.profile_versions("j1") == [8, 9, 10] and store.latest_profile("j1") == (10, {"v": 9})


def test_claims_let_one_owner_solve_a_step(open_store: StoreFactory) -> None:
    """A step is claimed once: a second owner waits (`held`) until the plan is stored, a different batch is a
    conflict, an expired claim (its owner died) is taken over, and a released claim frees the step."""
    store = open_store()
    store.create_job("j1", {}, {"num_stages": 1})
    assert store.claim_step("j1", 0, "fp-a", "A", lease_s=60).state == "claimed"
    assert store.claim_step("j1", 0, "fp-a", "B", lease_s=60).state == "held"
    with pytest.raises(PlanConflictError):
        store.claim_step("j1", 0, "fp-b", "B", lease_s=60)
    store.put_plan(record(0))
    claim = store.claim_step("j1", 0, "fp-a", "B", lease_s=60)
    assert claim.state == "stored" and claim.stored is not None and claim.stored.plan_json == b'{"plan": 1}'
    assert store.claim_step("j1", 1, "fp-a", "A", lease_s=-1).state == "claimed"  # already expired
    assert store.claim_step("j1", 1, "fp-a", "B", lease_s=60).state == "claimed"
    store.release_claim("j1", 1, "B")
    assert store.claim_step("j1", 1, "fp-a", "C", lease_s=60).state == "claimed"
