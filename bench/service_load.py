"""Load test of the planner service against a live server on loopback: throughput, overload, storage, limits.

Phases, each reporting throughput, p50/p99 latency and error counts:

- `cached_get`: every client GETs one stored plan (`GET /v1/jobs/{job}/plans/{step}`) in a loop — the store
  and HTTP path, no solving;
- `fresh_plan`: every client asks for plans of new steps (`POST /v1/jobs/{job}/plans`, a new batch each time) —
  every request is a solve, bounded by the server's solve workers (HELIX_MAX_CONCURRENT_SOLVES);
- `overload`: 4x more planning clients than workers (no client retries), while other clients GET a stored
  plan: the 503 `busy` rate, p50/p99 of the accepted plan requests and of the cached GETs during overload;
- storage: bytes per stored plan (JSON and gzip) and store growth per 1,000 planned steps;
- `limits` (`--phase limits`): one request at a time at the service's size limits (HELIX_MAX_DEVICES devices,
  HELIX_MAX_SEQUENCES sequences, sequences x P = HELIX_MAX_SEQUENCE_STAGES) with every strategy, and the
  greedy plan alone in-process at the same sizes: the worst request wall time against limit + margin.

The server runs as a separate process (`helix serve`, with a token, on a free loopback port and a temporary
DB), so clients and server do not share a GIL. Bounded: at most 64 clients and 120 s per phase.

    .venv/bin/python bench/service_load.py --clients 8 --seconds 10
    .venv/bin/python bench/service_load.py --phase limits

Writes bench/results/service_load.{md,json} (and service_limits.{md,json} for `--phase limits`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import sqlite3
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

    def record(self, call: Any) -> None:
        """Time `call()`; an API error counts by its code."""
        t0 = time.perf_counter()
        try:
            call()
        except PlannerApiError as exc:
            self.fail(exc.code)
        else:
            self.ok(time.perf_counter() - t0)

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


def start_server(db: Path, token: str, port: int, max_solves: int, **settings: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HELIX_API_TOKEN": token,
        "HELIX_MAX_CONCURRENT_SOLVES": str(max_solves),
        **{f"HELIX_{k.upper()}": v for k, v in settings.items()},
    }
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


def summary(name: str, clients: int, elapsed: float, stats: PhaseStats) -> dict[str, Any]:
    lat = np.asarray(stats.latencies_s) * 1e3
    total = int(lat.size) + stats.errors
    return {
        "phase": name,
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests_ok": int(lat.size),
        "errors": stats.errors,
        "error_codes": stats.error_codes,
        "busy_rate": round(stats.error_codes.get("busy", 0) / total, 3) if total else None,
        "throughput_rps": round(lat.size / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        "max_ms": round(float(lat.max()), 2) if lat.size else None,
    }


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def run_phase(name: str, clients: int, seconds: float, work: Any) -> dict[str, Any]:
    """Run `work(client_index, iteration, stats)` in `clients` threads for `seconds`; summarise."""
    return run_mixed(name, seconds, [(clients, work)])[0]


def run_mixed(name: str, seconds: float, groups: list[tuple[int, Any]]) -> list[dict[str, Any]]:
    """Run several groups of clients at once (`(clients, work)` each); one summary per group."""
    stop = time.monotonic() + seconds
    started = time.monotonic()
    all_stats = [PhaseStats() for _ in groups]
    threads = []
    offset = 0
    for (clients, work), stats in zip(groups, all_stats, strict=True):

        def loop(i: int, work: Any = work, stats: PhaseStats = stats) -> None:
            n = 0
            while time.monotonic() < stop:
                work(i, n, stats)
                n += 1

        threads += [threading.Thread(target=loop, args=(offset + i,), daemon=True) for i in range(clients)]
        offset += clients
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        elapsed = time.monotonic() - started
        done = sum(len(s.latencies_s) for s in all_stats)
        print(f"  {name}: {elapsed:5.1f}s  ok={done} errors={sum(s.errors for s in all_stats)}", flush=True)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return [summary(name, clients, elapsed, stats) for (clients, _), stats in zip(groups, all_stats, strict=True)]


def store_usage(db: Path, steps: int) -> dict[str, Any]:
    """Bytes per stored plan and the store's growth per 1,000 planned steps (SQLite file after a checkpoint)."""
    from planner_service.store import PlanStore

    store = PlanStore(db)
    usage = store.usage()
    store.close()
    sqlite3.connect(db).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    file_bytes = db.stat().st_size
    plans = max(usage.plans, 1)
    return {
        "plans_stored": usage.plans,
        "steps_planned": steps,
        "json_bytes_per_plan": round(usage.raw_bytes / plans),
        "stored_bytes_per_plan": round(usage.stored_bytes / plans),
        "compression_ratio": round(usage.raw_bytes / max(usage.stored_bytes, 1), 1),
        "store_file_bytes": file_bytes,
        "store_mb_per_1000_steps": round(file_bytes / max(steps, 1) * 1000 / 1e6, 2),
        "uncompressed_mb_per_1000_steps": round(usage.raw_bytes / plans * 1000 / 1e6, 2),
    }


def load_main(args: argparse.Namespace) -> int:
    token = secrets.token_urlsafe(24)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rng = np.random.default_rng(0)

    def batch() -> list[int]:
        return [min(n, args.max_len) for n in sample_synthetic("github", args.batch_size, rng)]

    batches = [batch() for _ in range(256)]  # drawn up front: the clients measure the service, not numpy
    with tempfile.TemporaryDirectory(prefix="helix-load-") as tmp:
        db = Path(tmp) / "load.db"
        print(f"starting helix serve on {url} (db in {tmp})", flush=True)
        server = start_server(db, token, port, args.max_solves, max_queued_solves=str(args.max_queued))
        steps = iter(range(1, 10**9))
        step_lock = threading.Lock()

        def next_step() -> int:
            with step_lock:
                return next(steps)

        try:
            overload_clients = 4 * args.max_solves
            with PlannerClient(url, token=token, retries=0) as setup:
                job = setup.create_job(
                    cluster=args.cluster, model=args.model, strategy=args.strategy, sample_lengths=batches[0]
                )
                setup.plan_for_step(job.job_id, 0, batches[0])
                # one job per planning client (many training jobs share one planner), all with job's P
                jobs = [
                    setup.create_job(cluster=args.cluster, model=args.model, strategy=args.strategy,
                                     num_stages=job.decisions.num_stages).job_id
                    for _ in range(args.clients + overload_clients)
                ]  # fmt: skip
            print(f"job {job.job_id}: P={job.decisions.num_stages}", flush=True)
            clients = [PlannerClient(url, token=token, retries=0) for _ in range(args.clients + overload_clients)]

            def cached_get(i: int, n: int, stats: PhaseStats) -> None:
                stats.record(lambda: clients[i].get_plan_bytes(job.job_id, 0))

            def fresh_plan(i: int, n: int, stats: PhaseStats) -> None:
                step = next_step()  # unique per request: every request is a solve
                batch = batches[step % len(batches)]
                stats.record(lambda: clients[i].plan_bytes_for_step(jobs[i], step, batch))

            results = [
                run_phase("cached_get", args.clients, args.seconds, cached_get),
                run_phase("fresh_plan", args.clients, args.seconds, fresh_plan),
            ]
            planners, getters = run_mixed(
                "overload", args.seconds, [(overload_clients, fresh_plan), (args.clients, cached_get)]
            )
            planners["phase"], getters["phase"] = "overload: plan requests", "overload: cached GETs"
            results += [planners, getters]
            for c in clients:
                c.close()
        finally:
            stop_server(server)
        storage = store_usage(db, next_step() - 1)

    report = {"setup": setup_of(args), "results": results, "storage": storage}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Planner service load",
        "",
        f"{args.clients} clients x {args.seconds:g} s per phase against `helix serve` on loopback "
        f"({report['setup']['cpus']} CPUs, Python {report['setup']['python']}); plans for {args.cluster} / "
        f"{args.model} / {args.strategy}, {args.batch_size} sequences (synthetic github, <= {args.max_len} tokens); "
        f"server: {args.max_solves} solve workers, queue of {args.max_queued}. Each planning client plans its own "
        f"job. Overload: {overload_clients} planning clients (4x the workers, no client retries) and "
        f"{args.clients} clients reading a stored plan, at once.",
        "",
        "| phase | clients | requests ok | errors | 503 busy rate | throughput (req/s) | p50 (ms) | p99 (ms) "
        "| max (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['phase']} | {r['clients']} | {r['requests_ok']} | {r['errors']} | {r['busy_rate']} | "
            f"{r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |"
        )
    lines += [
        "",
        "Storage (plans gzip-compressed; retention HELIX_KEEP_LAST_STEPS at its default):",
        "",
        "| plans stored | JSON bytes/plan | stored bytes/plan | ratio | store MB per 1,000 steps | "
        "uncompressed MB per 1,000 steps |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {storage['plans_stored']} | {storage['json_bytes_per_plan']} | {storage['stored_bytes_per_plan']} | "
        f"{storage['compression_ratio']} | {storage['store_mb_per_1000_steps']} | "
        f"{storage['uncompressed_mb_per_1000_steps']} |",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def setup_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "cluster": args.cluster,
        "model": args.model,
        "strategy": args.strategy,
        "batch_size": args.batch_size,
        "max_len": args.max_len,
        "server_max_concurrent_solves": args.max_solves,
        "server_max_queued_solves": args.max_queued,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.platform(),
        "transport": "HTTP/1.1 over loopback, one server process (uvicorn), clients in threads of another",
    }


def limits_main(args: argparse.Namespace) -> int:
    """Requests at the service's size limits, one at a time; and greedy alone at the same sizes."""
    from planner_service.api.settings import Settings
    from planner_service.planner import make_plan
    from planner_service.presets import CLUSTERS, MODELS
    from proto import Batch

    defaults = Settings()
    limit, margin = defaults.solver_time_limit_s, defaults.deadline_margin_s
    base = CLUSTERS[args.cluster]
    cluster = base.model_copy(update={"num_nodes": defaults.max_devices // base.devices_per_node})
    rng = np.random.default_rng(1)
    cases = []  # (label, strategy, num_stages or None, sequences)
    for strategy in ("greedy", "static", "flexsp", "infinipipe", "helix"):
        cases.append((f"{strategy}, P chosen", strategy, None, defaults.max_sequences))
    for stages in (8, 32):
        n = min(defaults.max_sequences, defaults.max_sequence_stages // stages)
        for strategy in ("greedy", "static", "helix"):
            cases.append((f"{strategy}, job P={stages}", strategy, stages, n))
    rows = []
    token = secrets.token_urlsafe(24)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="helix-limits-") as tmp:
        server = start_server(Path(tmp) / "limits.db", token, port, 1)
        try:
            with PlannerClient(url, token=token, retries=0, timeout=120.0) as client:
                for label, strategy, stages, n in cases:
                    lengths = [min(int(x), args.max_len) for x in sample_synthetic("github", n, rng)]
                    t0 = time.perf_counter()
                    try:
                        if stages is None:
                            body = {
                                "cluster": cluster.model_dump(mode="json"),
                                "model": args.model,
                                "strategy": strategy,
                                "batch": Batch.from_lengths(lengths).model_dump(),
                            }
                            plan = client.plan(body)
                        else:
                            job = client.create_job(cluster=cluster, model=args.model, strategy=strategy,
                                                    num_stages=stages)  # fmt: skip
                            t0 = time.perf_counter()
                            plan = client.plan_for_step(job.job_id, 0, lengths)
                        wall = time.perf_counter() - t0
                        status, planned_p = plan.solver.status.value, plan.pipeline.num_stages
                    except PlannerApiError as exc:
                        wall, status, planned_p = time.perf_counter() - t0, f"{exc.status} {exc.code}", None
                    gt0 = time.perf_counter()
                    make_plan(batch=Batch.from_lengths(lengths), cluster=cluster, model=MODELS[args.model],
                              strategy="greedy", num_stages=stages or planned_p)  # fmt: skip
                    greedy_s = time.perf_counter() - gt0
                    row = {
                        "case": label, "devices": cluster.num_devices, "sequences": n, "P": planned_p,
                        "wall_s": round(wall, 3), "status": status, "greedy_alone_s": round(greedy_s, 3),
                    }  # fmt: skip
                    print(json.dumps(row), flush=True)
                    rows.append(row)
        finally:
            stop_server(server)
    worst = max(r["wall_s"] for r in rows)
    worst_greedy = max(r["greedy_alone_s"] for r in rows)
    report = {"limit_s": limit, "margin_s": margin, "worst_wall_s": worst, "worst_greedy_s": worst_greedy,
              "setup": setup_of(args), "rows": rows}  # fmt: skip
    out = args.out.with_name("service_limits")
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Planner service at its size limits",
        "",
        f"One request at a time against `helix serve` (1 solve worker) on loopback ({os.cpu_count()} CPUs): "
        f"{cluster.num_devices} devices ({args.cluster} x {cluster.num_nodes} nodes, HELIX_MAX_DEVICES), "
        f"{args.model}, synthetic github lengths <= {args.max_len}; HELIX_MAX_SEQUENCES = {defaults.max_sequences}, "
        f"HELIX_MAX_SEQUENCE_STAGES = {defaults.max_sequence_stages}; time limit {limit:g} s, margin {margin:g} s. "
        "`greedy alone` is the greedy plan made in-process at the same size (what the margin must cover).",
        "",
        f"Worst request wall time: **{worst:.2f} s** (limit + margin = {limit + margin:g} s); "
        f"worst greedy alone: **{worst_greedy:.2f} s**.",
        "",
        "| case | devices | sequences | P | wall (s) | solver status | greedy alone (s) |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['devices']} | {r['sequences']} | {r['P']} | {r['wall_s']} | {r['status']} | "
            f"{r['greedy_alone_s']} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["load", "limits"], default="load")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="Duration of each phase.")
    parser.add_argument("--cluster", default="a800-80g-4x8")
    parser.add_argument("--model", default="llama2-7b")
    parser.add_argument("--strategy", default="greedy")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=32768)
    parser.add_argument("--max-solves", type=int, default=2, help="HELIX_MAX_CONCURRENT_SOLVES of the server.")
    parser.add_argument("--max-queued", type=int, default=4, help="HELIX_MAX_QUEUED_SOLVES of the server.")
    parser.add_argument("--out", type=Path, default=RESULTS / "service_load")
    args = parser.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--clients must be 1..{MAX_CLIENTS} and --seconds in (0, {MAX_SECONDS}]")
    return limits_main(args) if args.phase == "limits" else load_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
