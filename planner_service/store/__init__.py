"""Persistence for the planner service: jobs, per-step plans, step claims, feedback and cost profiles, on a
SQLite file (default) or PostgreSQL (`postgresql://...`, several planner processes share it)."""

from planner_service.store.plan_store import PlanStore, Retention
from planner_service.store.records import (
    FeedbackRecord,
    JobRecord,
    PlanConflictError,
    PlanRecord,
    StepClaim,
    StoreError,
    StoreUsage,
    compress_plan,
)

__all__ = [
    "FeedbackRecord",
    "JobRecord",
    "PlanConflictError",
    "PlanRecord",
    "PlanStore",
    "Retention",
    "StepClaim",
    "StoreError",
    "StoreUsage",
    "compress_plan",
]
