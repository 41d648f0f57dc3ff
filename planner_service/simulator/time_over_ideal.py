"""Where a plan's simulated time over `ideal_s` goes: the same plan re-simulated with parts of the cost made free.

`ideal_s` leaves out communication, the data-parallel collectives, the per-call and per-op overheads, pipeline
bubbles, recompute and load imbalance. Each of the first three is measured here as the simulated time it costs
this plan: the plan simulated as it is, less the same plan simulated with only that part free (infinite
bandwidth, zero latency, zero overhead). The schedules are fixed, so making an op shorter never makes the plan
slower and each part is >= 0. The parts overlap (an all-to-all may hide behind a sync), so they need not add up;
what remains with all three free is the plan's compute and its pipeline structure: bubbles, recompute, imbalance
between lanes and SP degrees' efficiency.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from planner_service.cost_model.cost_model import CostModel
from planner_service.simulator.pipeline_simulator import simulate
from proto import Batch, Plan
from proto.cluster import MAX_BANDWIDTH

_FREE_COMMUNICATION: dict[str, Any] = {
    "alltoall_bw_intra": MAX_BANDWIDTH,
    "alltoall_bw_inter": MAX_BANDWIDTH,
    "alltoall_latency_intra_s": 0.0,
    "alltoall_latency_inter_s": 0.0,
    "p2p_bw_intra": MAX_BANDWIDTH,
    "p2p_bw_inter": MAX_BANDWIDTH,
    "p2p_latency_s": 0.0,
}
"""Ulysses all-to-alls and pipeline sends at no cost."""
_FREE_COLLECTIVES: dict[str, Any] = {
    "allreduce_bw_intra": MAX_BANDWIDTH,
    "allreduce_bw_inter": MAX_BANDWIDTH,
    "allreduce_latency_intra_s": 0.0,
    "allreduce_latency_inter_s": 0.0,
}
"""Data-parallel gradient reductions and ZeRO gathers at no cost."""
_FREE_OVERHEAD: dict[str, Any] = {"layer_overhead_s": 0.0, "op_overhead_s": 0.0}
"""No fixed cost per layer call or per pipeline op."""


@dataclass(frozen=True, slots=True)
class TimeOverIdeal:
    """A plan's simulated seconds and what each part of the cost adds to them (see the module docstring)."""

    iteration_s: float
    ideal_s: float
    communication_s: float
    """Simulated seconds the all-to-alls and sends cost (the plan as it is less the plan with them free)."""
    collectives_s: float
    """Simulated seconds the data-parallel collectives cost."""
    overhead_s: float
    """Simulated seconds the per-layer-call and per-op overheads cost."""
    structure_s: float
    """The plan simulated with all three free: compute, pipeline bubbles, recompute, imbalance."""

    def shares(self) -> dict[str, float]:
        """Each part over `ideal_s` (structure_s as a ratio: 1.0 means no bubbles, recompute or imbalance)."""
        ideal = self.ideal_s if self.ideal_s > 0 else float("nan")
        return {
            "x_ideal": self.iteration_s / ideal,
            "communication": self.communication_s / ideal,
            "collectives": self.collectives_s / ideal,
            "overhead": self.overhead_s / ideal,
            "structure_x_ideal": self.structure_s / ideal,
        }


def time_over_ideal(plan: Plan, batch: Batch, cost: CostModel) -> TimeOverIdeal:
    """Re-simulate `plan` on `batch` with `cost` made free part by part (four more simulations)."""

    def simulated(*free: dict[str, Any]) -> float:
        update = {k: v for part in free for k, v in part.items()}
        priced = replace(cost, profile=cost.profile.model_copy(update=update)) if update else cost
        return simulate(plan, batch, priced, record_events=False).predicted.iteration_s

    iteration = simulated()
    return TimeOverIdeal(
        iteration_s=iteration,
        ideal_s=cost.ideal_s(batch),
        communication_s=iteration - simulated(_FREE_COMMUNICATION),
        collectives_s=iteration - simulated(_FREE_COLLECTIVES),
        overhead_s=iteration - simulated(_FREE_OVERHEAD),
        structure_s=simulated(_FREE_COMMUNICATION, _FREE_COLLECTIVES, _FREE_OVERHEAD),
    )
