"""A lower bound on the *simulated* iteration time of every plan a dynamic strategy can build.

The lane ILP's bound is a bound for its own model, which leaves out what the simulator charges on top, so it
says little about the plan (a plan "0.5% from optimal" in the model was 60% slower in the simulator). This
bound holds for the simulator's prices instead, for any plan with pipeline degree P among `degrees`:

- every device of a stage block does its share of the batch's compute (device-time conservation over the
  cluster: `CostModel.ideal_s`, no per-call overhead, no communication);
- a sequence runs on one lane, whose s devices each pay its Ulysses all-to-alls: s x (the all-to-alls of its
  tokens) device-seconds per layer, forward and backward, at the smallest SP degree on which it fits memory
  at that P (the all-to-all device-time grows with s, so the smallest feasible s is the cheapest; s = 1
  pays none). Memory fit is `memory_fit.sequence_fits`, the planner's own test (sliced when P > 1), so the
  bound holds for the plans the planner builds;
- the bound for a set of pipeline degrees is the smallest over them.

Gradient sync, bubbles and recompute only add time, so they are left out: the bound is valid whatever the
simulator's model of them, and `gap` = (simulated - bound) / simulated is a true, if loose, optimality gap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from planner_service.context import PlanningContext, options_that_fit
from planner_service.layout.memory_fit import sequence_fits
from proto import PipelineSpec
from proto.topology import valid_sp_degrees

ALLTOALL_PROBE_TOKENS_PER_DEVICE = 8192
"""Tokens per device at which the all-to-all's per-token slope is measured (a whole multiple of every s)."""


def longest_fitting(ctx: PlanningContext, pipeline: PipelineSpec, sp_degree: int, *, sliced: bool, upto: int) -> int:
    """The longest sequence (at most `upto` tokens) that fits a lane of `sp_degree` (0: none); fit is monotone
    in the length, so a bisection finds it."""
    if not sequence_fits(ctx.cost, pipeline, 1, sp_degree, sliced=sliced):
        return 0
    if sequence_fits(ctx.cost, pipeline, upto, sp_degree, sliced=sliced):
        return upto
    lo, hi = 1, upto  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if sequence_fits(ctx.cost, pipeline, mid, sp_degree, sliced=sliced):
            lo = mid
        else:
            hi = mid
    return lo


def alltoall_device_s_per_token(ctx: PlanningContext, sp_degree: int) -> float:
    """Device-seconds of one layer's forward all-to-alls per token of a sequence on a lane of size s (all its s
    devices together), without per-call latency: a lower bound for any number of tokens."""
    s = sp_degree
    if s <= 1:
        return 0.0
    spans = s > ctx.cluster.devices_per_node
    x = ALLTOALL_PROBE_TOKENS_PER_DEVICE * s
    slope = (ctx.cost.alltoall_layer_s(2 * x, s, spans) - ctx.cost.alltoall_layer_s(x, s, spans)) / x
    return s * max(slope, 0.0)


def degree_bound(ctx: PlanningContext, num_stages: int, lengths: np.ndarray) -> float:
    """The bound for plans of pipeline degree `num_stages` (inf when some sequence fits no lane)."""
    pipeline = PipelineSpec.even(ctx.model.num_layers, num_stages)
    p_ctx = options_that_fit(ctx, pipeline)
    sliced = num_stages > 1
    longest = int(lengths.max())
    comm = np.full(len(lengths), math.inf)
    for s in reversed(valid_sp_degrees(ctx.model, p_ctx.cost.dp_size(pipeline))):  # smallest s last: it wins
        fits_upto = longest_fitting(p_ctx, pipeline, s, sliced=sliced, upto=longest)
        per_token = alltoall_device_s_per_token(p_ctx, s)
        comm = np.where(lengths <= fits_upto, per_token * lengths, comm)
    if not np.all(np.isfinite(comm)):
        return math.inf
    layers = ctx.model.num_layers
    return float(2 * layers * comm.sum()) / ctx.cluster.num_devices


def simulated_time_lower_bound(ctx: PlanningContext, degrees: Sequence[int]) -> float:
    """A lower bound on the simulated iteration time of any plan the planner builds at a P among `degrees`."""
    ideal = ctx.cost.ideal_s(ctx.batch)
    lengths = np.array(ctx.batch.lengths, dtype=np.float64)
    extra = min((degree_bound(ctx, p, lengths) for p in degrees), default=0.0)
    return ideal + (extra if math.isfinite(extra) else 0.0)


def gap_to(iteration_s: float, lower_bound_s: float | None) -> float | None:
    """(simulated - bound) / simulated, or None without a bound."""
    if lower_bound_s is None or iteration_s <= 0:
        return None
    return max(0.0, (iteration_s - lower_bound_s) / iteration_s)
