"""The window fit behind calibration: group scales from measured step times, robust to slow steps.

Model, for the steps i of the window: m_i ≈ Σ_g θ_g·r_ig + f_i, with r_ig = ∂t_i/∂θ_g and f_i the fixed part
(`coefficient_groups.time_components`). Fitted on relative residuals (a 10 s step and a 0.1 s step count alike):

1. uniform scale α = median_i (m_i − f_i) / Σ_g r_ig — what one factor for everything would be; a median, so a
   minority of slow (or fast) steps does not move it;
2. θ = α·u, u minimising Σ_i w_i·ρ_i² + λ·Σ_g (u_g − 1)², ρ_i = (Σ_g α·u_g·r_ig + f_i − m_i)/m_i, by iteratively
   reweighted least squares with Huber weights w_i = min(1, k·σ/|ρ_i|), σ the residuals' MAD scale. The ridge
   term keeps groups the window cannot tell apart at α (one step says nothing about the split) and lets the
   data move a group only as far as its share of the steps supports;
3. each u_g is kept within `bounds`.

Additive coefficients x_k may be fitted beside the scales (`additive`: per step and coefficient, the seconds one
unit of x_k adds; for the ops' fixed overhead, the number of ops on the critical path): m_i ≈ α·Σ_g u_g·r_ig +
Σ_k x_k·n_ik + f_i, with the ridge pulling each x_k towards 0 (x_k is a change from what `f` already holds). Each
x_k is fitted in units of the value that would account for a median step's whole modelled time, so the ridge
weighs it as it weighs a scale: a change that explains a tenth of every step costs what a scale moved by a tenth
costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAD_TO_SIGMA = 1.4826
"""MAD x this = the standard deviation of normally distributed residuals."""

MIN_RESIDUAL_SCALE = 0.01
"""Floor of σ (1% relative): exact data would otherwise give σ = 0 and weight every residual down."""


@dataclass(frozen=True, slots=True)
class RobustFitSettings:
    ridge: float = 1.0
    """λ: pull of each group's scale towards the uniform one, in units of one fully-explained step."""
    huber_k: float = 1.345
    """Residuals beyond k·σ get weight k·σ/|ρ| (1.345: 95% efficiency on normal noise)."""
    bounds: tuple[float, float] = (0.1, 10.0)
    """Each group's scale stays within these multiples of the uniform scale α."""
    iterations: int = 20


@dataclass(frozen=True, slots=True)
class RobustFit:
    scales: tuple[float, ...]
    """θ_g per column."""
    uniform_scale: float
    """α."""
    weights: tuple[float, ...]
    """Final Huber weight of each step (1: inlier)."""
    residual_scale: float
    """σ of the relative residuals."""
    additive: tuple[float, ...] = ()
    """x_k, the additive coefficients (none without `additive`)."""


def fit_group_scales(
    rates: Sequence[Sequence[float]],
    fixed: Sequence[float],
    measured: Sequence[float],
    settings: RobustFitSettings = RobustFitSettings(),
    *,
    additive: Sequence[Sequence[float]] | None = None,
    additive_bounds: Sequence[tuple[float, float]] = (),
) -> RobustFit:
    """θ (and x, with `additive`: one row per step, one column per coefficient) from rows of per-group rates, fixed
    parts and measured times (see the module docstring); x_k stays within `additive_bounds[k]`."""
    r = np.asarray(rates, dtype=float)
    f = np.asarray(fixed, dtype=float)
    m = np.asarray(measured, dtype=float)
    assert r.ndim == 2 and r.shape[0] == f.shape[0] == m.shape[0] > 0, (r.shape, f.shape, m.shape)
    assert np.all(m > 0), "measured times must be positive"
    modelled = r.sum(axis=1)
    usable = modelled > 0
    if not np.any(usable):
        return RobustFit((1.0,) * r.shape[1], 1.0, (1.0,) * len(m), 0.0, (0.0,) * len(additive_bounds))
    alpha = float(np.median((m[usable] - f[usable]) / modelled[usable]))
    alpha = max(alpha, 1e-6)
    groups = r.shape[1]
    a = alpha * r / m[:, None]  # relative residual = a @ u + f/m - 1
    target = np.ones(groups)
    lo = np.full(groups, settings.bounds[0])
    hi = np.full(groups, settings.bounds[1])
    units = np.ones(0)
    if additive is not None:
        n = np.asarray(additive, dtype=float).reshape(len(m), -1)
        assert len(additive_bounds) == n.shape[1], (len(additive_bounds), n.shape)
        share = n / m[:, None]
        units = np.ones(n.shape[1])
        for k in range(n.shape[1]):  # x_k in units of the value explaining a median step's modelled time
            column = share[:, k]
            if np.any(column > 0):
                units[k] = float(np.median(a.sum(axis=1)) / np.median(column[column > 0]))
        bounds = np.asarray(additive_bounds, dtype=float).reshape(-1, 2)
        a = np.column_stack([a, share * units])
        target = np.append(target, np.zeros(n.shape[1]))
        lo, hi = np.append(lo, bounds[:, 0] / units), np.append(hi, bounds[:, 1] / units)
    b = 1.0 - f / m
    lam = settings.ridge
    u = target.copy()
    w = np.ones(len(m))
    sigma = MIN_RESIDUAL_SCALE
    for _ in range(settings.iterations):
        rho = a @ u - b
        sigma = max(MAD_TO_SIGMA * float(np.median(np.abs(rho - np.median(rho)))), MIN_RESIDUAL_SCALE)
        cut = settings.huber_k * sigma
        w = np.minimum(1.0, cut / np.maximum(np.abs(rho), 1e-300))
        lhs = (a * w[:, None]).T @ a + lam * np.eye(a.shape[1])
        rhs = (a * w[:, None]).T @ b + lam * target
        new_u = np.clip(np.linalg.solve(lhs, rhs), lo, hi)
        if np.allclose(new_u, u, rtol=1e-9, atol=1e-12):
            u = new_u
            break
        u = new_u
    scales = tuple(float(x) for x in alpha * u[:groups])
    extra = tuple(float(x) for x in u[groups:] * units)
    return RobustFit(scales, alpha, tuple(float(x) for x in w), sigma, extra)


def robust_ratio(numerators: Sequence[float], denominators: Sequence[float], bounds: tuple[float, float]) -> float:
    """Median of numerator/denominator over pairs with both positive, within `bounds`; 1 without any."""
    ratios = [n / d for n, d in zip(numerators, denominators, strict=True) if n > 0 and d > 0]
    if not ratios:
        return 1.0
    return float(np.clip(np.median(ratios), *bounds))
