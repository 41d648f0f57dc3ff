"""Event-driven simulator of a plan: predicted time, per-rank peak memory and the Gantt timeline."""

from planner_service.simulator.pipeline_simulator import (
    SimulationError,
    SimulationResult,
    TimelineEvent,
    simulate,
)

__all__ = ["SimulationError", "SimulationResult", "TimelineEvent", "simulate"]
