"""What calibration reports: prediction errors over the last steps before and after calibration.

Pydantic only (no simulator import), so the service's response schemas and its typed client can carry it.
"Before" is the base profile's prediction (the preset, or the measured or PUT profile calibration started from);
"after" is the calibrated profile's prediction of each step made *before* that step was observed, i.e. out of
sample, as the planner would have predicted the step had it planned with the calibrated profile. Memory is
compared without the profile's reserve (what an allocator or the CPU probe can see).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StepError(BaseModel):
    """One observed step: measured against each prediction (memory as the maximum over ranks)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: int | None
    plan_id: str
    measured_s: float
    planned_s: float = Field(description="The plan's own prediction (whatever profile it was made with).")
    base_s: float = Field(description="Predicted with the base profile.")
    calibrated_s: float = Field(description="Predicted with the profile calibrated on the earlier steps.")
    measured_peak_bytes: float | None = None
    base_peak_bytes: float | None = None
    calibrated_peak_bytes: float | None = None


class CalibrationSummary(BaseModel):
    """A job's calibration state and its prediction errors over the last `error_steps` steps."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps_observed: int = Field(ge=0, description="Feedback reports used since calibration (re)started.")
    window: int = Field(ge=1, description="Steps the fit uses (the most recent).")
    base_profile: str = Field(description="Name of the profile calibration scales.")
    profile_version: int | None = Field(default=None, description="Stored profile version of the calibrated profile.")
    scales: dict[str, float] = Field(
        default_factory=dict,
        description="Per coefficient group, calibrated / base (time: >1 slower than believed); "
        "'activation_memory': measured / predicted activation bytes.",
    )
    op_overhead_s: float = Field(
        default=0.0, ge=0, description="Calibrated fixed seconds of one pipeline op (`CostProfile.op_overhead_s`)."
    )
    lane_width_scales: dict[str, float] = Field(
        default_factory=dict,
        description="Per SP degree the base profile measured (`sp_degree_costs`), the calibrated compute scale over "
        "the base one.",
    )
    uniform_scale: float = Field(description="The median measured/predicted ratio of the window (one factor).")
    residual_scale: float = Field(description="Robust σ of the fit's relative residuals.")
    error_steps: int = Field(ge=0, description="Steps the errors below cover (the most recent).")
    step_time_mape_base: float | None = Field(default=None, description="Mean |pred − meas|/meas, base profile.")
    step_time_mape_calibrated: float | None = Field(default=None, description="The same, calibrated (out of sample).")
    step_time_mape_planned: float | None = Field(default=None, description="The same, the plans' own predictions.")
    peak_memory_mape_base: float | None = None
    peak_memory_mape_calibrated: float | None = None
    recent: list[StepError] = Field(default_factory=list)
