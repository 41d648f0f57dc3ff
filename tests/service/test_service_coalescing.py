"""Concurrent identical per-step requests are solved once and all get byte-identical plans; /healthz answers
while solves run (they are off the event loop); a different concurrent batch for the same step is a 409.

Uses httpx's ASGI transport so 50 requests really are in flight together on one event loop, and a slowed-down
`plan_fn` so they overlap the solve.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from planner_service.api import create_app
from tests.service.conftest import LENGTHS, SMALL_JOB, SolveCounter, small_settings


async def _run(tmp_path: Path, counter: SolveCounter) -> None:
    app = create_app(small_settings(tmp_path / "co.db", max_concurrent_solves=1), plan_fn=counter)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as http:
            created = await http.post("/v1/jobs", json={**SMALL_JOB, "num_stages": 1})
            assert created.status_code == 201, created.text
            job_id = created.json()["job_id"]
            calls_before = counter.calls
            url = f"/v1/jobs/{job_id}/plans"

            async def health_latency() -> float:
                await asyncio.sleep(0.05)  # once the solve has started
                started = time.perf_counter()
                response = await http.get("/healthz")
                assert response.status_code == 200
                return time.perf_counter() - started

            requests = [http.post(url, json={"step": 5, "lengths": LENGTHS}) for _ in range(50)]
            *responses, health_s = await asyncio.gather(*requests, health_latency())
            assert [r.status_code for r in responses] == [200] * 50
            assert len({r.content for r in responses}) == 1, "all callers must get byte-identical plans"
            assert counter.calls - calls_before == 1, "50 identical requests must cost one solve"
            sources = [r.headers["x-helix-plan-source"] for r in responses]
            assert sources.count("solve") == 1 and sources.count("coalesced") == 49
            assert health_s < counter.delay_s, f"/healthz took {health_s:.3f}s while a solve ran"

            metrics = (await http.get("/metrics")).text
            assert 'helix_solves_total{kind="job_step"} 1.0' in metrics
            assert "helix_plan_coalesced_total 49.0" in metrics

            # a different batch for a step being solved right now is a conflict, not a second solve
            first = http.post(url, json={"step": 6, "lengths": LENGTHS})
            other = http.post(url, json={"step": 6, "lengths": [*LENGTHS, 5]})
            a, b = await asyncio.gather(first, other)
            assert sorted([a.status_code, b.status_code]) == [200, 409]  # whichever arrived first wins
            loser = a if a.status_code == 409 else b
            assert loser.json()["code"] == "conflict" and loser.json()["field"] == "lengths"
            assert counter.calls - calls_before == 2

            stored = await http.get(f"{url}/5")
            assert stored.content == responses[0].content


def test_fifty_identical_requests_cost_one_solve(tmp_path: Path) -> None:
    asyncio.run(_run(tmp_path, SolveCounter(delay_s=0.5)))
