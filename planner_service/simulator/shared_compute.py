"""Devices that time-share one compute unit: when a device's unit-mates are done, it runs faster.

`CostProfile.devices_per_compute_unit` = k says the profile was measured with k contiguous devices on each compute
unit (CPU ranks pinned k to a core), all of them busy: its prices are those of a device getting 1/k of a unit. The
simulator runs every (lane, stage) at those prices until its last op ends. In fact, once only m of a unit's k
devices still have work, each gets 1/m of the unit and runs k/m times faster (processor sharing). On a P = 1 plan
of SP-1 lanes, the lane with the longest work finishes at the mean of its unit's lanes rather than at its own
length.

The model here is the fluid one. Each (lane, stage) is a job that needs its simulated finishing time of work and
holds its ranks until then. While a set of jobs runs, a unit with m of their ranks gives each of them the rate k/m.
A job that spans units (an SP group over two cores) advances at the slowest of its units' rates. A job is counted
as working from the step's start to its end, pipeline bubbles included, so the speed-up it gives its unit-mates is
if anything too small. What comes out is, per job, a monotone piecewise-linear map from simulated time to real
time, applied to the job's finish, its last backward op (the gradient reduction's window) and its Gantt events.

No rate exceeds k, so no job ends before 1/k of its simulated time. A unit still does at most k device-seconds of
simulated work per second, so the cluster-wide ideal stays a lower bound.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

FINISHED_EPS = 1e-12
"""Relative remaining work under which a job counts as finished (floating-point residue of the rate steps)."""


@dataclass(frozen=True, slots=True)
class TimeMap:
    """A monotone piecewise-linear map from a job's simulated time to real time (identity before its first
    breakpoint's end; the last segment extends beyond the job's finish at its final rate)."""

    simulated: tuple[float, ...]
    real: tuple[float, ...]

    def __call__(self, t: float) -> float:
        xs, ys = self.simulated, self.real
        if len(xs) < 2:
            return t
        i = min(max(bisect.bisect_right(xs, t) - 1, 0), len(xs) - 2)
        x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
        return y0 + (t - x0) * (y1 - y0) / (x1 - x0) if x1 > x0 else y1 + (t - x1)


IDENTITY = TimeMap((0.0,), (0.0,))


def shared_unit_maps(jobs: Sequence[tuple[float, Sequence[int]]], devices_per_unit: int) -> list[TimeMap]:
    """Per job (its simulated finishing time and its ranks), the map from simulated to real time when the ranks
    [u*k, (u+1)*k) share compute unit u (k = `devices_per_unit`) and each rank runs k/m times faster while m of
    its unit's ranks belong to unfinished jobs."""
    k = devices_per_unit
    if k < 1:
        raise ValueError(f"devices_per_unit must be at least 1, got {k}")
    maps = [IDENTITY] * len(jobs)
    if k == 1:
        return maps
    units = [[r // k for r in ranks] for _, ranks in jobs]
    progress = [0.0] * len(jobs)
    now = 0.0
    points: list[tuple[list[float], list[float]]] = [([0.0], [0.0]) for _ in jobs]
    running = {j for j, (finish, ranks) in enumerate(jobs) if finish > 0 and ranks}
    while running:
        load: dict[int, int] = {}
        for j in running:
            for u in units[j]:
                load[u] = load.get(u, 0) + 1
        rate = {j: min(k / load[u] for u in units[j]) for j in running}
        step = min((jobs[j][0] - progress[j]) / rate[j] for j in running)
        now += step
        done = set()
        for j in running:
            progress[j] += rate[j] * step
            finish = jobs[j][0]
            if finish - progress[j] <= FINISHED_EPS * max(finish, 1.0):
                progress[j] = finish
                done.add(j)
            points[j][0].append(progress[j])
            points[j][1].append(now)
        running -= done
    for j, (xs, ys) in enumerate(points):
        if len(xs) > 1:
            maps[j] = TimeMap(tuple(xs), tuple(ys))
    return maps
