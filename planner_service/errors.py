"""Errors a user can cause while planning; each names the input field and the fix."""

from __future__ import annotations


class PlanningError(ValueError):
    """The workload cannot be planned as asked (a user-facing, one-line message)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InfeasibleWorkload(PlanningError):
    """No layout of this cluster can run the batch (e.g. a sequence too long for any lane)."""


class UnknownStrategy(PlanningError):
    """The strategy name is not registered."""
