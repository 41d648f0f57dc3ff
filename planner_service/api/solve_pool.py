"""Solve worker processes with a hard deadline: the service's safety net around the planner library.

Why processes: planning is CPU-bound Python (solvers, simulation). In a thread it holds the GIL against the
event loop and cannot be stopped; a strategy that ignores its time limit would occupy the service for
minutes. A worker process can be abandoned at the deadline: it is killed and replaced, and the request is
answered with the provisional (greedy) result the worker sent before it started the strategy.

Workers fork from multiprocessing's fork server, which imports the planner once, so a replacement starts
in milliseconds. A worker is also replaced after `max_tasks` tasks, which bounds the memory a long-lived
process can accumulate.

`run` is blocking (one call per busy worker, from the service's waiter threads); the admission queue in
front of it never lets more calls in than there are workers.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from planner_service.errors import InfeasibleWorkload, PlanningError
from proto import PlanValidationError

log = logging.getLogger(__name__)

R = TypeVar("R")
PRELOAD = ["planner_service.api.solve_tasks", "planner_service.planner"]
"""Imported once by the fork server, so workers start with the planner loaded."""
STOP_GRACE_S = 2.0
"""How long a retiring worker may take to exit before it is killed."""


@dataclass(frozen=True, slots=True)
class SolveDeadline:
    """When a running solve is abandoned (monotonic seconds).

    `abandon_at`: the strategy is given up for the provisional result (limit + a quarter of the margin);
    `give_up_at`: with no result at all, the request fails (limit + three quarters of the margin). The last
    quarter of the margin is left for storing and sending the plan.
    """

    abandon_at: float
    give_up_at: float

    @classmethod
    def starting_now(cls, time_limit_s: float, margin_s: float) -> SolveDeadline:
        now = time.monotonic()
        return cls(abandon_at=now + time_limit_s + margin_s / 4, give_up_at=now + time_limit_s + 0.75 * margin_s)


@dataclass(frozen=True, slots=True)
class SolveOutcome(Generic[R]):
    """A task's result; `abandoned` says why it is the provisional one ('deadline', 'crash') or is ''."""

    result: R
    abandoned: str = ""


class SolveTimeout(Exception):
    """No result at all (not even the provisional one) before the deadline."""


class SolveCrashed(Exception):
    """The worker died (or the task failed inside it) without a usable result."""


def _worker_main(conn: Connection) -> None:
    """A worker's loop: receive a task, send its provisional results and then its final result or error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the service's to handle

    def emit(payload: Any) -> None:
        conn.send(("provisional", payload))

    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            conn.send(("final", task.run(emit)))
        except PlanValidationError as exc:  # the planner built an invalid plan: a bug, not the caller's fault
            conn.send(("internal", f"PlanValidationError: {exc}"))
        except PlanningError as exc:
            conn.send(("planning", (str(exc), exc.field, isinstance(exc, InfeasibleWorkload))))
        except ValidationError as exc:  # e.g. a cost profile derived from the specs falls out of its bounds
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            message = f"the cost profile derived from the cluster and model is out of range ({where}: {first['msg']})"
            conn.send(("planning", (message, "cluster", False)))
        except ValueError as exc:  # an input combination the planner rejects without a PlanningError
            conn.send(("planning", (" ".join(str(exc).split()), None, False)))
        except Exception as exc:  # reported to the service, which logs it
            conn.send(("internal", f"{type(exc).__name__}: {exc}"))


class _Worker:
    def __init__(self, ctx: Any) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.process: BaseProcess = ctx.Process(target=_worker_main, args=(child,), daemon=True, name="helix-solve")
        self.process.start()
        child.close()
        self.conn: Connection = parent
        self.tasks = 0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=STOP_GRACE_S)
        self.conn.close()

    def retire(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(timeout=STOP_GRACE_S)
        self.kill()


class SolvePool:
    """`size` worker processes; `run(task, deadline)` executes one task on an idle worker."""

    def __init__(self, size: int, *, max_tasks: int = 100) -> None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        self._ctx = ctx
        self.size = size
        self.max_tasks = max_tasks
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.kills = 0
        for _ in range(size):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Worker:
        worker = _Worker(self._ctx)
        with self._lock:
            self._all.add(worker)
        return worker

    def _discard(self, worker: _Worker, *, kill: bool) -> None:
        with self._lock:
            self._all.discard(worker)
            closed = self._closed
        if kill:
            worker.kill()
        else:
            worker.retire()
        if not closed:
            self._idle.put(self._spawn())

    def _checkin(self, worker: _Worker) -> None:
        worker.tasks += 1
        if worker.tasks >= self.max_tasks:
            self._discard(worker, kill=False)
        else:
            self._idle.put(worker)

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._all if w.process.pid is not None]

    def run(self, task: Any, deadline: SolveDeadline) -> SolveOutcome[Any]:
        """Run `task` on an idle worker; abandon it at the deadline (the worker is killed and replaced)."""
        worker = self._idle.get()
        try:
            worker.conn.send(task)
        except Exception:
            self._discard(worker, kill=True)
            raise
        provisional: Any = None
        while True:
            now = time.monotonic()
            until = deadline.abandon_at if provisional is not None else deadline.give_up_at
            if now >= until or not worker.conn.poll(until - now):
                self.kills += 1
                log.warning("a solve overran its deadline; its worker (pid %s) is killed", worker.process.pid)
                self._discard(worker, kill=True)
                if provisional is None:
                    raise SolveTimeout()
                return SolveOutcome(provisional, abandoned="deadline")
            try:
                kind, payload = worker.conn.recv()
            except (EOFError, OSError):
                self._discard(worker, kill=True)
                if provisional is None:
                    raise SolveCrashed("the solve worker died") from None
                return SolveOutcome(provisional, abandoned="crash")
            if kind == "provisional":
                provisional = payload
                continue
            self._checkin(worker)
            if kind == "final":
                return SolveOutcome(payload)
            if kind == "planning":
                message, field, infeasible = payload
                raise (InfeasibleWorkload if infeasible else PlanningError)(message, field=field)
            raise SolveCrashed(str(payload))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
        for worker in workers:
            worker.kill()
