"""Fit `CostProfile` coefficients to `helix profile` measurements by least squares, and say how well each fits.

Each fit is the cost model's own formula (`compute_model`, `comm_model`) solved for its coefficients:

1. layer forward  t_f = a2·P + a1·T + b                    (P = Σ((C+L)^2 − C^2), T tokens)   -> a2, a1, b
2. layer backward t_b = k_attn·(a2·P) + k_lin·(a1·T + b)                                     -> k_attn, k_lin
3. LM head + loss t_h = h·T                                                                  -> head_s_per_token
4. Ulysses layer  t = bytes·(k−1)/(s−1)/bw_intra + 4·lat_intra          (group inside a node) -> alltoall intra
                  t = bytes·(s−k)/(s−1)/bw_inter + 4·lat_inter          (group across nodes)  -> alltoall inter
5. p2p            t = bytes/bw + lat                                                          -> p2p intra / inter
6. DP reductions  hierarchical phases (`comm_model.hierarchical_phase_links`), 2 per all-reduce,
                  1 per reduce-scatter, with a free per-step latency term                    -> allreduce intra / inter
7. memory         bytes saved per token (slope over token counts), bytes per parameter of the training state
8. SP lanes       per degree s, t_f = x·F_s + o + A_s, t_b = x·B_s + k_lin·o + A_s on the layer timed as a
                  lane of s devices runs it (F_s, B_s, A_s: fits 1-4 at degree s)            -> sp_degree_costs
9. per-op         split step − packed step (the same work as one chunk per sequence and as one per lane)
                  = the simulator's difference at the fitted profile + extra ops · o_op       -> op_overhead_s
                  (`op_overhead_probe`; the slope is the simulator's, by finite difference)

Every fit minimises *relative* residuals (rows divided by the measured value: short and long calls count alike)
under non-negativity, solved exactly (`nonnegative_least_squares`). Each fit's error is then recomputed with the
cost model's own functions on the fitted profile, so the reported error is the error the planner will see on
those calls. A coefficient without measurements keeps the base (preset) value, and the report says so.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from planner_service.cost_model import comm_model, compute_model
from planner_service.cost_model.op_overhead_probe import (
    SEQUENCES_PER_LANE,
    TOKENS_PER_SEQUENCE,
    OpProbe,
    fit_op_overhead,
)
from planner_service.cost_model.profile_measurements import (
    CollectiveTiming,
    LaneLayerTiming,
    LayerTiming,
    MemorySample,
    OpProbeTiming,
    ProfileMeasurements,
)
from planner_service.cost_model.profile_presets import (
    deferred_grad_bytes_per_token_layer,
    deferred_input_bytes_per_token_layer,
    preset_profile,
    ulysses_extra_bytes_per_token_layer,
)
from proto import ClusterSpec, CostProfile, ModelSpec, SpDegreeCost
from proto.profile import MAX_LAYER_OVERHEAD_S, MAX_SP_COMPUTE_SCALE, MIN_SP_COMPUTE_SCALE

BACKWARD_FACTOR_BOUNDS = (0.5, 5.0)
"""`CostProfile`'s bounds on the backward/forward factors: a fitted factor outside them is clipped and flagged."""

MAX_COLUMNS = 4
"""`nonnegative_least_squares` tries every support, which is exact and cheap up to a few columns."""


class FitReport(BaseModel):
    """One least-squares fit: what it set, on how many rows, and its relative error on those rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    coefficients: dict[str, float] = Field(default_factory=dict)
    rows: int = Field(ge=0)
    rms_relative_error: float | None = Field(default=None, ge=0, description="sqrt(mean(((pred − meas)/meas)^2)).")
    max_relative_error: float | None = Field(default=None, ge=0)
    note: str = ""


class Efficiency(BaseModel):
    """Achieved FLOP/s of the layer's GEMMs and attention (forward) over the device's peak."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    peak_flops: float = Field(gt=0, description="The peak compared against: ClusterSpec.peak_flops.")
    peak_source: str
    gemm_flops_per_s: float | None = None
    gemm_efficiency: float | None = Field(default=None, description="gemm_flops_per_s / peak_flops (MFU of GEMMs).")
    attention_flops_per_s: float | None = None
    attention_efficiency: float | None = None
    measured_gemm_peak_flops: float | None = Field(
        default=None, description="A large square GEMM's rate on one device under the run's concurrency."
    )
    gemm_fraction_of_measured_peak: float | None = None


@dataclass(frozen=True, slots=True)
class ProfileFit:
    """The fitted profile, one report per fit, and the measured efficiency."""

    profile: CostProfile
    fits: tuple[FitReport, ...]
    efficiency: Efficiency


def nonnegative_least_squares(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin ||a·x − y||² subject to x ≥ 0, exactly.

    The optimum is the unconstrained least-squares solution on some support (the columns with x > 0) that is
    itself non-negative; trying every support and keeping the best feasible one finds it. With at most
    `MAX_COLUMNS` columns that is at most 15 small solves.
    """
    rows, cols = a.shape
    assert cols <= MAX_COLUMNS, f"{cols} columns: enumerating supports is only meant for <= {MAX_COLUMNS}"
    assert rows == y.shape[0], f"{rows} rows but {y.shape[0]} targets"
    best = np.zeros(cols)
    best_residual = float(y @ y)
    for size in range(1, cols + 1):
        for support in itertools.combinations(range(cols), size):
            sub = a[:, support]
            x, *_ = np.linalg.lstsq(sub, y, rcond=None)
            if np.any(x < 0):
                continue
            residual = float(np.sum((sub @ x - y) ** 2))
            if residual < best_residual - 1e-18 * max(best_residual, 1.0):
                best_residual = residual
                best = np.zeros(cols)
                best[list(support)] = x
    return best


def relative_fit(columns: Sequence[Sequence[float]], measured: Sequence[float]) -> np.ndarray:
    """Non-negative least squares on relative residuals: row i divided by measured[i]."""
    y = np.asarray(measured, dtype=float)
    a = np.asarray(columns, dtype=float).T
    if a.ndim == 1:
        a = a[:, None]
    return nonnegative_least_squares(a / y[:, None], np.ones_like(y))


def relative_errors(predicted: Sequence[float], measured: Sequence[float]) -> tuple[float | None, float | None]:
    """(rms, max) of |predicted − measured| / measured; (None, None) without rows."""
    if not measured:
        return None, None
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    rel = np.abs(p - m) / m
    return float(np.sqrt(np.mean(rel**2))), float(np.max(rel))


def _report(
    name: str, coefficients: dict[str, float], predicted: Sequence[float], measured: Sequence[float], note: str = ""
) -> FitReport:
    rms, worst = relative_errors(predicted, measured)
    return FitReport(
        name=name,
        coefficients=coefficients,
        rows=len(measured),
        rms_relative_error=rms,
        max_relative_error=worst,
        note=note,
    )


def _unmeasured(name: str, fields: Sequence[str], why: str) -> FitReport:
    return FitReport(
        name=name, rows=0, note=f"not measured ({why}): {', '.join(fields)} keep the base profile's values"
    )


# --- compute -----------------------------------------------------------------------------------------------------


def _fit_deferral(rows: Sequence[LayerTiming], fitted: CostProfile) -> tuple[dict[str, Any], FitReport]:
    """`weight_grad_share` and `deferred_layer_overhead_s` from the layer timed with its weight gradients deferred.

    The deferred weight gradients W are fitted as share x (the GEMM backward term, `layer_weight_grad_s` at share
    1) + a constant; the overhead is the median, over the rows, of what the deferred layer's forward, backward and
    W together take beyond the plain forward and backward (W's constant is part of it), at least 0. `fitted` has
    the layer's compute coefficients already fitted."""
    timed = [r for r in rows if r.deferred_forward_s and r.deferred_backward_s and r.weight_grad_s]
    fields = ["weight_grad_share", "deferred_layer_overhead_s"]
    if not timed:
        return {}, _unmeasured("deferred weight gradients", fields, "no deferred layer timings")
    whole = fitted.model_copy(update={"weight_grad_share": 1.0, "sp_degree_costs": ()})
    gemm = [compute_model.layer_weight_grad_s(whole, num_tokens=r.num_tokens, sp_degree=1) for r in timed]
    measured = [float(r.weight_grad_s or 0.0) for r in timed]
    share, _ = relative_fit([gemm, [1.0] * len(timed)], measured)
    note = f"share {share:.2f} clipped to [0, 1]" if share > 1 else ""
    share = float(min(share, 1.0))
    extra = [
        float((r.deferred_forward_s or 0.0) + (r.deferred_backward_s or 0.0) + (r.weight_grad_s or 0.0))
        - (r.forward_s + r.backward_s)
        for r in timed
    ]
    overhead = float(np.clip(np.median(extra), 0.0, MAX_LAYER_OVERHEAD_S))
    coefficients = {"weight_grad_share": share, "deferred_layer_overhead_s": overhead}
    return coefficients, _report("deferred weight gradients", coefficients, [share * g for g in gemm], measured, note)


def _fit_compute(m: ProfileMeasurements, base: CostProfile) -> tuple[dict[str, Any], list[FitReport]]:
    rows = m.layer
    if not rows:
        fields = ["attn_s_per_token2", "linear_s_per_token", "layer_overhead_s"]
        return {}, [_unmeasured("layer forward", fields, "no layer timings")]
    pairs = [r.attn_pairs for r in rows]
    tokens = [float(r.num_tokens) for r in rows]
    a2, a1, b = relative_fit([pairs, tokens, [1.0] * len(rows)], [r.forward_s for r in rows])
    update: dict[str, Any] = {"attn_s_per_token2": a2, "linear_s_per_token": a1, "layer_overhead_s": b}
    fitted = base.model_copy(update=update)

    def forward(r: Any, p: CostProfile) -> float:
        return compute_model.layer_forward_s(p, attn_pairs=r.attn_pairs, num_tokens=r.num_tokens, sp_degree=1)

    def backward(r: Any, p: CostProfile) -> float:
        return compute_model.layer_backward_s(p, attn_pairs=r.attn_pairs, num_tokens=r.num_tokens, sp_degree=1)

    reports = [
        _report(
            "layer forward",
            {"attn_s_per_token2": a2, "linear_s_per_token": a1, "layer_overhead_s": b},
            [forward(r, fitted) for r in rows],
            [r.forward_s for r in rows],
        )
    ]
    attention = [a2 * p for p in pairs]
    linear = [a1 * t + b for t in tokens]
    k_attn, k_lin = relative_fit([attention, linear], [r.backward_s for r in rows])
    lo, hi = BACKWARD_FACTOR_BOUNDS
    note: list[str] = []
    if a2 <= 0 or k_attn <= 0:
        k_attn = base.attention_backward_to_forward
        note.append("attention term not identified: k_attn kept")
    if k_lin <= 0:
        k_lin = base.linear_backward_to_forward
        note.append("linear term not identified: k_lin kept")
    clipped = {name: float(np.clip(v, lo, hi)) for name, v in (("k_attn", k_attn), ("k_lin", k_lin))}
    note += [
        f"{name} {v:.2f} clipped to [{lo}, {hi}]"
        for name, v in (("k_attn", k_attn), ("k_lin", k_lin))
        if not lo <= v <= hi
    ]
    update |= {"attention_backward_to_forward": clipped["k_attn"], "linear_backward_to_forward": clipped["k_lin"]}
    fitted = base.model_copy(update=update)
    reports.append(
        _report(
            "layer backward",
            {"attention_backward_to_forward": clipped["k_attn"], "linear_backward_to_forward": clipped["k_lin"]},
            [backward(r, fitted) for r in rows],
            [r.backward_s for r in rows],
            "; ".join(note),
        )
    )
    recompute = [r for r in rows if r.recompute_backward_s is not None]
    if recompute:
        reports.append(
            _report(
                "recompute (backward + one forward)",
                {},
                [backward(r, fitted) + forward(r, fitted) for r in recompute],
                [r.recompute_backward_s for r in recompute if r.recompute_backward_s is not None],
                "a check of the cost model's recompute charge, no coefficient",
            )
        )
    if m.head:
        (head,) = relative_fit([[float(h.num_tokens) for h in m.head]], [h.forward_s for h in m.head])
        update["head_s_per_token"] = head
        reports.append(
            _report(
                "LM head + loss forward",
                {"head_s_per_token": head},
                [head * h.num_tokens for h in m.head],
                [h.forward_s for h in m.head],
            )
        )
        reports.append(
            _report(
                "LM head + loss backward (k_lin x forward)",
                {},
                [clipped["k_lin"] * head * h.num_tokens for h in m.head],
                [h.backward_s for h in m.head],
                "a check: the cost model prices the head's backward at k_lin x its forward",
            )
        )
    else:
        reports.append(_unmeasured("LM head + loss forward", ["head_s_per_token"], "no head timings"))
    return update, reports


# --- lanes of each SP degree -------------------------------------------------------------------------------------


def _fit_sp_degrees(
    rows: Sequence[LaneLayerTiming], model: ModelSpec, fitted: CostProfile
) -> tuple[tuple[SpDegreeCost, ...], list[FitReport]]:
    """Per SP degree, (compute_scale x, call_overhead_s o) with the rest of the profile already fitted:
        forward  = x·F_s + o + A_s        backward = x·B_s + k_lin·o + A_s
    where F_s, B_s are the formula's layer times at degree s and A_s the layer's all-to-alls, both from `fitted`.
    Relative residuals, non-negative; x is then clipped to `CostProfile`'s bounds."""
    if not rows:
        return (), [_unmeasured("layer on lanes per SP degree", ["sp_degree_costs"], "no lane timings")]
    plain = fitted.model_copy(update={"sp_degree_costs": ()})
    k_lin = plain.linear_backward_to_forward
    costs: list[SpDegreeCost] = []
    reports: list[FitReport] = []
    for s in sorted({r.sp_degree for r in rows}):
        mine = [r for r in rows if r.sp_degree == s]
        columns, targets, measured = [], [], []
        for r in mine:
            formula_f, formula_b, comm = _lane_layer_parts(plain, model, r)
            for time_s, formula, overhead in ((r.forward_s, formula_f, 1.0), (r.backward_s, formula_b, k_lin)):
                columns.append([formula / time_s, overhead / time_s])
                targets.append(1.0 - comm / time_s)
                measured.append(time_s)
        scale, overhead = nonnegative_least_squares(np.asarray(columns), np.asarray(targets))
        note = ""
        if scale <= 0:
            scale, overhead = 1.0, 0.0
            note = "compute term not identified: the formula kept"
        clipped = float(np.clip(scale, MIN_SP_COMPUTE_SCALE, MAX_SP_COMPUTE_SCALE))
        if clipped != scale:
            note = f"compute scale {scale:.3g} clipped to [{MIN_SP_COMPUTE_SCALE}, {MAX_SP_COMPUTE_SCALE}]"
        overhead = float(min(overhead, MAX_LAYER_OVERHEAD_S))
        cost = SpDegreeCost(sp_degree=s, compute_scale=clipped, call_overhead_s=overhead)
        costs.append(cost)
        with_cost = plain.model_copy(update={"sp_degree_costs": (cost,)})
        predicted = []
        for r in mine:
            formula_f, formula_b, comm = _lane_layer_parts(with_cost, model, r)
            predicted += [formula_f + comm, formula_b + comm]
        reports.append(
            _report(
                f"layer on SP-{s} lanes",
                {"compute_scale": clipped, "call_overhead_s": overhead},
                predicted,
                measured,
                note,
            )
        )
    return tuple(costs), reports


def _lane_layer_parts(profile: CostProfile, model: ModelSpec, r: LaneLayerTiming) -> tuple[float, float, float]:
    """(forward compute, backward compute, one direction's all-to-alls) of one layer of a lane row under
    `profile`."""
    pairs = compute_model.attention_pairs([(0, r.num_tokens)])
    forward = compute_model.layer_forward_s(profile, attn_pairs=pairs, num_tokens=r.num_tokens, sp_degree=r.sp_degree)
    backward = compute_model.layer_backward_s(profile, attn_pairs=pairs, num_tokens=r.num_tokens, sp_degree=r.sp_degree)
    comm = comm_model.ulysses_layer_comm_s(
        profile, model, num_tokens=r.num_tokens, sp_degree=r.sp_degree, per_node=r.per_node
    )
    return forward, backward, comm


# --- collectives -------------------------------------------------------------------------------------------------


def _fit_ulysses(
    rows: list[CollectiveTiming], model: ModelSpec, base: CostProfile
) -> tuple[dict[str, Any], list[FitReport]]:
    update: dict[str, Any] = {}
    reports: list[FitReport] = []
    intra = [r for r in rows if r.nodes == 1 and r.group_size > 1]
    inter = [r for r in rows if r.nodes > 1]
    calls = comm_model.ALLTOALLS_PER_LAYER
    if intra:
        x = [r.num_bytes * (r.per_node - 1) / (r.group_size - 1) for r in intra]
        slope, latency = relative_fit([x, [float(calls)] * len(intra)], [r.seconds for r in intra])
        update |= _bandwidth_and_latency(slope, latency, "alltoall_bw_intra", "alltoall_latency_intra_s")
    else:
        reports.append(_unmeasured("all-to-all inside a node", ["alltoall_bw_intra"], "no SP group inside a node"))
    intra_bw = update.get("alltoall_bw_intra", base.alltoall_bw_intra)
    if inter:
        x = [r.num_bytes * (r.group_size - r.per_node) / (r.group_size - 1) for r in inter]
        slope, latency = relative_fit([x, [float(calls)] * len(inter)], [r.seconds for r in inter])
        update |= _bandwidth_and_latency(slope, latency, "alltoall_bw_inter", "alltoall_latency_inter_s")
    else:
        reports.append(
            _unmeasured("all-to-all across nodes", ["alltoall_bw_inter"], "no aligned SP group spans nodes here")
        )
    fitted = base.model_copy(update=update | {"alltoall_bw_intra": intra_bw})

    def predict(r: CollectiveTiming) -> float:
        return comm_model.ulysses_layer_comm_s(
            fitted, model, num_tokens=r.num_tokens, sp_degree=r.group_size, per_node=r.per_node
        )

    for label, group in (("all-to-all inside a node", intra), ("all-to-all across nodes", inter)):
        if group:
            keys = ("alltoall_bw_intra", "alltoall_latency_intra_s") if group is intra else (
                "alltoall_bw_inter", "alltoall_latency_inter_s"
            )  # fmt: skip
            coefficients = {k: float(getattr(fitted, k)) for k in keys}
            reports.append(
                _report(
                    label,
                    coefficients,
                    [predict(r) for r in group],
                    [r.seconds for r in group],
                    "one layer's Ulysses exchange as the executor runs it, fitted in the model's 4-call form",
                )
            )
    return update, reports


def _fit_p2p(rows: list[CollectiveTiming], base: CostProfile) -> tuple[dict[str, Any], list[FitReport]]:
    update: dict[str, Any] = {}
    intra = [r for r in rows if r.nodes == 1]
    inter = [r for r in rows if r.nodes > 1]
    if intra:
        slope, latency = relative_fit([[r.num_bytes for r in intra], [1.0] * len(intra)], [r.seconds for r in intra])
        update |= _bandwidth_and_latency(slope, latency, "p2p_bw_intra", "p2p_latency_s")
    latency = update.get("p2p_latency_s", base.p2p_latency_s)
    usable = [r for r in inter if r.seconds > latency]
    if usable:
        (slope,) = relative_fit([[r.num_bytes for r in usable]], [r.seconds - latency for r in usable])
        if slope > 0:
            update["p2p_bw_inter"] = 1.0 / slope
    fitted = base.model_copy(update=update)
    reports = []
    for label, group, bw_key in (
        ("p2p inside a node", intra, "p2p_bw_intra"),
        ("p2p across nodes", inter, "p2p_bw_inter"),
    ):
        if not group:
            reports.append(_unmeasured(label, [bw_key], "no such rank pair"))
            continue
        bw = getattr(fitted, bw_key)
        reports.append(
            _report(
                label,
                {bw_key: bw, "p2p_latency_s": fitted.p2p_latency_s},
                [r.num_bytes / bw + fitted.p2p_latency_s for r in group],
                [r.seconds for r in group],
            )
        )
    return update, reports


def _phases(row: CollectiveTiming) -> int:
    return 2 if row.kind == "all_reduce" else 1


def _fit_reductions(
    rows: list[CollectiveTiming], cluster: ClusterSpec, base: CostProfile
) -> tuple[dict[str, Any], list[FitReport]]:
    """Bus bandwidths and per-step latencies of the data-parallel reductions, priced as `data_parallel` prices them
    (one hierarchical phase per reduce-scatter, two per all-reduce): inside a node first, then the inter-node part
    of the groups that span nodes, given the intra-node fit."""
    update: dict[str, Any] = {}
    intra = [r for r in rows if r.nodes == 1 and r.group_size > 1]
    inter = [r for r in rows if r.nodes > 1]
    if intra:
        x = [_phases(r) * (r.per_node - 1) / r.per_node * r.num_bytes for r in intra]
        steps = [float(_phases(r) * (r.per_node - 1)) for r in intra]
        slope, latency = relative_fit([x, steps], [r.seconds for r in intra])
        update |= _bandwidth_and_latency(slope, latency, "allreduce_bw_intra", "allreduce_latency_intra_s")
    fitted = base.model_copy(update=update)

    def predict(r: CollectiveTiming, p: CostProfile) -> float:
        one = comm_model.hierarchical_phase_links(
            r.num_bytes,
            per_node=r.per_node,
            nodes=r.nodes,
            intra_bw=p.allreduce_bw_intra,
            inter_bw=p.allreduce_bw_inter,
            intra_latency_s=_latency(p.allreduce_latency_intra_s, cluster.intra_node_latency_s),
            inter_latency_s=_latency(p.allreduce_latency_inter_s, cluster.inter_node_latency_s),
        )
        return _phases(r) * one.duration_s

    if inter:
        within = [_phases(r) * _phase_intra_s(r, fitted, cluster) for r in inter]
        x = [_phases(r) * (r.nodes - 1) / r.nodes * r.num_bytes / r.per_node for r in inter]
        steps = [float(_phases(r) * (r.nodes - 1)) for r in inter]
        rest = [max(r.seconds - part, 1e-12) for r, part in zip(inter, within, strict=True)]
        slope, latency = relative_fit([x, steps], rest)
        update |= _bandwidth_and_latency(slope, latency, "allreduce_bw_inter", "allreduce_latency_inter_s")
        fitted = base.model_copy(update=update)
    reports = []
    for label, group, keys in (
        ("gradient reductions inside a node", intra, ("allreduce_bw_intra", "allreduce_latency_intra_s")),
        ("gradient reductions across nodes", inter, ("allreduce_bw_inter", "allreduce_latency_inter_s")),
    ):
        if not group:
            reports.append(_unmeasured(label, keys, "no stage block of that placement"))
            continue
        reports.append(
            _report(
                label,
                {k: float(getattr(fitted, k)) for k in keys},
                [predict(r, fitted) for r in group],
                [r.seconds for r in group],
            )
        )
    return update, reports


def _phase_intra_s(r: CollectiveTiming, p: CostProfile, cluster: ClusterSpec) -> float:
    """The intra-node part of one hierarchical phase of a reduction over `r`'s group."""
    k = r.per_node
    return (k - 1) / k * r.num_bytes / p.allreduce_bw_intra + (k - 1) * _latency(
        p.allreduce_latency_intra_s, cluster.intra_node_latency_s
    )


def _latency(measured: float | None, default: float) -> float:
    return default if measured is None else measured


def _bandwidth_and_latency(slope: float, latency: float, bw_key: str, latency_key: str) -> dict[str, float]:
    """A fit's (seconds per byte, seconds per call) as profile fields. A zero slope means the sizes measured never
    waited on bandwidth: the latency is kept and the bandwidth stays the base's (the fit's report shows the error)."""
    update = {latency_key: latency}
    if slope > 0:
        update[bw_key] = 1.0 / slope
    return update


# --- memory ------------------------------------------------------------------------------------------------------


def _slope_per_token(samples: list[MemorySample]) -> tuple[float, float] | None:
    """(bytes per token, constant) of saved bytes against tokens; a single sample gives bytes/token."""
    if not samples:
        return None
    if len({s.num_tokens for s in samples}) == 1:
        return samples[0].saved_bytes / samples[0].num_tokens, 0.0
    t = np.array([s.num_tokens for s in samples], dtype=float)
    y = np.array([s.saved_bytes for s in samples], dtype=float)
    slope, const = nonnegative_least_squares(np.stack([t, np.ones_like(t)], axis=1), y)
    return float(slope), float(const)


def _fit_mlp_recompute(m: ProfileMeasurements, update: dict[str, Any]) -> FitReport:
    """`mlp_recompute_freed_bytes_per_token_layer`: the whole layer's saved bytes per token less those of the layer
    with its MLP half checkpointed (both slopes from the probe; the preset's formula stays without them)."""
    key = "mlp_recompute_freed_bytes_per_token_layer"
    samples = [s for s in m.memory if s.kind == "mlp_checkpointed_layer"]
    fit = _slope_per_token(samples)
    whole = update.get("activation_bytes_per_token_layer")
    if fit is None or whole is None or fit[0] <= 0:
        return _unmeasured("saved bytes: mlp_checkpointed_layer", [key], "no probe samples of it or of the layer")
    update[key] = max(0.0, whole - fit[0])
    return _report(
        "saved bytes: mlp_checkpointed_layer",
        {"bytes_per_token": fit[0], "constant_bytes": fit[1], key: update[key]},
        [fit[0] * s.num_tokens + fit[1] for s in samples],
        [s.saved_bytes for s in samples],
    )


def _fit_memory(m: ProfileMeasurements, model: ModelSpec) -> tuple[dict[str, Any], list[FitReport]]:
    update: dict[str, Any] = {}
    reports = []
    for kind, key in (
        ("layer", "activation_bytes_per_token_layer"),
        ("checkpointed_layer", "checkpoint_bytes_per_token_layer"),
        ("head", "head_activation_bytes_per_token"),
    ):
        samples = [s for s in m.memory if s.kind == kind]
        fit = _slope_per_token(samples)
        if fit is None or fit[0] <= 0:
            reports.append(_unmeasured(f"saved bytes: {kind}", [key], "no probe samples"))
            continue
        update[key] = fit[0]
        reports.append(
            _report(
                f"saved bytes: {kind}",
                {key: fit[0], "constant_bytes": fit[1]},
                [fit[0] * s.num_tokens + fit[1] for s in samples],
                [s.saved_bytes for s in samples],
            )
        )
    reports.append(_fit_mlp_recompute(m, update))
    update["kv_bytes_per_token_layer"] = float(2 * model.kv_dim * _element_bytes(m.dtype, model))
    update["attention_saves_prefix_kv"] = m.attention_saves_prefix_kv
    run_model = model.model_copy(update={"bytes_per_element": _element_bytes(m.dtype, model)})
    extra = ulysses_extra_bytes_per_token_layer(run_model)
    update["ulysses_extra_bytes_per_token_layer"] = extra if m.attention_saves_output else 0.0
    update["deferred_grad_bytes_per_token_layer"] = deferred_grad_bytes_per_token_layer(run_model)
    update["deferred_input_bytes_per_token_layer"] = deferred_input_bytes_per_token_layer(run_model)
    if m.states is not None:
        s = m.states
        update |= {
            "param_bytes": s.param_bytes,
            "grad_bytes": s.grad_bytes,
            "bytes_per_param_state": s.param_bytes + s.grad_bytes + s.optimizer_bytes,
        }
        reports.append(
            FitReport(
                name="training state bytes per parameter",
                coefficients={
                    "param_bytes": s.param_bytes,
                    "grad_bytes": s.grad_bytes,
                    "optimizer_bytes": s.optimizer_bytes,
                },
                rows=1,
                note="counted exactly after one optimizer step",
            )
        )
    return update, reports


DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


def _fit_op_overhead(
    probe: OpProbeTiming | None, cluster: ClusterSpec, model: ModelSpec, profile: CostProfile
) -> tuple[float, FitReport]:
    """Fit 9: the per-op overhead from the probe's two steps, with every other coefficient already fitted (the
    simulator prices what they explain of the difference). Clipped to the field's bound and flagged there."""
    name, fields = "per-op overhead", ["op_overhead_s"]
    if probe is None:
        return profile.op_overhead_s, _unmeasured(name, fields, "the probe did not run")
    expected = OpProbe.of(cluster, model)
    shape = (probe.num_stages, probe.sequences_per_lane, probe.tokens_per_sequence)
    if shape != (expected.num_stages, SEQUENCES_PER_LANE, TOKENS_PER_SEQUENCE):
        return profile.op_overhead_s, _unmeasured(name, fields, f"the probe ran another shape {shape}")
    fit = fit_op_overhead(cluster, model, profile, probe.packed_s, probe.split_s)
    if fit.op_overhead_s is None:
        return profile.op_overhead_s, _unmeasured(name, fields, "the probe's steps do not differ in ops on the path")
    value = min(fit.op_overhead_s, MAX_LAYER_OVERHEAD_S)
    predicted_split_s = probe.packed_s + fit.modelled_extra_s + fit.slope * value  # the error is on the split step
    note = (
        f"split - packed step: measured {fit.measured_extra_s * 1e3:.2f} ms, modelled without it "
        f"{fit.modelled_extra_s * 1e3:.2f} ms, {fit.slope:.0f} extra ops on the critical path"
        + (" (clipped to the field's bound)" if value < fit.op_overhead_s else "")
        + (" (measured no slower than modelled: 0)" if fit.op_overhead_s == 0 else "")
    )
    return value, _report(name, {"op_overhead_s": value}, [predicted_split_s], [probe.split_s], note)


def _element_bytes(dtype: str, model: ModelSpec) -> int:
    return DTYPE_BYTES.get(dtype, model.bytes_per_element)


# --- the whole profile -------------------------------------------------------------------------------------------


def _efficiency(profile: CostProfile, m: ProfileMeasurements, cluster: ClusterSpec, model: ModelSpec) -> Efficiency:
    peak = cluster.peak_flops
    h = model.hidden_size
    gemm = (
        2.0 * (model.params_per_layer - 2 * h) / profile.linear_s_per_token
        if m.layer and profile.linear_s_per_token > 0
        else None
    )
    attention = (
        2.0 * model.q_dim / profile.attn_s_per_token2 if m.layer and profile.attn_s_per_token2 > 0 else None
    )  # FLOPs per unit of the attention term (profile_presets.preset_profile)
    measured = m.gemm_flops_per_s
    return Efficiency(
        peak_flops=peak,
        peak_source=f"ClusterSpec.peak_flops of {cluster.name} ({cluster.source or 'no source given'})",
        gemm_flops_per_s=gemm,
        gemm_efficiency=gemm / peak if gemm else None,
        attention_flops_per_s=attention,
        attention_efficiency=attention / peak if attention else None,
        measured_gemm_peak_flops=measured,
        gemm_fraction_of_measured_peak=gemm / measured if gemm and measured else None,
    )


FitStep = Callable[[], tuple[dict[str, Any], list[FitReport]]]


def fit_profile(
    measurements: ProfileMeasurements,
    cluster: ClusterSpec,
    model: ModelSpec,
    *,
    base: CostProfile | None = None,
    name: str | None = None,
) -> ProfileFit:
    """The `CostProfile` the measurements imply: every measured coefficient fitted, the rest from `base` (default:
    the preset for this cluster and model, at the measured dtype's element size)."""
    m = measurements
    if base is None:
        sized = model.model_copy(update={"bytes_per_element": _element_bytes(m.dtype, model)})
        base = preset_profile(cluster, sized)
    update: dict[str, Any] = {}
    reports: list[FitReport] = []
    by_kind = {kind: [r for r in m.collectives if r.kind == kind] for kind in ("ulysses_layer", "p2p")}
    steps: list[FitStep] = [
        lambda: _fit_compute(m, base),
        lambda: _fit_ulysses(by_kind["ulysses_layer"], model, base),
        lambda: _fit_p2p(by_kind["p2p"], base),
        lambda: _fit_reductions(
            [r for r in m.collectives if r.kind in ("all_reduce", "reduce_scatter")], cluster, base
        ),
        lambda: _fit_memory(m, model),
    ]
    for step in steps:
        part, part_reports = step()
        update |= part
        reports += part_reports
    profile = base.model_copy(
        update={
            **update,
            "devices_per_compute_unit": m.devices_per_core,
            "name": name or f"measured:{cluster.name}/{model.name}",
            "source": (
                f"helix profile on {m.world_size} x {m.device} ({m.backend}, {m.attention_backend} attention, "
                f"{m.dtype}, {m.threads_per_rank} thread(s) per rank{', ' + m.cores if m.cores else ''}); "
                "unmeasured coefficients from the preset"
            ),
        }
    )
    deferral, deferral_report = _fit_deferral(m.layer, profile)
    reports.append(deferral_report)
    profile = profile.model_copy(update=deferral)
    degree_costs, degree_reports = _fit_sp_degrees(m.lanes, model, profile)
    reports += degree_reports
    profile = profile.model_copy(update={"sp_degree_costs": degree_costs})
    op_overhead, op_report = _fit_op_overhead(m.op_probe, cluster, model, profile)
    reports.append(op_report)
    profile = profile.model_copy(update={"op_overhead_s": op_overhead})
    profile = CostProfile.model_validate(profile.model_dump())  # the bounds of every field hold
    return ProfileFit(profile=profile, fits=tuple(reports), efficiency=_efficiency(profile, m, cluster, model))
