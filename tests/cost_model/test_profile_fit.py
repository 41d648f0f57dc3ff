"""The profile fit recovers known coefficients from synthetic timings, exactly without noise and closely with it.

Guards against a fit that solves the wrong equation (e.g. forgets the 4-call latency of a layer's all-to-alls, or
prices a reduce-scatter as an all-reduce): timings are generated with the cost model's own functions from a
"true" profile far from the preset, so only a fit that inverts those functions gets the coefficients back.
"""

from __future__ import annotations

import numpy as np
import pytest

from planner_service.cost_model import preset_profile
from planner_service.cost_model.op_overhead_probe import fit_op_overhead
from planner_service.cost_model.profile_fit import fit_profile, nonnegative_least_squares
from tests.cost_model.synthetic_profile import CLUSTER, FITTED_FIELDS, MODEL, TRUE, synthetic_measurements


def test_nonnegative_least_squares_solves_a_hand_case() -> None:
    """y = 2·x1 exactly, x2 would enter negatively: the constrained optimum sets x2 = 0 (by hand: with x2 = 0 the
    residual is 0, which no other feasible point beats)."""
    a = np.array([[1.0, 1.0], [2.0, 0.0], [3.0, 1.0]])
    y = np.array([2.0, 4.0, 6.0])
    assert nonnegative_least_squares(a, y) == pytest.approx([2.0, 0.0], abs=1e-12)
    # unconstrained lstsq of y' = x1 − x2 would give x2 < 0; the constrained one clips it to the boundary
    y2 = np.array([0.0, 2.0, 2.0])
    x = nonnegative_least_squares(a, y2)
    assert x[1] == 0.0 and x[0] == pytest.approx(float(a[:, 0] @ y2 / (a[:, 0] @ a[:, 0])))


def test_fit_recovers_every_coefficient_from_exact_timings() -> None:
    """No noise: every time and bandwidth coefficient comes back to 1e-6, and every fit reports ~0 error."""
    fit = fit_profile(synthetic_measurements(TRUE), CLUSTER, MODEL)
    for name in FITTED_FIELDS:
        if name == "sp_degree_costs":
            continue
        assert getattr(fit.profile, name) == pytest.approx(getattr(TRUE, name), rel=1e-6), name
    got = [(c.sp_degree, c.compute_scale, c.call_overhead_s) for c in fit.profile.sp_degree_costs]
    want = [(c.sp_degree, c.compute_scale, c.call_overhead_s) for c in TRUE.sp_degree_costs]
    assert [g[0] for g in got] == [w[0] for w in want]
    for g, w in zip(got, want, strict=True):
        assert g[1] == pytest.approx(w[1], rel=1e-6) and g[2] == pytest.approx(w[2], rel=1e-6, abs=1e-12), (g, w)
    measured = [f for f in fit.fits if f.rows > 0 and f.rms_relative_error is not None]
    assert len(measured) >= 10
    assert all(f.max_relative_error is not None and f.max_relative_error < 1e-6 for f in measured), [
        (f.name, f.max_relative_error) for f in measured
    ]


def test_fit_sets_memory_and_state_coefficients() -> None:
    """Saved bytes per token are the slope over token counts; state bytes are what was counted."""
    fit = fit_profile(synthetic_measurements(TRUE), CLUSTER, MODEL)
    assert fit.profile.activation_bytes_per_token_layer == pytest.approx(1234.0)
    assert fit.profile.checkpoint_bytes_per_token_layer == pytest.approx(256.0)
    assert fit.profile.mlp_recompute_freed_bytes_per_token_layer == pytest.approx(1234.0 - 600.0)
    assert fit.profile.bytes_per_param_state == 16.0
    assert fit.profile.kv_bytes_per_token_layer == 2 * MODEL.kv_dim * 4
    assert fit.profile.attention_saves_prefix_kv is False
    assert fit.profile.ulysses_extra_bytes_per_token_layer == 0.0
    assert fit.profile.devices_per_compute_unit == 1
    shared = synthetic_measurements(TRUE).model_copy(update={"devices_per_core": 2})
    assert fit_profile(shared, CLUSTER, MODEL).profile.devices_per_compute_unit == 2  # ranks pinned two per core


def test_fit_is_close_under_noise() -> None:
    """±3% multiplicative noise on every timing: compute coefficients within 10%, bandwidths within 10%, and the
    reported rms error is about the noise level (not zero, not far above it)."""
    fit = fit_profile(synthetic_measurements(TRUE, noise=0.03, seed=7), CLUSTER, MODEL)
    close = (
        "attn_s_per_token2",
        "linear_s_per_token",
        "attention_backward_to_forward",
        "linear_backward_to_forward",
        "alltoall_bw_intra",
        "alltoall_bw_inter",
        "p2p_bw_intra",
        "allreduce_bw_intra",
        "allreduce_bw_inter",
    )
    for name in close:
        assert getattr(fit.profile, name) == pytest.approx(getattr(TRUE, name), rel=0.1), name
    forward = next(f for f in fit.fits if f.name == "layer forward")
    assert forward.rms_relative_error is not None and 0.005 < forward.rms_relative_error < 0.04
    for got, want in zip(fit.profile.sp_degree_costs, TRUE.sp_degree_costs, strict=True):
        assert got.compute_scale == pytest.approx(want.compute_scale, rel=0.1), (got, want)


def test_sp_degree_costs_price_lanes_and_interpolate_between_degrees() -> None:
    """A lane of a measured degree pays that degree's scale and overhead; an unmeasured degree between two measured
    ones gets the log2-interpolation of theirs, one outside them the nearest; no measurements change nothing."""
    from planner_service.cost_model import compute_model

    plain = TRUE.model_copy(update={"sp_degree_costs": ()})
    pairs, tokens = compute_model.attention_pairs([(0, 4096)]), 4096.0

    def forward(profile: object, s: int) -> float:
        return compute_model.layer_forward_s(profile, attn_pairs=pairs, num_tokens=tokens, sp_degree=s)  # type: ignore[arg-type]

    assert forward(TRUE, 4) == pytest.approx(1.3 * forward(plain, 4) + 5e-4)
    assert compute_model.sp_degree_cost(TRUE, 1) == (0.9, 0.0)
    sparse = TRUE.model_copy(update={"sp_degree_costs": (TRUE.sp_degree_costs[1], TRUE.sp_degree_costs[3])})
    scale, extra = compute_model.sp_degree_cost(sparse, 4)  # halfway between 2 and 8 in log2
    assert scale == pytest.approx((1.1 + 1.6) / 2) and extra == pytest.approx((2e-4 + 1e-3) / 2)
    assert compute_model.sp_degree_cost(sparse, 1) == (1.1, 2e-4)
    assert compute_model.sp_degree_cost(sparse, 64) == (1.6, 1e-3)
    assert compute_model.sp_degree_cost(plain, 8) == (1.0, 0.0)


def test_sp_degree_costs_must_name_increasing_degrees() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="sp_degree values must be strictly increasing"):
        TRUE.model_copy(update={"sp_degree_costs": ()}).model_validate(
            {**TRUE.model_dump(), "sp_degree_costs": [{"sp_degree": 4}, {"sp_degree": 2}]}
        )


def test_unmeasured_coefficients_keep_the_base_and_say_so() -> None:
    """Without collective timings the bandwidths stay the preset's, and the report names them as not measured."""
    m = synthetic_measurements(TRUE).model_copy(update={"collectives": []})
    fit = fit_profile(m, CLUSTER, MODEL)
    preset = preset_profile(CLUSTER, MODEL)
    assert fit.profile.alltoall_bw_intra == preset.alltoall_bw_intra
    notes = [f.note for f in fit.fits if f.rows == 0]
    assert any("alltoall_bw_intra" in n for n in notes)


def test_efficiency_inverts_the_preset_formulas() -> None:
    """Fitting timings generated by the preset gives back the preset's MFU and attention efficiency."""
    from planner_service.cost_model.profile_presets import ATTENTION_EFFICIENCY, MATMUL_MFU

    preset = preset_profile(CLUSTER, MODEL).model_copy(update={"layer_overhead_s": 0.0})
    fit = fit_profile(synthetic_measurements(preset), CLUSTER, MODEL)
    assert fit.efficiency.gemm_efficiency == pytest.approx(MATMUL_MFU, rel=1e-6)
    assert fit.efficiency.attention_efficiency == pytest.approx(ATTENTION_EFFICIENCY, rel=1e-6)


def test_op_overhead_comes_from_the_probe_and_only_from_it() -> None:
    """The probe priced under TRUE gives TRUE's op overhead back (the recovery test above); without the probe, or
    from a probe of another shape, the base's value stays and the report says why; a split step measured faster
    than the simulator prices it without any overhead is no evidence of a negative cost per op: 0, flagged."""
    m = synthetic_measurements(TRUE)
    assert m.op_probe is not None and m.op_probe.split_s > m.op_probe.packed_s
    preset = preset_profile(CLUSTER, MODEL)
    for probe, why in ((None, "did not run"), (m.op_probe.model_copy(update={"tokens_per_sequence": 7}), "shape")):
        fit = fit_profile(m.model_copy(update={"op_probe": probe}), CLUSTER, MODEL)
        assert fit.profile.op_overhead_s == preset.op_overhead_s == 0.0
        report = next(f for f in fit.fits if f.name == "per-op overhead")
        assert report.rows == 0 and why in report.note and "op_overhead_s" in report.note
    # pipelining: the split step is modelled *faster* than the packed one (P = 2), so the bar is below packed
    bare = fit_op_overhead(CLUSTER, MODEL, TRUE, m.op_probe.packed_s, m.op_probe.split_s)
    assert bare.modelled_extra_s < 0 and bare.op_overhead_s == pytest.approx(TRUE.op_overhead_s, rel=1e-6)
    fast = m.op_probe.model_copy(update={"split_s": m.op_probe.packed_s + bare.modelled_extra_s - 1e-4})
    fit = fit_profile(m.model_copy(update={"op_probe": fast}), CLUSTER, MODEL)
    report = next(f for f in fit.fits if f.name == "per-op overhead")
    assert fit.profile.op_overhead_s == 0.0 and report.rows == 1 and "no slower than modelled" in report.note
