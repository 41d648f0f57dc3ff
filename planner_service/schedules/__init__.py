"""Pipeline schedules: the per-stage order of forward/backward ops of a lane."""

from planner_service.schedules.pipeline_schedule import backward_order, build_schedule, max_in_flight

__all__ = ["backward_order", "build_schedule", "max_in_flight"]
