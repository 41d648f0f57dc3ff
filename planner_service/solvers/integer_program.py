"""A small backend-neutral integer program and its solution, solved by OR-Tools CP-SAT or PuLP.

The planner's models are written once against `IntegerProgram` and solved by any backend, so
"all backends agree" is testable and a backend is a command-line choice (`--solver`).

Budgets: `deterministic_s` caps CP-SAT's deterministic time (one worker, fixed seed), so the same program gets
the same answer on an idle or a busy machine; `time_limit_s` is the wall-clock safety net for every backend.
CBC and HiGHS have no deterministic limit through PuLP: with them only the wall clock bounds a solve, and a
solve cut by it can depend on the machine's load.

CP-SAT only accepts integer coefficients: each `<=` row with fractional coefficients is scaled
and rounded *conservatively* (left-hand coefficients of non-negative variables up, the right-hand
side down), so a CP-SAT solution is always feasible for the original row. PuLP solves the rows
as written.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

from ortools.sat.python import cp_model  # imported with the planner: its ~0.3 s import must not eat a limit

BACKENDS = ("cpsat", "pulp-cbc", "pulp-highs")
Status = Literal["optimal", "feasible", "infeasible", "unknown"]
SCALE_DIGITS = 6
"""Significant digits kept when CP-SAT rows are scaled to integers (relative error <= 1e-6)."""
DETERMINISTIC_SEED = 0
"""Fixed random seed for every backend: the same program always gives the same solution."""


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    lower: int
    upper: int


@dataclass(frozen=True, slots=True)
class Row:
    """sum(coef * var) <= rhs (or == rhs when `equality`)."""

    coefs: tuple[tuple[int, float], ...]
    rhs: float
    equality: bool = False


@dataclass(slots=True)
class IntegerProgram:
    """Minimise sum(objective) over non-negative integer variables subject to rows."""

    variables: list[Variable] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    objective: dict[int, float] = field(default_factory=dict)
    hint: dict[int, int] = field(default_factory=dict)

    def add_var(self, name: str, lower: int, upper: int) -> int:
        assert 0 <= lower <= upper, f"variable {name}: bounds [{lower}, {upper}] must be non-negative and ordered"
        self.variables.append(Variable(name, lower, upper))
        return len(self.variables) - 1

    def add_le(self, coefs: dict[int, float], rhs: float) -> None:
        self.rows.append(Row(tuple(coefs.items()), rhs))

    def add_eq(self, coefs: dict[int, float], rhs: float) -> None:
        self.rows.append(Row(tuple(coefs.items()), rhs, equality=True))


@dataclass(frozen=True, slots=True)
class Solution:
    status: Status
    values: tuple[int, ...]
    objective: float | None
    bound: float | None
    solve_s: float
    backend: str
    deterministic_s: float = 0.0
    """CP-SAT's deterministic time spent (0 for the PuLP backends)."""
    entries: int = 0
    """Variables, coefficients and objective terms of the program: with `deterministic_s`, what the solve costs
    (building the model and presolve grow with it even when the search itself is instant)."""


def solve(program: IntegerProgram, *, backend: str, time_limit_s: float, deterministic_s: float = math.inf) -> Solution:
    """Solve with `backend` within `deterministic_s` (CP-SAT) and `time_limit_s` wall seconds (every backend)."""
    if backend == "cpsat":
        solution = _solve_cpsat(program, time_limit_s, deterministic_s)
    elif backend in ("pulp-cbc", "pulp-highs"):
        solution = _solve_pulp(program, backend, time_limit_s)
    else:
        raise ValueError(f"unknown solver backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    entries = len(program.variables) + sum(len(row.coefs) for row in program.rows) + len(program.objective)
    return replace(solution, entries=entries)


def _scaled_row(row: Row) -> tuple[list[tuple[int, int]], int]:
    biggest = max([abs(c) for _, c in row.coefs] + [abs(row.rhs), 1e-300])
    if all(float(c).is_integer() for _, c in row.coefs) and float(row.rhs).is_integer():
        return [(v, int(c)) for v, c in row.coefs], int(row.rhs)
    assert not row.equality, "fractional equality rows are not supported by the CP-SAT backend"
    factor = 10 ** (SCALE_DIGITS - math.floor(math.log10(biggest)))
    coefs = [(v, math.ceil(c * factor)) for v, c in row.coefs]
    return coefs, math.floor(row.rhs * factor)


def _solve_cpsat(program: IntegerProgram, time_limit_s: float, deterministic_s: float) -> Solution:
    started = time.perf_counter()
    model = cp_model.CpModel()
    xs = [model.new_int_var(v.lower, v.upper, v.name) for v in program.variables]
    for row in program.rows:
        coefs, rhs = _scaled_row(row)
        expr = sum(c * xs[v] for v, c in coefs)
        model.add(expr == rhs) if row.equality else model.add(expr <= rhs)
    if program.objective:
        obj_scale = 10 ** (SCALE_DIGITS - math.floor(math.log10(max(abs(c) for c in program.objective.values()))))
        model.minimize(sum(round(c * obj_scale) * xs[v] for v, c in program.objective.items()))
    for v, value in program.hint.items():
        model.add_hint(xs[v], value)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(time_limit_s, 0.01)
    if math.isfinite(deterministic_s):
        solver.parameters.max_deterministic_time = max(deterministic_s, 1e-3)
    solver.parameters.num_workers = 1  # deterministic and fair to a 2-core machine
    solver.parameters.random_seed = DETERMINISTIC_SEED
    code = solver.solve(model)
    statuses: dict[cp_model.CpSolverStatus, Status] = {
        cp_model.OPTIMAL: "optimal",
        cp_model.FEASIBLE: "feasible",
        cp_model.INFEASIBLE: "infeasible",
    }
    status = statuses.get(code, "unknown")
    if status in ("optimal", "feasible"):
        values = tuple(int(solver.value(x)) for x in xs)
        objective = sum(c * values[v] for v, c in program.objective.items()) if program.objective else 0.0
        bound = solver.best_objective_bound / obj_scale if program.objective else 0.0
    else:
        values, objective, bound = (), None, None
    return Solution(
        status, values, objective, bound, time.perf_counter() - started, "cpsat", float(solver.deterministic_time)
    )


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null (native solver banners bypass sys.stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _solve_pulp(program: IntegerProgram, backend: str, time_limit_s: float) -> Solution:
    import pulp

    started = time.perf_counter()
    prob = pulp.LpProblem("helix", pulp.LpMinimize)
    if hasattr(prob, "add_variable"):  # PuLP >= 3.3: variables belong to their model (the 4.0 API)
        xs = [
            prob.add_variable(f"x{i}", lowBound=v.lower, upBound=v.upper, cat=pulp.LpInteger)
            for i, v in enumerate(program.variables)
        ]
    else:
        xs = [
            pulp.LpVariable(f"x{i}", lowBound=v.lower, upBound=v.upper, cat=pulp.LpInteger)
            for i, v in enumerate(program.variables)
        ]
    prob += pulp.lpSum(c * xs[v] for v, c in program.objective.items()) if program.objective else pulp.lpSum([])
    for i, row in enumerate(program.rows):
        expr = pulp.lpSum(c * xs[v] for v, c in row.coefs)
        prob += (expr == row.rhs) if row.equality else (expr <= row.rhs), f"r{i}"
    limit = max(time_limit_s, 0.05)
    if backend == "pulp-cbc":
        with warnings.catch_warnings():
            # PuLP 3.x deprecates its bundled CBC for 4.0 (COIN_CMD with a separately installed CBC); the bundled
            # binary is what a plain `pip install pulp` has, so it stays until the pin moves to 4 (pyproject: <4).
            warnings.filterwarnings("ignore", message="PULP_CBC_CMD is deprecated", category=DeprecationWarning)
            solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=limit, options=[f"randomSeed {DETERMINISTIC_SEED + 1}"])
    else:
        solver = pulp.HiGHS(msg=False, timeLimit=limit, random_seed=DETERMINISTIC_SEED)
    with _stdout_silenced():  # HiGHS prints a banner on stdout even with msg=False
        prob.solve(solver)
    # PuLP reports "Optimal" after a time-limit stop; the solution status tells the truth.
    sol = pulp.LpSolution.get(prob.sol_status, "")
    lp_status = pulp.LpStatus.get(prob.status, "")
    if lp_status == "Infeasible" or sol == "Infeasible":
        return Solution("infeasible", (), None, None, time.perf_counter() - started, backend)
    if sol not in ("Optimal Solution Found", "Solution Found"):
        return Solution("unknown", (), None, None, time.perf_counter() - started, backend)
    values = tuple(round(x.value() or 0) for x in xs)
    objective = sum(c * values[v] for v, c in program.objective.items()) if program.objective else 0.0
    status: Status = "optimal" if sol == "Optimal Solution Found" else "feasible"
    return Solution(
        status, values, objective, objective if status == "optimal" else None, time.perf_counter() - started, backend
    )
