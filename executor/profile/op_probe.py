"""The per-op overhead probe on the job's ranks: the packed and the split step of `op_overhead_probe`, timed.

Both steps run through `step_timing.time_plans` (whole training steps, round-robin, the slowest rank's time), on
the probe's model (the job's model with one layer per stage), so what differs between them is the number of ops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from executor.profile.grid import ProfileSettings
from executor.profile.step_timing import PlanCase, StepTimingSettings, time_plans
from executor.profile.timing import summarize
from proto.cluster import ClusterSpec
from proto.model import ModelSpec

if TYPE_CHECKING:
    from planner_service.cost_model.profile_measurements import OpProbeTiming

PROBE_REPEATS = 5
"""Timed steps of each probe plan at least (one step is short: more repeats steady the median)."""


def time_op_probe(cluster: ClusterSpec, model: ModelSpec, settings: ProfileSettings) -> OpProbeTiming | None:
    """Time both probe steps (collective: call on every rank); rank 0 gets the row."""
    from planner_service.cost_model import CostModel
    from planner_service.cost_model.op_overhead_probe import probe_plans

    preset = CostModel.from_specs(cluster, model).profile  # the plans' predictions are not used here
    probe, (packed, split) = probe_plans(cluster, model, preset)
    batch = probe.batch(cluster)
    cases = [PlanCase(key="packed", batch=batch, plan=packed), PlanCase(key="split", batch=batch, plan=split)]
    timing = StepTimingSettings(
        warmup=max(settings.warmup, 1),
        repeats=max(settings.repeats, PROBE_REPEATS),
        dtype=settings.dtype,
        device=settings.device,
        attention_backend=settings.attention_backend,
        seed=settings.seed,
        pin_cores=settings.pin_cores,
    )
    results = time_plans(cluster, probe.model, cases, timing)
    if results is None:
        return None
    packed_s, split_s = (summarize(list(r.seconds), settings.statistic) for r in results)
    return probe.timing(packed_s, split_s)
