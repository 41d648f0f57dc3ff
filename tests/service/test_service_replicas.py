"""More than one replica: two `helix serve` processes on one PostgreSQL database share jobs and plans, and 20
identical concurrent requests for a step, spread over both, cost one solve and get byte-identical plans.

Bug guarded (issue 14): coalescing lived in an in-process dict and the store was a local SQLite file, so a
second planner process behind a load balancer solved the same step again (and could not see the job).
Solves are counted from both processes' /metrics.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.service.service_inputs import LENGTHS, TOKEN

START_GUARD_S = 90.0
SLOW_JOB = {"cluster": "a800-80g-4x8", "model": "llama2-7b", "strategy": "helix", "num_stages": 1, "time_limit_s": 2.0}
"""helix searches for most of its time limit, so the first solve is still running when the other requests come."""
ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def serve(db: str) -> Iterator[str]:
    """`helix serve` in a subprocess on a free port; stopped (and waited for) on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HELIX_")}, "HELIX_API_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "planner_service.cli", "serve", "--port", str(port), "--db", db],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        give_up = time.monotonic() + START_GUARD_S
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else "exited"
            assert time.monotonic() < give_up, "helix serve did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def metric(url: str, prefix: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def solves(url: str) -> float:
    return metric(url, 'helix_solves_total{kind="job_step"}')


def in_flight(url: str) -> float:
    return metric(url, "helix_solves_in_flight ")


@pytest.mark.slow
def test_two_processes_on_one_database_solve_a_step_once(postgres_url: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with serve(postgres_url) as a, serve(postgres_url) as b:
        created = httpx.post(f"{a}/v1/jobs", json=SLOW_JOB, headers=headers, timeout=60)
        assert created.status_code == 201, created.text
        job = created.json()["job_id"]
        assert httpx.get(f"{b}/v1/jobs/{job}", headers=headers, timeout=30).status_code == 200  # shared jobs

        def ask(i: int) -> httpx.Response:
            url = (a, b)[i % 2]
            return httpx.post(
                f"{url}/v1/jobs/{job}/plans", json={"step": 7, "lengths": LENGTHS}, headers=headers, timeout=120
            )

        with ThreadPoolExecutor(max_workers=20) as pool:
            first = pool.submit(ask, 0)
            give_up = time.monotonic() + START_GUARD_S
            while in_flight(a) < 1:  # the others arrive while process a's solve runs (helix uses its limit)
                assert time.monotonic() < give_up, "the first solve never started"
                time.sleep(0.01)
            others = [pool.submit(ask, i) for i in range(1, 20)]
            responses = [first.result(), *(f.result() for f in others)]
        assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses if r.status_code != 200]
        assert len({r.content for r in responses}) == 1, "every caller gets the same bytes"
        assert solves(a) + solves(b) == 1, "20 identical requests over two processes cost one solve"
        sources = {r.headers["x-helix-plan-source"] for r in responses}
        assert "solve" in sources and sources <= {"solve", "coalesced", "store"}
        other = httpx.post(
            f"{b}/v1/jobs/{job}/plans", json={"step": 7, "lengths": [*LENGTHS, 9]}, headers=headers, timeout=60
        )
        assert other.status_code == 409 and other.json()["code"] == "conflict"
        assert httpx.get(f"{b}/v1/jobs/{job}/plans/7", headers=headers, timeout=30).content == responses[0].content
