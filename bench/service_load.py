"""Load test of the planner service: N concurrent clients for M seconds against a live server on loopback.

Two phases, each reporting throughput, p50/p99 latency and error count:

- `cached_get`: every client GETs one stored plan (`GET /v1/jobs/{job}/plans/{step}`) in a loop — the store
  and HTTP path, no solving;
- `fresh_plan`: every client asks for plans of new steps (`POST /v1/jobs/{job}/plans`, a new batch each time) —
  every request is a solve, bounded by the server's solve pool (HELIX_MAX_CONCURRENT_SOLVES).

The server runs as a separate process (`helix serve`, with a token, on a free loopback port and a temporary
DB), so clients and server do not share a GIL. Bounded: at most 64 clients and 120 s per phase.

    .venv/bin/python bench/service_load.py --clients 8 --seconds 10

Writes bench/results/service_load.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner_service.client import PlannerApiError, PlannerClient  # noqa: E402
from planner_service.workloads import sample_synthetic  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MAX_CLIENTS = 64
MAX_SECONDS = 120.0


@dataclass
class PhaseStats:
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, latency: float) -> None:
        with self.lock:
            self.latencies_s.append(latency)

    def fail(self, code: str) -> None:
        with self.lock:
            self.errors += 1
            self.error_codes[code] = self.error_codes.get(code, 0) + 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(db: Path, token: str, port: int, max_solves: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HELIX_API_TOKEN": token, "HELIX_MAX_CONCURRENT_SOLVES": str(max_solves)}
    cmd = [sys.executable, "-m", "planner_service.cli", "serve", "--port", str(port), "--db", str(db)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    with PlannerClient(f"http://127.0.0.1:{port}", retries=0, timeout=2.0) as probe:
        while True:
            try:
                probe.health()
                return proc
            except PlannerApiError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    proc.kill()
                    raise SystemExit(f"server did not start: {err[-2000:]}") from None
                time.sleep(0.1)


def run_phase(name: str, clients: int, seconds: float, work: Any) -> dict[str, Any]:
    """Run `work(client_index, iteration, stats)` in `clients` threads for `seconds`; summarise."""
    stats = PhaseStats()
    stop = time.monotonic() + seconds
    started = time.monotonic()

    def loop(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            work(i, n, stats)
            n += 1

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        elapsed = time.monotonic() - started
        print(f"  {name}: {elapsed:5.1f}s  ok={len(stats.latencies_s)} errors={stats.errors}", flush=True)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    lat = np.asarray(stats.latencies_s) * 1e3
    return {
        "phase": name,
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests_ok": int(lat.size),
        "errors": stats.errors,
        "error_codes": stats.error_codes,
        "throughput_rps": round(lat.size / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        "max_ms": round(float(lat.max()), 2) if lat.size else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="Duration of each phase.")
    parser.add_argument("--cluster", default="a800-80g-4x8")
    parser.add_argument("--model", default="llama2-7b")
    parser.add_argument("--strategy", default="greedy")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=32768)
    parser.add_argument("--max-solves", type=int, default=2, help="HELIX_MAX_CONCURRENT_SOLVES of the server.")
    parser.add_argument("--out", type=Path, default=RESULTS / "service_load")
    args = parser.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--clients must be 1..{MAX_CLIENTS} and --seconds in (0, {MAX_SECONDS}]")

    token = secrets.token_urlsafe(24)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rng = np.random.default_rng(0)

    def batch() -> list[int]:
        return [min(n, args.max_len) for n in sample_synthetic("github", args.batch_size, rng)]

    batches = [batch() for _ in range(256)]  # drawn up front: the clients measure the service, not numpy
    with tempfile.TemporaryDirectory(prefix="helix-load-") as tmp:
        print(f"starting helix serve on {url} (db in {tmp})", flush=True)
        server = start_server(Path(tmp) / "load.db", token, port, args.max_solves)
        try:
            with PlannerClient(url, token=token, retries=0) as setup:
                job = setup.create_job(
                    cluster=args.cluster, model=args.model, strategy=args.strategy, sample_lengths=batches[0]
                )
                setup.plan_for_step(job.job_id, 0, batches[0])
            print(f"job {job.job_id}: P={job.decisions.num_stages}", flush=True)
            clients = [PlannerClient(url, token=token, retries=0) for _ in range(args.clients)]

            def cached_get(i: int, n: int, stats: PhaseStats) -> None:
                t0 = time.perf_counter()
                try:
                    clients[i].get_plan_bytes(job.job_id, 0)
                    stats.ok(time.perf_counter() - t0)
                except PlannerApiError as exc:
                    stats.fail(exc.code)

            def fresh_plan(i: int, n: int, stats: PhaseStats) -> None:
                step = 1 + i + n * args.clients  # unique per request: every request is a solve
                t0 = time.perf_counter()
                try:
                    clients[i].plan_bytes_for_step(job.job_id, step, batches[step % len(batches)])
                    stats.ok(time.perf_counter() - t0)
                except PlannerApiError as exc:
                    stats.fail(exc.code)

            results = [
                run_phase("cached_get", args.clients, args.seconds, cached_get),
                run_phase("fresh_plan", args.clients, args.seconds, fresh_plan),
            ]
            for c in clients:
                c.close()
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()

    report = {
        "setup": {
            "cluster": args.cluster,
            "model": args.model,
            "strategy": args.strategy,
            "batch_size": args.batch_size,
            "max_len": args.max_len,
            "server_max_concurrent_solves": args.max_solves,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.platform(),
            "transport": "HTTP/1.1 over loopback, one server process (uvicorn), clients in threads of another",
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Planner service load",
        "",
        f"{args.clients} clients x {args.seconds:g} s per phase against `helix serve` on loopback "
        f"({report['setup']['cpus']} CPUs, Python {report['setup']['python']}); plans for {args.cluster} / "
        f"{args.model} / {args.strategy}, {args.batch_size} sequences (synthetic github, <= {args.max_len} tokens); "
        f"server solve pool {args.max_solves}.",
        "",
        "| phase | clients | requests ok | errors | throughput (req/s) | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['phase']} | {r['clients']} | {r['requests_ok']} | {r['errors']} | {r['throughput_rps']} | "
            f"{r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
