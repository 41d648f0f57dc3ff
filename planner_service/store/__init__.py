"""Persistence for the planner service: jobs, per-step plans, feedback and cost profiles (SQLite)."""

from planner_service.store.sqlite_store import (
    FeedbackRecord,
    JobRecord,
    PlanConflictError,
    PlanRecord,
    PlanStore,
    StoreError,
)

__all__ = ["FeedbackRecord", "JobRecord", "PlanConflictError", "PlanRecord", "PlanStore", "StoreError"]
