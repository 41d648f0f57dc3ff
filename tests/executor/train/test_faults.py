"""Faults during `helix train`: the planner goes away and comes back, a rank dies (stop or restart and resume),
and a plan that does not fit the job. Each runs the real CLI (torchrun underneath) on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from planner_service.local_service import LocalService
from planner_service.planner import make_plan
from planner_service.presets import CLUSTERS, MODELS
from proto import Batch
from tests.executor.train.train_cases import records_of, write_stdlib_corpus

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

BASE = ["--cluster", "cpu-2x2", "--model", "tiny", "--max-len", "256", "--batch-size", "6", "--seed", "2"]
POLL_S = 0.05


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stdlib_corpus(tmp_path_factory.mktemp("corpus"))


def start_train(*args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "planner_service.cli", "train", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(metrics: Path, step: int, proc: subprocess.Popen[str]) -> None:
    """Block until the metrics file holds `step` (an event, not a time; the test's timeout bounds it)."""
    while not (metrics.exists() and any(r["step"] >= step for r in records_of(metrics))):
        assert proc.poll() is None, f"training ended early: {proc.communicate()[1][-2000:]}"
        time.sleep(POLL_S)


def rank_pids(marker: str, rank: int) -> list[int]:
    """Processes of a torchrun worker with this global rank whose command line mentions `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            marker in cmdline
            and f"RANK={rank}".encode() in environ
            and any(e.startswith(b"TORCHELASTIC_RUN_ID=") for e in environ)
        ):
            found.append(int(entry.name))
    return found


@pytest.mark.timeout(600)
def test_planner_stopped_mid_run_falls_back_then_returns(corpus: Path, tmp_path: Path) -> None:
    """The service dies after step 2 and is started again (same port, same store) once step 5 has run: the steps
    between are planned in-process, the service plans again once it answers, and every step runs exactly once.
    (40 steps leave the service's few seconds of start-up well inside the run.)"""
    metrics = tmp_path / "run.jsonl"
    service = LocalService(tmp_path / "plans.db").start()
    try:
        proc = start_train(
            *BASE, "--steps", "40", "--data", str(corpus), "--planner", service.url, "--strategy", "greedy",
            "--metrics", str(metrics), "--cache-dir", str(tmp_path / "cache"), "--plan-deadline", "20",
        )  # fmt: skip
        wait_for_step(metrics, 2, proc)
        service.stop()
        wait_for_step(metrics, 5, proc)
        service.start()
        _, err = proc.communicate(timeout=500)
    finally:
        service.stop()
    assert proc.returncode == 0, err[-3000:]
    records = records_of(metrics)
    assert [r["step"] for r in records] == list(range(40))  # none lost, none repeated
    sources = [r["plan_source"] for r in records]
    assert sources[:2] == ["service", "service"]
    assert "fallback" in sources[3:8], sources
    last_fallback = max(i for i, s in enumerate(sources) if s == "fallback")
    assert "service" in sources[last_fallback + 1 :], sources  # used again as soon as it answers
    assert all(r["fallback_reason"] for r in records if r["plan_source"] == "fallback")


@pytest.mark.timeout(300)
def test_killed_rank_stops_the_job_with_a_clear_message(corpus: Path, tmp_path: Path) -> None:
    metrics = tmp_path / "run.jsonl"
    proc = start_train(
        *BASE, "--steps", "200", "--data", str(corpus), "--strategy", "greedy", "--metrics", str(metrics),
        "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    wait_for_step(metrics, 1, proc)
    victims = rank_pids(str(metrics), 1)
    assert len(victims) == 1, victims
    os.kill(victims[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=240)  # bounded: torchrun stops the other ranks instead of letting them wait
    assert proc.returncode != 0
    assert "training stopped: a rank failed" in err
    assert len(records_of(metrics)) < 200


def _losses(path: Path) -> dict[int, float]:
    by_step: dict[int, float] = {}
    for record in records_of(path):
        by_step[record["step"]] = record["loss"]  # a resumed run repeats steps after its checkpoint: last wins
    return by_step


@pytest.mark.timeout(600)
def test_killed_rank_restarts_from_the_checkpoint_and_matches_an_uninterrupted_run(
    corpus: Path, tmp_path: Path
) -> None:
    """torchrun --max-restarts restarts every rank; --auto-resume continues from the last checkpoint; in float64
    the losses of every step equal those of a run that was never interrupted."""
    common = [*BASE, "--steps", "8", "--data", str(corpus), "--strategy", "static", "--dtype", "float64"]
    common += ["--cache-dir", str(tmp_path / "cache"), "--checkpoint-every", "2"]
    clean_metrics = tmp_path / "clean.jsonl"
    clean = start_train(*common, "--metrics", str(clean_metrics), "--checkpoint-dir", str(tmp_path / "clean-ckpt"))
    _, err = clean.communicate(timeout=300)
    assert clean.returncode == 0, err[-3000:]

    metrics = tmp_path / "run.jsonl"
    proc = start_train(
        *common, "--metrics", str(metrics), "--checkpoint-dir", str(tmp_path / "ckpt"), "--auto-resume",
        "--max-restarts", "1",
    )  # fmt: skip
    wait_for_step(metrics, 4, proc)
    victims = rank_pids(str(metrics), 2)
    assert len(victims) == 1, victims
    os.kill(victims[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    steps = [r["step"] for r in records_of(metrics)]
    assert len(steps) > len(set(steps)), "no step ran twice: the kill did not force a resume"
    resumed, uninterrupted = _losses(metrics), _losses(clean_metrics)
    assert sorted(resumed) == list(range(8))
    for step, loss in uninterrupted.items():
        assert abs(resumed[step] - loss) <= 1e-9 * abs(loss), (step, resumed[step], loss)


class _WrongPlanService(BaseHTTPRequestHandler):
    """Registers any job (P=1) and answers every step with a plan made for another cluster (8 ranks)."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/jobs":
            spec = {k: body[k] for k in ("cluster", "model", "strategy", "options", "solver")}
            payload = {
                "job_id": "job_wrong", "created_at": 0.0, **spec, "time_limit_s": 2.0,
                "decisions": {"num_stages": 1, "layer_ranges": [[0, 2]], "sample_source": "fixed", "sample_size": 0},
            }  # fmt: skip
            self._reply(201, json.dumps(payload).encode())
        else:
            batch = Batch(seq_ids=body["seq_ids"], lengths=body["lengths"])
            plan = make_plan(batch=batch, cluster=CLUSTERS["cpu-2x4"], model=MODELS["tiny"], strategy="greedy")
            self._reply(200, plan.model_dump_json().encode())

    def _reply(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def wrong_plan_service() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WrongPlanService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


@pytest.mark.timeout(300)
def test_a_plan_for_another_world_is_refused_before_it_runs(corpus: Path, tmp_path: Path) -> None:
    """The service answers with plans for 8 ranks; rank 0 refuses each one before broadcasting (no collective
    runs with it) and plans the step in-process instead."""
    metrics = tmp_path / "run.jsonl"
    with wrong_plan_service() as url:
        result = subprocess.run(
            [sys.executable, "-m", "planner_service.cli", "train", *BASE, "--steps", "2", "--data", str(corpus),
             "--planner", url, "--strategy", "greedy", "--metrics", str(metrics), "--cache-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=280,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = records_of(metrics)
    assert [r["plan_source"] for r in records] == ["fallback", "fallback"]
    assert all("invalid" in r["fallback_reason"] and "another cluster" in r["fallback_reason"] for r in records)
