"""How much work one planning call may do: deterministic work units first, the wall clock only as a safety net.

A wall-clock limit alone makes plans depend on the machine's load: a busy machine stops a search earlier and
returns another plan for the same input. So every search step is charged in *work units* computed from what
it does (ops simulated, lanes built, CP-SAT's deterministic time), never from how long it took, and a call's
unit budget is a fixed function of its `time_limit_s`. The same input then gives the same plan on an idle or
a loaded machine as long as the units run out first. The wall clock stays as a safety net: it stops a search
that would overrun the caller's limit on a machine far slower (or far busier) than the reference one, at the
price of determinism, which the plan's solver message then says.

`WORK_UNITS_PER_SECOND` is the reference machine's rate (one unit is about a millisecond of single-core
work here); `bench/planner_latency.py` measures how the two budgets meet on a real machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]
"""Seconds from an arbitrary origin (`time.perf_counter`; tests inject a simulated clock)."""

WORK_UNITS_PER_SECOND = 1000.0
"""Work units per second of the reference machine (2-core development VM, one core per planning call):
the unit prices below are measured in milliseconds there."""
SEARCH_SHARE = 0.5
"""Share of the time limit turned into work units at the reference rate. The rest absorbs the finishing steps
(validation, plan id), the spread between unit prices and real costs, and a machine up to ~1.7x slower than
the reference (another process on a core) before the safety net (`WALL_SHARE`) has to decide anything."""
WALL_SHARE = 0.85
"""Share of the time limit after which the wall-clock safety net stops every search step that may be skipped."""
FINISH_RESERVE_S_PER_SEQUENCE = 20e-6
"""Wall seconds kept per sequence of the batch for validating and hashing the final plan (measured: ~12 us per
sequence for `validate_plan` + `with_id` at 16384 sequences on 2048 devices)."""

# ---- unit prices (reference-machine milliseconds, measured with bench/planner_latency.py's profile) ------
UNITS_PER_SIMULATION = 0.09
"""One simulation call's fixed cost: the plan object, its header, the ideal time (prices in this block were
re-measured with the collector paused, `gc_pause`, by least squares over every simulation and lane build of
helix's calls on every fourth `plan_quality` configuration: 87 us per call, 8.8 us per lane, 1.0 us per
sequence and 4.8 us per op; lane builds 5.7 us per op and 6.9 us per sequence, with no fixed cost. The old single
prices, 6 us per simulated op and 20 us per built op, left a whole-plan check underpriced and made the builds
helix must make, e.g. the chunkings of infinipipe's candidates, use up the improvement phase's units)."""
UNITS_PER_SIMULATED_LANE = 0.009
"""One lane of a simulation call, on top of its ops."""
UNITS_PER_SIMULATED_SEQUENCE = 0.001
"""One sequence of the batch a simulation call prices."""
UNITS_PER_SIMULATED_OP = 0.005
"""One F or B op of one (lane, stage) replayed by the simulator, with its memory timeline."""
UNITS_PER_BUILT_OP = 0.006
"""One op of a lane built from scratch: chunking, schedule, recompute choice and the pydantic objects."""
UNITS_PER_BUILT_SEQUENCE = 0.007
"""One sequence of a lane built from scratch (its chunking and the chunks' pydantic objects)."""
UNITS_PER_SEQUENCE_PASS = 0.004
"""One sequence touched by a linear pass (packing, bucketing, an estimate)."""
UNITS_PER_LANE_OP = 0.002
"""One op of a lane whose chunks are already made: its schedule and pydantic objects (static, greedy)."""
UNITS_PER_SOLVER_DETERMINISTIC_S = 1000.0
"""CP-SAT's deterministic time is calibrated to about one second of one core."""
UNITS_PER_SOLVER_CALL = 1.0
"""One solver call's fixed cost (model objects, CP-SAT start-up), whatever its search takes."""
UNITS_PER_PROGRAM_ENTRY = 0.02
"""One variable or coefficient of a program: building it in Python and presolving it (measured ~20 us)."""
UNITS_PER_BOUND_DEGREE = 5.0
"""The lower bound's fixed work per pipeline degree: memory-fit bisections per ZeRO stage and SP degree
(measured 9-36 ms for 5-6 degrees at 16-64 devices, `lower_bound.simulated_time_lower_bound`)."""
UNITS_PER_BOUND_SEQUENCE = 0.0015
"""The lower bound's work per sequence and pipeline degree (forced recompute and all-to-all trades; measured
5.5-8.4 us per sequence per degree at 16384 sequences, llama2-7b and gpt-30b on 2048 devices)."""


def solver_units(deterministic_s: float, calls: int, entries: int) -> float:
    """What solver calls cost in units: their deterministic search time plus building and presolving."""
    return (
        deterministic_s * UNITS_PER_SOLVER_DETERMINISTIC_S
        + calls * UNITS_PER_SOLVER_CALL
        + entries * UNITS_PER_PROGRAM_ENTRY
    )


@dataclass(kw_only=True)
class PlanningBudget:
    """The work one planning call (or one phase of it) may still do.

    `units` is the deterministic budget; `wall_end` the safety net on `clock`. A child budget (`child`)
    charges its parent too, so phases share one account and one safety net.
    """

    units: float
    """Deterministic work units this budget may spend."""
    wall_end: float
    """Clock reading after which skippable steps stop (the safety net)."""
    clock: Clock = time.perf_counter
    spent: float = 0.0
    parent: PlanningBudget | None = None
    safety_tripped: bool = field(default=False)
    """Set when the wall clock stopped a step the units would have allowed (the plan may then depend on load)."""
    units_ran_out: bool = field(default=False)
    """Set when the units stopped a step (a deterministic stop: a longer limit might find a better plan)."""
    started: float | None = None
    """Clock reading when the call began (default: at creation); the observed seconds per unit since then
    predict whether a step can end before the safety net."""

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.parent.started if self.parent is not None else self.clock()

    @classmethod
    def for_limit(
        cls,
        time_limit_s: float,
        *,
        num_sequences: int = 0,
        clock: Clock = time.perf_counter,
        units_per_second: float = WORK_UNITS_PER_SECOND,
    ) -> PlanningBudget:
        """The budget of a planning call limited to `time_limit_s` (its wall time, validation included)."""
        start = clock()
        reserve = FINISH_RESERVE_S_PER_SEQUENCE * num_sequences
        wall = max(0.0, time_limit_s * WALL_SHARE - reserve)
        return cls(units=time_limit_s * SEARCH_SHARE * units_per_second, wall_end=start + wall, clock=clock)

    @classmethod
    def units_only(cls, time_limit_s: float, *, clock: Clock = time.perf_counter) -> PlanningBudget:
        """The units of `time_limit_s` with no wall-clock net: what the planner decides on the reference machine,
        whatever this one's load (benchmarks of plan quality; never for a caller that needs the bound)."""
        budget = cls.for_limit(time_limit_s, clock=clock)
        budget.wall_end = math.inf
        return budget

    # ---- spending ---------------------------------------------------------------------------------------
    def charge(self, units: float) -> None:
        self.spent += units
        if self.parent is not None:
            self.parent.charge(units)

    def units_left(self) -> float:
        own = self.units - self.spent
        return min(own, self.parent.units_left()) if self.parent is not None else own

    def wall_left(self) -> float:
        """Seconds until the safety net (never negative)."""
        return max(0.0, self.wall_end - self.clock())

    def root(self) -> PlanningBudget:
        return self.parent.root() if self.parent is not None else self

    def seconds_for(self, units: float) -> float:
        """Predicted wall seconds of `units` on this machine now: the reference rate, or the slower rate this call
        has seen so far (a loaded machine)."""
        root = self.root()
        assert root.started is not None
        seen = (self.clock() - root.started) / root.spent if root.spent > 0 else 0.0
        return units * max(1.0 / WORK_UNITS_PER_SECOND, seen)

    def affordable(self, units: float) -> bool:
        """Whether a step of `units` is predicted to end before the safety net (a wall-clock decision)."""
        if self.seconds_for(units) <= self.wall_left():
            return True
        self._trip()
        return False

    def out_of_units(self) -> bool:
        return self.units_left() <= 0.0

    def out_of_time(self) -> bool:
        """The safety net: past the wall-clock end (records that it decided something)."""
        if self.clock() >= self.wall_end:
            self._trip()
            return True
        return False

    def exhausted(self) -> bool:
        """No skippable step may start: the units are spent, or the safety net has tripped."""
        if self.out_of_units():
            budget: PlanningBudget | None = self
            while budget is not None:
                budget.units_ran_out = True
                budget = budget.parent
            return True
        return self.out_of_time()

    def stopped_by_units(self) -> bool:
        """Whether the units stopped some step of this budget or of a phase of it."""
        return self.units_ran_out

    def _trip(self) -> None:
        self.safety_tripped = True
        if self.parent is not None:
            self.parent._trip()

    def tripped(self) -> bool:
        return self.safety_tripped or (self.parent is not None and self.parent.tripped())

    # ---- phases -------------------------------------------------------------------------------------------
    def child(self, share: float) -> PlanningBudget:
        """A phase that may use `share` of the units left now (and no more than the parent has later)."""
        units = max(0.0, self.units_left()) * share
        return PlanningBudget(units=units, wall_end=self.wall_end, clock=self.clock, parent=self)

    def solver_limits(self, share: float = 1.0) -> SolverLimits:
        """Limits for one solver call using `share` of the units left: deterministic time, wall as a net."""
        units = max(0.0, self.units_left()) * share
        return SolverLimits(
            deterministic_s=max(units / UNITS_PER_SOLVER_DETERMINISTIC_S, MIN_SOLVER_DETERMINISTIC_S),
            wall_s=max(self.wall_left(), MIN_SOLVER_WALL_S),
        )


MIN_SOLVER_DETERMINISTIC_S = 0.005
"""Smallest deterministic time a solver call gets (presolve of the small lane and recompute programs)."""
MIN_SOLVER_WALL_S = 0.01
"""Smallest wall-clock limit a solver call gets (a call that cannot start is not made: see `exhausted`)."""


@dataclass(frozen=True, slots=True)
class SolverLimits:
    """One solver call's budget: CP-SAT stops at `deterministic_s` (reproducible), every backend at `wall_s`."""

    deterministic_s: float
    wall_s: float

    @classmethod
    def wall_only(cls, seconds: float) -> SolverLimits:
        """A wall-clock limit with no deterministic cap (tools and tests that time one solve)."""
        return cls(deterministic_s=math.inf, wall_s=seconds)


def simulation_units(num_lanes: int, num_ops: int, num_sequences: int) -> float:
    """What one simulation call costs in units."""
    return (
        UNITS_PER_SIMULATION
        + num_lanes * UNITS_PER_SIMULATED_LANE
        + num_ops * UNITS_PER_SIMULATED_OP
        + num_sequences * UNITS_PER_SIMULATED_SEQUENCE
    )
