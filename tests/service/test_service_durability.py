"""A plan is stored before it is returned; old plans are pruned to 410 `gone`; plans travel gzip-encoded.

Bug guarded (issue 14): "stored before returned" was untested — a change that returned the plan and committed
it afterwards passed every service test. Here the store's plan write is made to fail (no plan may be served,
and the step stays plannable) or to stall (the response must wait for the commit, and a GET meanwhile finds
nothing; afterwards POST and GET are byte-identical).
"""

from __future__ import annotations

import asyncio
import gzip
import threading
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from planner_service.api import Settings, create_app
from planner_service.api.app import open_store
from planner_service.store import PlanRecord, PlanStore, StoreError
from tests.service.service_inputs import LENGTHS, SMALL_JOB, SettingsFactory
from tests.service.solve_fns import HANG_GUARD_S
from tests.service.test_service_coalescing import until
from tests.service.test_service_routes import assert_error


class FailingWrites:
    """A store factory whose plan writes fail until `healed` is set."""

    def __init__(self) -> None:
        self.healed = False

    def __call__(self, settings: Settings) -> PlanStore:
        outer = self

        class Store(PlanStore):
            def put_plan(self, record: PlanRecord) -> PlanRecord:
                if not outer.healed:
                    raise StoreError("disk full (injected)")
                return super().put_plan(record)

        return _reopen(Store, settings)


class StalledWrites:
    """A store factory whose plan writes wait for `release` (and say when they started)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, settings: Settings) -> PlanStore:
        outer = self

        class Store(PlanStore):
            def put_plan(self, record: PlanRecord) -> PlanRecord:
                outer.started.set()
                assert outer.release.wait(HANG_GUARD_S), "the test never released the write"
                return super().put_plan(record)

        return _reopen(Store, settings)


def _reopen(cls: type[PlanStore], settings: Settings) -> PlanStore:
    base = open_store(settings)
    store = cls(settings.db, retention=base.retention, max_profile_versions=base.max_profile_versions)
    base.close()
    return store


def test_a_failed_store_write_serves_no_plan(tmp_path: Path, make_settings: SettingsFactory) -> None:
    factory = FailingWrites()
    with TestClient(create_app(make_settings(tmp_path / "f.db"), store_factory=factory)) as client:
        job = client.post("/v1/jobs", json=SMALL_JOB).json()["job_id"]
        url = f"/v1/jobs/{job}/plans"
        failed = client.post(url, json={"step": 0, "lengths": LENGTHS})
        body = assert_error(failed, 503, "store_unavailable")
        assert "disk full" in body["message"] and b"lanes" not in failed.content
        assert_error(client.get(f"{url}/0"), 404, "not_found")
        factory.healed = True  # the claim was released: the same step is planned again
        again = client.post(url, json={"step": 0, "lengths": LENGTHS})
        assert again.status_code == 200 and again.headers["x-helix-plan-source"] == "solve"
        assert client.get(f"{url}/0").content == again.content


async def _stalled(app: Any, writes: StalledWrites) -> None:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=HANG_GUARD_S) as http:
            job = (await http.post("/v1/jobs", json={**SMALL_JOB, "num_stages": 1})).json()["job_id"]
            url = f"/v1/jobs/{job}/plans"
            post = asyncio.ensure_future(http.post(url, json={"step": 0, "lengths": LENGTHS}))
            await until(writes.started.is_set, "the plan's commit started")
            assert (await http.get(f"{url}/0")).status_code == 404  # not committed: not visible
            await asyncio.sleep(0.05)  # give a plan-before-commit bug the chance to answer
            assert not post.done(), "the plan was returned before it was committed"
            writes.release.set()
            answered = await post
            assert answered.status_code == 200
            assert (await http.get(f"{url}/0")).content == answered.content


def test_the_response_waits_for_the_commit(tmp_path: Path, make_settings: SettingsFactory) -> None:
    writes = StalledWrites()
    app = create_app(make_settings(tmp_path / "s.db"), store_factory=writes)
    asyncio.run(_stalled(app, writes))


def test_pruned_steps_answer_410_gone(tmp_path: Path, make_settings: SettingsFactory) -> None:
    """Retention keeps the last HELIX_KEEP_LAST_STEPS steps and every step with feedback; an older step reads
    as `gone` (it existed), not `not_found`, and cannot be re-planned for a different result."""
    with TestClient(create_app(make_settings(tmp_path / "r.db", keep_last_steps=2))) as client:
        job = client.post("/v1/jobs", json=SMALL_JOB).json()["job_id"]
        url = f"/v1/jobs/{job}/plans"
        plans = [client.post(url, json={"step": s, "lengths": LENGTHS}) for s in range(4)]
        plan_id = plans[2].json()["plan_id"]
        fb = {"step": 2, "plan_id": plan_id, "measured_iteration_s": 1.0}
        assert client.post(f"/v1/jobs/{job}/feedback", json=fb).status_code == 200
        plans += [client.post(url, json={"step": s, "lengths": LENGTHS}) for s in (4, 5)]
        assert_error(client.get(f"{url}/0"), 410, "gone", "step")
        assert_error(client.post(url, json={"step": 0, "lengths": LENGTHS}), 410, "gone", "step")
        assert_error(client.post(url, json={"step": 0, "lengths": [*LENGTHS, 5]}), 409, "conflict")
        assert client.get(f"{url}/2").content == plans[2].content  # kept: it has feedback
        assert_error(client.get(f"{url}/3"), 410, "gone", "step")
        assert client.get(f"{url}/5").content == plans[5].content
        counts = client.get(f"/v1/jobs/{job}").json()["counts"]
        assert counts["plans"] == 3 and counts["pruned_plans"] == 3
        assert_error(client.get(f"{url}/99"), 404, "not_found")


def test_plans_are_sent_gzip_encoded_and_decode_to_the_stored_bytes(client: TestClient, job_id: str) -> None:
    url = f"/v1/jobs/{job_id}/plans"
    posted = client.post(url, json={"step": 0, "lengths": LENGTHS}, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in posted.headers
    raw = client.get(f"{url}/0", headers={"Accept-Encoding": "gzip"})
    assert raw.headers["content-encoding"] == "gzip" and raw.headers["vary"] == "Accept-Encoding"
    assert raw.content == posted.content  # the client decodes: byte-identical to the planning response
    assert gzip.decompress(gzip.compress(posted.content)) == posted.content
