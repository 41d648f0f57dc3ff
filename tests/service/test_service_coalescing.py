"""Concurrent identical per-step requests are solved once and all get byte-identical plans; /healthz answers
while a solve is provably still running (solves run off the event loop); another batch for a step whose solve
is in flight is a 409.

Event-based, no wall-clock thresholds: the solve function blocks until the test releases it, so "while the
solve runs" is a state the test controls and checks, not a timing hope. httpx's ASGI transport keeps all
requests in flight together on one event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from planner_service.api import create_app
from tests.service.service_inputs import LENGTHS, SMALL_JOB, SettingsFactory
from tests.service.solve_fns import HANG_GUARD_S, GatedSolve


async def until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the event loop until `condition` holds."""
    give_up = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < give_up, f"never happened: {what}"
        await asyncio.sleep(0.001)


async def _run(app: Any, held: GatedSolve) -> None:
    metrics = app.state.helix.metrics.registry

    def coalesced() -> float:
        return metrics.get_sample_value("helix_plan_coalesced_total") or 0.0

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=HANG_GUARD_S) as http:
            created = await http.post("/v1/jobs", json={**SMALL_JOB, "num_stages": 1})
            assert created.status_code == 201, created.text
            assert held.calls == 0  # a fixed pipeline degree needs no decision solves
            url = f"/v1/jobs/{created.json()['job_id']}/plans"

            requests = [asyncio.ensure_future(http.post(url, json={"step": 5, "lengths": LENGTHS})) for _ in range(50)]
            await until(lambda: held.running == 1 and coalesced() == 49, "one held solve and 49 waiting requests")
            health = await http.get("/healthz")
            assert health.status_code == 200 and health.json()["status"] == "ok"
            # /healthz answered while the solve was still held in its worker and no plan request had finished
            assert held.running == 1
            assert not any(r.done() for r in requests)

            held.release()
            responses = await asyncio.gather(*requests)
            assert [r.status_code for r in responses] == [200] * 50
            assert len({r.content for r in responses}) == 1, "all callers must get byte-identical plans"
            assert held.calls == 1, "50 identical requests must cost one solve"
            sources = [r.headers["x-helix-plan-source"] for r in responses]
            assert sources.count("solve") == 1 and sources.count("coalesced") == 49

            text = (await http.get("/metrics")).text
            assert 'helix_solves_total{kind="job_step"} 1.0' in text
            assert "helix_plan_coalesced_total 49.0" in text

            # another batch for a step whose solve is in flight is a conflict, not a second solve
            held.hold()
            first = asyncio.ensure_future(http.post(url, json={"step": 6, "lengths": LENGTHS}))
            await until(lambda: held.running == 1, "the step-6 solve is held")
            other = await http.post(url, json={"step": 6, "lengths": [*LENGTHS, 5]})
            assert other.status_code == 409, other.text
            assert other.json()["code"] == "conflict" and other.json()["field"] == "lengths"
            assert not first.done()
            held.release()
            assert (await first).status_code == 200
            assert held.calls == 2

            stored = await http.get(f"{url}/5")
            assert stored.content == responses[0].content


def test_fifty_identical_requests_cost_one_solve(tmp_path: Path, make_settings: SettingsFactory) -> None:
    folder = tmp_path / "gate"
    folder.mkdir()
    held = GatedSolve(str(folder))
    app = create_app(make_settings(tmp_path / "co.db", max_concurrent_solves=1), solve_fn=held)
    asyncio.run(_run(app, held))
