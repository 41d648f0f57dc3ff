"""Picklable stand-ins for `make_plan` that the service's worker processes run: they hold, count, hang or
crash solves. State crosses the process boundary through files in a directory the test owns (a worker is
another process, so threading events and counters in the test would not be seen)."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner_service.planner import make_plan
from proto import Plan

HANG_GUARD_S = 120.0
"""Only stops a broken build from hanging the suite; nothing here is timed."""


@dataclass(frozen=True)
class GatedSolve:
    """Counts the calls for `strategy` (all strategies when None) and holds each until `release()`."""

    folder: str
    strategy: str | None = None

    def _matches(self, kwargs: dict[str, Any]) -> bool:
        return self.strategy is None or kwargs["strategy"] == self.strategy

    def __call__(self, **kwargs: Any) -> Plan:
        if not self._matches(kwargs):
            return make_plan(**kwargs)
        token = uuid.uuid4().hex
        # the name orders starts across worker processes (one system-wide monotonic clock) and says which step
        (
            Path(self.folder)
            / f"started-{time.monotonic_ns():020d}-{kwargs.get('job_id')}-{kwargs.get('step')}-{token}"
        ).touch()
        try:
            give_up = time.monotonic() + HANG_GUARD_S
            while not (Path(self.folder) / "release").exists():
                assert time.monotonic() < give_up, "the test never released the solve"
                time.sleep(0.005)
            return make_plan(**kwargs)
        finally:
            (Path(self.folder) / f"finished-{token}").touch()

    def release(self) -> None:
        (Path(self.folder) / "release").touch()

    def hold(self) -> None:
        (Path(self.folder) / "release").unlink(missing_ok=True)

    def start_order(self) -> list[tuple[str, int]]:
        """(job_id, step) of every held solve, in the order the solves started."""
        names = sorted(p.name for p in Path(self.folder).glob("started-*"))
        return [(name.split("-")[2], int(name.split("-")[3])) for name in names]

    @property
    def calls(self) -> int:
        return len(list(Path(self.folder).glob("started-*")))

    @property
    def running(self) -> int:
        return self.calls - len(list(Path(self.folder).glob("finished-*")))


@dataclass(frozen=True)
class HangingSolve:
    """Never returns for the strategies it hangs (until its worker is killed); records its pid per call.

    `hang_greedy=False` lets the greedy fallback through, as a strategy that ignores its time limit would."""

    folder: str
    hang_greedy: bool = False

    def __call__(self, **kwargs: Any) -> Plan:
        if kwargs["strategy"] == "greedy" and not self.hang_greedy:
            return make_plan(**kwargs)
        (Path(self.folder) / f"hanging-{os.getpid()}").touch()
        while True:
            time.sleep(1.0)

    def pids(self) -> list[int]:
        return [int(p.name.split("-")[1]) for p in Path(self.folder).glob("hanging-*")]


def alive(pid: int) -> bool:
    """Whether a process exists (and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class CrashingSolve:
    """Kills its own worker process in the strategy (as a segfault or the OOM killer would); the greedy
    fallback gets through."""

    def __call__(self, **kwargs: Any) -> Plan:
        if kwargs["strategy"] == "greedy":
            return make_plan(**kwargs)
        os._exit(3)
