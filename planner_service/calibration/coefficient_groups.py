"""Which `CostProfile` coefficients calibration moves together, and how a plan's predicted time splits over them.

One measured step time cannot tell a dozen coefficients apart, but a few groups with different physical causes
can be told apart over steps whose plans mix them differently (long sequences are attention-heavy, wide SP
lanes communication-heavy). Each group has one scale θ_g relative to the base profile: time coefficients are
multiplied by it, bandwidths divided by it, so θ_g > 1 means "that kind of work is slower than believed".

Why the split is exact: the simulated iteration time is piecewise linear and positively homogeneous of degree 1
in the group scales (scaling every time coefficient by λ scales every op, so the critical path, by λ), except
for the cluster's per-call collective latencies where the profile does not set its own. So, where the critical path does
not change, t(θ) = Σ_g θ_g·∂t/∂θ_g + fixed, and the partial derivatives — found by re-simulating the plan with
one group nudged — are the plan's predicted components. Activation memory is exactly linear in the memory
coefficients, so one scale φ covers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from planner_service.cost_model import CostModel
from planner_service.simulator.pipeline_simulator import simulate
from proto import Batch, CostProfile, Plan, Predicted

GROUPS = ("attention", "linear", "communication", "collectives")
"""attention: causal attention compute; linear: GEMMs, per-layer overhead, LM head; communication: Ulysses
all-to-alls and pipeline sends; collectives: data-parallel gradient reductions and ZeRO gathers."""

TIME_FIELDS: Mapping[str, tuple[tuple[str, int], ...]] = {
    "attention": (("attn_s_per_token2", 1),),
    "linear": (
        ("linear_s_per_token", 1),
        ("layer_overhead_s", 1),
        ("head_s_per_token", 1),
        ("deferred_layer_overhead_s", 1),
    ),
    "communication": (
        ("alltoall_bw_intra", -1),
        ("alltoall_bw_inter", -1),
        ("alltoall_latency_intra_s", 1),
        ("alltoall_latency_inter_s", 1),
        ("p2p_bw_intra", -1),
        ("p2p_bw_inter", -1),
        ("p2p_latency_s", 1),
    ),
    "collectives": (
        ("allreduce_bw_intra", -1),
        ("allreduce_bw_inter", -1),
        ("allreduce_latency_intra_s", 1),
        ("allreduce_latency_inter_s", 1),
    ),
}
"""Per group, (field, exponent): the field is multiplied by θ_g ** exponent (seconds up, bandwidths down)."""

MEMORY_FIELDS = (
    "activation_bytes_per_token_layer",
    "checkpoint_bytes_per_token_layer",
    "mlp_recompute_freed_bytes_per_token_layer",
    "kv_bytes_per_token_layer",
    "ulysses_extra_bytes_per_token_layer",
    "deferred_grad_bytes_per_token_layer",
    "deferred_input_bytes_per_token_layer",
    "head_activation_bytes_per_token",
)
"""Everything activation memory is made of; all scale by φ."""

FINITE_DIFFERENCE_STEP = 1e-3
"""Relative nudge of one group's scale when taking ∂t/∂θ_g (the time is piecewise linear: any small step is
exact away from a change of critical path)."""


def scale_profile(
    profile: CostProfile, scales: Mapping[str, float], memory_scale: float = 1.0, **labels: str
) -> CostProfile:
    """`profile` with each group's coefficients scaled by its θ and activation memory by φ (`labels` may set
    `name` and `source`)."""
    update: dict[str, object] = dict(labels)
    for group, theta in scales.items():
        assert theta > 0, f"scale of {group} must be positive, got {theta}"
        for field, exponent in TIME_FIELDS[group]:
            value = getattr(profile, field)
            if value is not None:  # an unset latency is the cluster's, which no profile scale reaches
                update[field] = value * theta**exponent
    if memory_scale != 1.0:
        assert memory_scale > 0, f"memory scale must be positive, got {memory_scale}"
        for field in MEMORY_FIELDS:
            update[field] = getattr(profile, field) * memory_scale
    return profile.model_copy(update=update)


@dataclass(frozen=True, slots=True)
class TimeComponents:
    """A plan's predicted iteration time at group scales θ, split over the groups."""

    predicted: Predicted
    """The simulation at θ (time and per-rank peak memory)."""
    rates: tuple[float, ...]
    """∂t/∂θ_g per group of `GROUPS` (seconds per unit of scale)."""
    fixed_s: float
    """t − Σ_g θ_g·∂t/∂θ_g: what no group scales (the cluster's collective latencies, the ops' fixed overheads)."""
    op_rate: float
    """∂t/∂op_overhead_s: how many pipeline ops' fixed overheads lie on the critical path (seconds per second)."""
    width_rates: tuple[tuple[int, float], ...] = ()
    """Per SP degree of the profile's `sp_degree_costs`, ∂t/∂ln(compute_scale): the seconds of the step's
    critical path that scale with that degree's compute (lanes of degrees between two measured ones share)."""


OP_OVERHEAD_STEP_S = 1e-4
"""Nudge of `CostProfile.op_overhead_s` when taking ∂t/∂op_overhead_s (the time is piecewise linear in it too)."""


def time_components(plan: Plan, batch: Batch, cost: CostModel, scales: Mapping[str, float]) -> TimeComponents:
    """Simulate `plan` under `cost.profile` scaled by `scales`, and once more per group nudged by
    `FINITE_DIFFERENCE_STEP` (and once with the op overhead nudged), to get the partial derivatives of the
    iteration time."""
    at = {g: scales.get(g, 1.0) for g in GROUPS}
    profile = scale_profile(cost.profile, at)
    predicted = simulate(plan, batch, replace(cost, profile=profile), record_events=False).predicted

    def slope(nudged: CostProfile, step: float) -> float:
        """(t under `nudged` − t) / `step`: the derivative along the nudge."""
        t = simulate(plan, batch, replace(cost, profile=nudged), record_events=False).predicted.iteration_s
        return max(t - predicted.iteration_s, 0.0) / step

    rates = [
        slope(
            scale_profile(cost.profile, {**at, group: at[group] * (1.0 + FINITE_DIFFERENCE_STEP)}),
            FINITE_DIFFERENCE_STEP * at[group],
        )
        for group in GROUPS
    ]
    op_rate = slope(
        profile.model_copy(update={"op_overhead_s": profile.op_overhead_s + OP_OVERHEAD_STEP_S}), OP_OVERHEAD_STEP_S
    )
    width_rates = []
    for i, entry in enumerate(profile.sp_degree_costs):
        costs = list(profile.sp_degree_costs)
        costs[i] = entry.model_copy(update={"compute_scale": entry.compute_scale * (1.0 + FINITE_DIFFERENCE_STEP)})
        width_rates.append(
            (
                entry.sp_degree,
                slope(profile.model_copy(update={"sp_degree_costs": tuple(costs)}), FINITE_DIFFERENCE_STEP),
            )
        )
    fixed = predicted.iteration_s - sum(at[g] * r for g, r in zip(GROUPS, rates, strict=True))
    return TimeComponents(
        predicted=predicted,
        rates=tuple(rates),
        fixed_s=max(fixed, 0.0),
        op_rate=op_rate,
        width_rates=tuple(width_rates),
    )
