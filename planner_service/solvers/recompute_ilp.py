"""Recompute per (stage, chunk): fewest recompute-seconds such that every point of the stage's
schedule fits memory.

For one (lane, stage) with chunks c and r_c in {0..L_p} recomputed layers:

    minimise    sum_c t_c * r_c                          t_c: forward seconds of one layer of chunk c
    subject to  sum_{c held at op k} (base_c + d_c * r_c) + const_k <= budget    for every op k

with base/d/const from `memory_timeline.StageMemory` (exactly what the simulator will predict).
Stages are independent (each has its own memory), so each is a small ILP. When no recompute is
needed the ILP is skipped; when even full recompute does not fit, the stage is infeasible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from planner_service.simulator.memory_timeline import StageMemory
from planner_service.solvers.integer_program import IntegerProgram, solve


@dataclass(frozen=True, slots=True)
class RecomputeResult:
    counts: tuple[int, ...]
    status: str
    """none-needed, optimal, feasible, infeasible, or greedy (solver gave no answer in time)."""
    deterministic_s: float = 0.0
    """CP-SAT deterministic time spent."""
    entries: int = 0
    """Entries of the program solved (0: none was), with `deterministic_s` what a work budget is charged."""


def greedy_recompute(memory: StageMemory, layer_s: Sequence[float], budget: float) -> tuple[int, ...] | None:
    """Raise recompute where it saves the most bytes per second until every op fits; None if impossible.

    One pass over the stage's ops with the held bytes kept up to date (a lane has hundreds of chunks at scale,
    so re-summing the held chunks at every op would be quadratic)."""
    counts = [0] * len(memory.base)
    held: set[int] = set()
    used = 0.0  # bytes of the held chunks at their current recompute counts
    for c, forward, const in zip(memory.op_chunks, memory.op_is_forward, memory.op_constant, strict=True):
        if forward:
            held.add(c)
            used += memory.base[c] + memory.per_layer[c] * counts[c]
        over = used + const - budget
        if over > 0:
            candidates = sorted(
                (h for h in held if memory.per_layer[h] < 0),
                key=lambda h: (layer_s[h] / -memory.per_layer[h], h),
            )
            for h in candidates:
                if over <= 0:
                    break
                take = min(memory.num_layers - counts[h], int(-(-over // -memory.per_layer[h])))
                counts[h] += take
                used += memory.per_layer[h] * take
                over += memory.per_layer[h] * take
            if over > 0:
                return None
        if not forward:
            held.discard(c)
            used -= memory.base[c] + memory.per_layer[c] * counts[c]
    return trim_recompute(memory, counts, layer_s, budget)


def trim_recompute(
    memory: StageMemory, counts: Sequence[int], layer_s: Sequence[float], budget: float
) -> tuple[int, ...]:
    """Give back the recompute the greedy did not need: a layer of chunk c can stop recomputing when every op that
    holds c has room for the bytes it then keeps. The greedy raises recompute at the first op over budget, before
    it sees the later ops; chunks are trimmed costliest per byte first, so the trim never raises a plan's time.

    A chunk is held from its forward op to its backward op, so its ops are one interval of the stage's order."""
    counts = list(counts)
    num_ops = len(memory.op_chunks)
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for k, (c, forward) in enumerate(zip(memory.op_chunks, memory.op_is_forward, strict=True)):
        if forward:
            first[c] = k
        else:
            last[c] = k
    held = [0.0] * num_ops  # bytes held at each op with the current counts
    for c in first:
        size = memory.base[c] + memory.per_layer[c] * counts[c]
        for k in range(first[c], last.get(c, num_ops - 1) + 1):
            held[k] += size
    slack = [budget - held[k] - memory.op_constant[k] for k in range(num_ops)]
    order = sorted(
        (c for c in first if counts[c] > 0 and memory.per_layer[c] < 0),
        key=lambda c: (-layer_s[c] / -memory.per_layer[c], c),
    )
    for c in order:
        span = range(first[c], last.get(c, num_ops - 1) + 1)
        room = min(slack[k] for k in span)
        give = min(counts[c], int(room // -memory.per_layer[c])) if room > 0 else 0
        if give > 0:
            counts[c] -= give
            for k in span:
                slack[k] += memory.per_layer[c] * give
    return tuple(counts)


def choose_recompute(
    memory: StageMemory,
    layer_s: Sequence[float],
    budget: float,
    *,
    backend: str = "cpsat",
    time_limit_s: float = 0.2,
    deterministic_s: float = math.inf,
) -> RecomputeResult:
    """Recompute counts for one (lane, stage); `layer_s[c]` is one layer's forward seconds of chunk c.

    `deterministic_s` bounds CP-SAT reproducibly; `time_limit_s` is the wall-clock safety net."""
    n = len(memory.base)
    zero = (0,) * n
    if memory.peak(zero) <= budget:
        return RecomputeResult(zero, "none-needed")
    full = (memory.num_layers,) * n
    if memory.peak(full) > budget:
        return RecomputeResult(full, "infeasible")
    greedy = greedy_recompute(memory, layer_s, budget)
    prog = IntegerProgram()
    r = [prog.add_var(f"r_{c}", 0, memory.num_layers) for c in range(n)]
    worst: dict[tuple[int, ...], float] = {}  # one row per distinct set of held chunks, at its worst op
    for held, const in zip(memory.held_at(), memory.op_constant, strict=True):
        worst[held] = max(worst.get(held, const), const)
    for held, const in worst.items():
        fixed = sum(memory.base[c] for c in held) + const
        if fixed > budget:
            prog.add_le({r[c]: memory.per_layer[c] for c in held if memory.per_layer[c] != 0}, budget - fixed)
    prog.objective = {r[c]: max(layer_s[c], 1e-12) for c in range(n)}
    if greedy is not None:
        prog.hint = {r[c]: v for c, v in enumerate(greedy)}
    sol = solve(prog, backend=backend, time_limit_s=time_limit_s, deterministic_s=deterministic_s)
    spent, entries = sol.deterministic_s, sol.entries
    if sol.status in ("optimal", "feasible"):
        counts = tuple(sol.values)
        if memory.peak(counts) <= budget * (1 + 1e-9):
            return RecomputeResult(counts, sol.status, spent, entries)
    if greedy is not None:
        return RecomputeResult(greedy, "greedy", spent, entries)
    return RecomputeResult(full, "greedy", spent, entries)
