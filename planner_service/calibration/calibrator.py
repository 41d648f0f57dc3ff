"""`Calibrator`: one job's online profile refinement from step feedback.

Per observed step (a plan and its `Feedback`): the plan is re-simulated at the current calibration to split its
predicted time over the coefficient groups (`coefficient_groups.time_components`), the step's prediction errors
are recorded (base profile, and calibrated profile out of sample), and the group scales are refitted over the
last `window` steps (`robust_fit.fit_group_scales`), with additive changes from the base profile fitted beside them:
the ops' fixed overhead (`CostProfile.op_overhead_s`) and, per SP degree the profile measured, that degree's compute
scale (`sp_degree_costs`: lanes of different widths run at different efficiencies, which one group scale per kind
of work cannot express); activation memory gets the median measured/predicted ratio.
`profile` is then the base profile scaled accordingly, which later plans should be made with.

Used by the service (one per job, fed by `POST /v1/jobs/{id}/feedback`) and usable in-process, e.g. by a
training loop that plans locally:

    calibrator = Calibrator(cluster=cluster, model=model, base=profile)
    ...
    profile = calibrator.observe(plan, Feedback(step=t, plan_id=plan.plan_id, measured_iteration_s=seconds))
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np

from planner_service.calibration.coefficient_groups import GROUPS, scale_profile, time_components
from planner_service.calibration.robust_fit import RobustFit, RobustFitSettings, fit_group_scales, robust_ratio
from planner_service.calibration.summary import CalibrationSummary, StepError
from planner_service.cost_model import CostModel
from planner_service.report import batch_of_plan
from planner_service.simulator.pipeline_simulator import simulate
from proto import Batch, ClusterSpec, CostProfile, Feedback, ModelSpec, Plan, PlanOptions
from proto.profile import MAX_LAYER_OVERHEAD_S, MAX_SP_COMPUTE_SCALE, MIN_SP_COMPUTE_SCALE
from proto.topology import Topology

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, slots=True)
class CalibrationSettings:
    window: int = 32
    """Most recent steps the fit uses (older ones age out: the calibration follows drift)."""
    error_steps: int = 16
    """Most recent steps the error summary covers."""
    fit: RobustFitSettings = field(default_factory=RobustFitSettings)
    memory: bool = True
    """Also scale the activation-memory coefficients by the measured/predicted ratio."""
    memory_bounds: tuple[float, float] = (0.5, 4.0)
    """The activation scale stays within these (memory feedback from a partial probe must not shrink the
    planner's memory estimates without limit)."""
    op_overhead: bool = True
    """Also fit the change of the ops' fixed overhead (`CostProfile.op_overhead_s`). Off: the base profile's value
    stays (a model mismatch the other coefficients cannot express can otherwise land in it)."""
    lane_widths: bool = True
    """Also refine the compute scale of each SP degree of the base profile's `sp_degree_costs`."""
    lane_width_bounds: tuple[float, float] = (0.5, 2.0)
    """Each degree's refined compute scale stays within these multiples of the base profile's."""


@dataclass(frozen=True, slots=True)
class _Observation:
    step: int | None
    rates: tuple[float, ...]
    fixed_s: float
    additive_rates: tuple[float, ...]
    """∂t/∂x_k of the step's plan for the additive changes (op overhead, then one per measured SP degree)."""
    additive_at: tuple[float, ...]
    """The changes x_k the step was simulated with (their part of the time is in `fixed_s` and `rates`)."""
    measured_s: float
    base_activation: tuple[float, ...]
    """Per rank, predicted activation bytes at φ = 1 (peak less reserve and model states)."""
    measured_activation: tuple[float, ...]
    """Per rank, measured peak less the predicted model states (empty without memory feedback)."""


class Calibrator:
    """Refines a base profile from feedback; thread-safe (the service may observe from worker threads)."""

    def __init__(
        self,
        *,
        cluster: ClusterSpec,
        model: ModelSpec,
        base: CostProfile | None = None,
        options: PlanOptions | None = None,
        settings: CalibrationSettings | None = None,
    ) -> None:
        self.settings = settings or CalibrationSettings()
        self._cost = CostModel.from_specs(cluster, model, profile=base, options=options)
        self._window: deque[_Observation] = deque(maxlen=self.settings.window)
        self._errors: deque[StepError] = deque(maxlen=self.settings.error_steps)
        self._scales = dict.fromkeys(GROUPS, 1.0)
        self._memory_scale = 1.0
        self._widths = (
            tuple(c.sp_degree for c in self._cost.profile.sp_degree_costs) if self.settings.lane_widths else ()
        )
        self._additive = (0.0,) * (1 + len(self._widths))
        """Fitted changes from the base profile: the op overhead (seconds), then each width's relative compute scale."""
        self._fit: RobustFit | None = None
        self._lock = threading.Lock()
        self.steps_observed = 0

    @property
    def base(self) -> CostProfile:
        return self._cost.profile

    @property
    def scales(self) -> dict[str, float]:
        """Per group θ, and 'activation_memory' φ."""
        with self._lock:
            return {**self._scales, "activation_memory": self._memory_scale}

    @property
    def op_overhead_s(self) -> float:
        """The calibrated fixed seconds of one pipeline op (the base profile's plus the fitted change)."""
        with self._lock:
            return self._calibrated_op_overhead()

    @property
    def lane_width_scales(self) -> dict[int, float]:
        """Per measured SP degree, the calibrated compute scale over the base profile's."""
        with self._lock:
            return self._calibrated_widths()

    @property
    def profile(self) -> CostProfile:
        """The base profile calibrated with every step seen so far (the base itself before any)."""
        with self._lock:
            return self._profile()

    @staticmethod
    def _saved_tensor_peaks(plan: Plan, batch: Batch, cost: CostModel) -> tuple[float, ...]:
        """Per rank, the predicted peak without op transients (what a 'saved_tensors' measurement sees)."""
        return simulate(plan, batch, cost, record_events=False, saved_tensor_peaks=True).saved_tensor_peak_bytes

    def observe(self, plan: Plan, feedback: Feedback, batch: Batch | None = None) -> CostProfile:
        """Take one step's measurement of `plan` into account; return the refined profile.

        `batch` defaults to the one the plan covers. Raises `ValueError` when the feedback is for another plan.
        """
        if feedback.plan_id != plan.plan_id:
            raise ValueError(f"feedback is for plan {feedback.plan_id}, not {plan.plan_id}")
        batch = batch if batch is not None else batch_of_plan(plan)
        with self._lock:
            scales, phi, additive = dict(self._scales), self._memory_scale, self._additive
        comps_cost = self._cost_at(phi, additive)
        comps = time_components(plan, batch, comps_cost, scales)
        uncalibrated = all(v == 1.0 for v in scales.values()) and phi == 1.0 and not any(additive)
        width_rate = dict(comps.width_rates)
        widths = (width_rate.get(s, 0.0) / (1.0 + d) for s, d in zip(self._widths, additive[1:], strict=True))
        additive_rates = (comps.op_rate, *widths)  # the widths' per unit of relative change from the base scale
        measured = list(feedback.peak_memory_bytes)
        saved = bool(measured) and feedback.peak_memory_source == "saved_tensors"  # compare like with like
        base = comps.predicted
        base_peaks: Sequence[float] = base.peak_memory_bytes
        if saved or not uncalibrated:
            result = simulate(plan, batch, self._cost, record_events=False, saved_tensor_peaks=saved)
            base = result.predicted
            base_peaks = result.saved_tensor_peak_bytes if saved else base.peak_memory_bytes
        calibrated_peaks: Sequence[float] = comps.predicted.peak_memory_bytes
        if saved:  # uncalibrated, the calibrated cost is the base one
            calibrated_peaks = base_peaks if uncalibrated else self._saved_tensor_peaks(plan, batch, comps_cost)
        states = self._state_bytes(plan)
        reserve = self._cost.memory_reserve_bytes
        base_act = tuple(p - reserve - s for p, s in zip(base_peaks, states, strict=True))
        measured_act = tuple(m - s for m, s in zip(measured, states, strict=True)) if measured else ()
        observation = _Observation(
            step=feedback.step,
            rates=comps.rates,
            fixed_s=comps.fixed_s,
            additive_rates=additive_rates,
            additive_at=additive,
            measured_s=feedback.measured_iteration_s,
            base_activation=base_act,
            measured_activation=measured_act,
        )
        error = StepError(
            step=feedback.step,
            plan_id=plan.plan_id,
            measured_s=feedback.measured_iteration_s,
            planned_s=plan.predicted.iteration_s,
            base_s=base.iteration_s,
            calibrated_s=comps.predicted.iteration_s,
            measured_peak_bytes=max(measured) if measured else None,
            base_peak_bytes=_peak_less_reserve(base_peaks, reserve),
            calibrated_peak_bytes=_peak_less_reserve(calibrated_peaks, reserve),
        )
        with self._lock:
            _append_replacing(self._window, observation, lambda o: o.step == feedback.step)
            _append_replacing(self._errors, error, lambda e: e.step == feedback.step)
            self.steps_observed += 1
            self._refit()
            return self._profile()

    def summary(self, *, profile_version: int | None = None) -> CalibrationSummary:
        """Scales and prediction errors over the last `error_steps` steps."""
        with self._lock:
            errors = list(self._errors)
            fit = self._fit
            scales = {**self._scales, "activation_memory": self._memory_scale}
            op_overhead = self._calibrated_op_overhead()
            widths = {str(s): scale for s, scale in self._calibrated_widths().items()}
        memory = [e for e in errors if e.measured_peak_bytes]
        return CalibrationSummary(
            steps_observed=self.steps_observed,
            window=self.settings.window,
            base_profile=self.base.name,
            profile_version=profile_version,
            scales=scales,
            op_overhead_s=max(op_overhead, 0.0),
            lane_width_scales=widths,
            uniform_scale=fit.uniform_scale if fit else 1.0,
            residual_scale=fit.residual_scale if fit else 0.0,
            error_steps=len(errors),
            step_time_mape_base=mape([e.base_s for e in errors], [e.measured_s for e in errors]),
            step_time_mape_calibrated=mape([e.calibrated_s for e in errors], [e.measured_s for e in errors]),
            step_time_mape_planned=mape([e.planned_s for e in errors], [e.measured_s for e in errors]),
            peak_memory_mape_base=mape(
                [e.base_peak_bytes or 0.0 for e in memory], [e.measured_peak_bytes or 0.0 for e in memory]
            ),
            peak_memory_mape_calibrated=mape(
                [e.calibrated_peak_bytes or 0.0 for e in memory], [e.measured_peak_bytes or 0.0 for e in memory]
            ),
            recent=errors,
        )

    # --- internals -----------------------------------------------------------------------------------------------

    def _calibrated_op_overhead(self) -> float:
        """The base profile's op overhead plus the fitted change (the caller holds the lock or is the fit)."""
        return self.base.op_overhead_s + self._additive[0]

    def _calibrated_widths(self) -> dict[int, float]:
        """Per measured SP degree, the fitted compute scale over the base's (the caller holds the lock)."""
        return {s: 1.0 + d for s, d in zip(self._widths, self._additive[1:], strict=True)}

    def _cost_at(self, memory_scale: float, additive: tuple[float, ...]) -> CostModel:
        if memory_scale == 1.0 and not any(additive):
            return self._cost
        profile = self._with_additive(scale_profile(self._cost.profile, {}, memory_scale), additive)
        return replace(self._cost, profile=profile)

    def _with_additive(self, profile: CostProfile, additive: tuple[float, ...]) -> CostProfile:
        """`profile` (the base's degrees and op overhead) with the additive changes applied."""
        op_delta, widths = additive[0], dict(zip(self._widths, additive[1:], strict=True))
        costs = tuple(
            c.model_copy(
                update={
                    "compute_scale": min(
                        max(c.compute_scale * (1.0 + widths.get(c.sp_degree, 0.0)), MIN_SP_COMPUTE_SCALE),
                        MAX_SP_COMPUTE_SCALE,
                    )
                }
            )
            for c in profile.sp_degree_costs
        )
        return profile.model_copy(
            update={"op_overhead_s": max(profile.op_overhead_s + op_delta, 0.0), "sp_degree_costs": costs}
        )

    def _profile(self) -> CostProfile:
        if self.steps_observed == 0:
            return self.base
        described = ", ".join(f"{g} x{v:.3g}" for g, v in self._scales.items())
        described += "".join(f", SP-{s} compute x{scale:.3g}" for s, scale in self._calibrated_widths().items())
        op_overhead = self._calibrated_op_overhead()
        profile = scale_profile(
            self.base,
            self._scales,
            self._memory_scale,
            name=f"calibrated:{self.base.name}",
            source=f"{self.base.source}; calibrated on {self.steps_observed} step(s): {described}, "
            f"activation memory x{self._memory_scale:.3g}, op overhead {op_overhead * 1e3:.3g} ms",
        )
        return self._with_additive(profile, self._additive)

    def _refit(self) -> None:
        window = list(self._window)
        base = self.base.op_overhead_s
        op_bounds = (-base, MAX_LAYER_OVERHEAD_S - base) if self.settings.op_overhead else (0.0, 0.0)
        lo, hi = self.settings.lane_width_bounds
        self._fit = fit_group_scales(
            [o.rates for o in window],
            [o.fixed_s - sum(x * r for x, r in zip(o.additive_at, o.additive_rates, strict=True)) for o in window],
            [o.measured_s for o in window],
            self.settings.fit,
            additive=[o.additive_rates for o in window],
            additive_bounds=[op_bounds] + [(lo - 1.0, hi - 1.0)] * len(self._widths),
        )
        self._scales = dict(zip(GROUPS, self._fit.scales, strict=True))
        self._additive = self._fit.additive
        if self.settings.memory:
            pairs = [p for o in window for p in zip(o.measured_activation, o.base_activation, strict=False)]
            if pairs:
                self._memory_scale = robust_ratio(
                    [m for m, _ in pairs], [b for _, b in pairs], self.settings.memory_bounds
                )

    def _state_bytes(self, plan: Plan) -> list[float]:
        """Per rank, the model states the cost model predicts under the plan's options."""
        cost = replace(self._cost, options=plan.options)
        topology = Topology.of(cost.cluster, plan.pipeline.num_stages)
        per_stage = [
            cost.model_state_bytes(p, plan.pipeline, topology.stage_block_size) for p in range(plan.pipeline.num_stages)
        ]
        return [per_stage[topology.stage_of(r)] for r in range(cost.cluster.num_devices)]


def _append_replacing(queue: deque[T], item: T, same: Callable[[T], bool]) -> None:
    """Append `item`, first dropping an entry for the same step (a retried feedback report replaces it)."""
    kept = [x for x in queue if not same(x)]
    if len(kept) != len(queue):
        queue.clear()
        queue.extend(kept)
    queue.append(item)


def _peak_less_reserve(peaks: Sequence[float], reserve: float) -> float | None:
    return max(peaks) - reserve if peaks else None


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float | None:
    """Mean absolute percentage error (as a fraction) over pairs with a positive measurement; None without any."""
    pairs = [(p, m) for p, m in zip(predicted, measured, strict=True) if m > 0]
    if not pairs:
        return None
    return float(np.mean([abs(p - m) / m for p, m in pairs]))
