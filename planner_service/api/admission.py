"""Admission control in front of the solve pool: a bounded, per-job fair queue.

Why: every solve holds a worker for up to its time limit plus the margin. Without a bound, a burst of
requests queues for minutes and every caller times out; with it, a request beyond the queue is refused at
once with 503 `busy` and `Retry-After`, and the caller (or its load balancer) tries later or elsewhere.

Why per key (per job): one job sending many steps at once must not starve the others. Each key has its
own FIFO and at most `max_queued_per_key` waiting requests; a freed worker goes to the keys in turn
(round-robin), not to the oldest request overall.

Runs on the event loop only (no locks): `slot(key)` is an async context manager that waits for a worker.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from planner_service.api.metrics import ServiceMetrics

RETRY_AFTER_MAX_S = 60
EWMA_WEIGHT = 0.2
"""Weight of the latest solve in the running mean that estimates `Retry-After`."""


class Busy(Exception):
    """The queue (or this key's share of it) is full."""

    def __init__(self, retry_after_s: int, reason: str) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s
        self.reason = reason


class AdmissionQueue:
    """At most `slots` holders at once; up to `max_queued` waiters, `max_queued_per_key` per key."""

    def __init__(
        self,
        *,
        slots: int,
        max_queued: int,
        max_queued_per_key: int,
        metrics: ServiceMetrics,
        expected_solve_s: float,
    ) -> None:
        self.slots = slots
        self.max_queued = max_queued
        self.max_queued_per_key = max_queued_per_key
        self.metrics = metrics
        self._running = 0
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._queued = 0
        self._mean_hold_s = expected_solve_s

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def running(self) -> int:
        return self._running

    def retry_after_s(self) -> int:
        """Seconds until a new request would likely get a worker: the queue ahead of it, drained by the workers."""
        rounds = (self._queued + self._running) / self.slots
        return max(1, min(RETRY_AFTER_MAX_S, math.ceil(rounds * self._mean_hold_s)))

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        """Hold one worker slot for the block; wait fairly for it, or raise `Busy` when the queue is full."""
        enqueued = time.perf_counter()
        if self._running < self.slots and self._queued == 0:
            self._running += 1
        else:
            waiting = self._waiting.get(key)
            if self._queued >= self.max_queued:
                self._reject("queue")
            if waiting is not None and len(waiting) >= self.max_queued_per_key:
                self._reject("job")
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(key, deque()).append(future)
            self._set_queued(self._queued + 1)
            try:
                await future  # the releasing holder hands its slot over (`_running` is unchanged)
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release()  # the slot was handed over just as this waiter gave up
                else:
                    self._drop_waiter(key, future)
                raise
        self.metrics.queue_wait.observe(time.perf_counter() - enqueued)
        self._publish()
        held = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - held
            self._mean_hold_s += EWMA_WEIGHT * (elapsed - self._mean_hold_s)
            self._release()

    def _reject(self, reason: str) -> None:
        self.metrics.rejected.labels(reason=reason).inc()
        what = "the solve queue is full" if reason == "queue" else "this job already has its share of the queue"
        raise Busy(self.retry_after_s(), f"{what} ({self._queued} waiting for {self.slots} workers)")

    def _drop_waiter(self, key: str, future: asyncio.Future[None]) -> None:
        waiting = self._waiting.get(key)
        if waiting is not None and future in waiting:
            waiting.remove(future)
            if not waiting:
                del self._waiting[key]
            self._set_queued(self._queued - 1)

    def _release(self) -> None:
        """Hand the slot to the next key in turn (round-robin over keys), or free it."""
        while self._waiting:
            key, waiting = next(iter(self._waiting.items()))
            future = waiting.popleft()
            if waiting:
                self._waiting.move_to_end(key)
            else:
                del self._waiting[key]
            self._set_queued(self._queued - 1)
            if not future.done():
                future.set_result(None)
                self._publish()
                return
        self._running -= 1
        self._publish()

    def _set_queued(self, value: int) -> None:
        self._queued = value
        self.metrics.queue_length.set(value)

    def _publish(self) -> None:
        self.metrics.solves_in_flight.set(self._running)
