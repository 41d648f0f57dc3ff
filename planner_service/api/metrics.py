"""Prometheus metrics of one app, in the app's own CollectorRegistry.

A per-app registry (not prometheus_client's global one) lets several apps live in one process — the
tests build many — without "duplicated timeseries" errors, and keeps `/metrics` about this app only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ERROR_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
RATIO_BUCKETS = (0.5, 0.67, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0)


@dataclass
class ServiceMetrics:
    """The service's instruments; `solves` is also what the tests count to prove coalescing."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        self.plan_latency = Histogram(
            "helix_plan_latency_seconds",
            "Wall time to answer a plan request (solve, cache hit or coalesced wait).",
            ["kind", "source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.solve_seconds = Histogram(
            "helix_solve_seconds", "Wall time of one make_plan call.", ["strategy"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.solves = Counter("helix_solves", "make_plan calls (one per solved plan).", ["kind"], registry=r)
        self.solver_status = Counter(
            "helix_solver_status", "Plans by solver status (optimal, feasible, heuristic, fallback, ...).",
            ["status"], registry=r,
        )  # fmt: skip
        self.cache_hits = Counter("helix_plan_cache_hits", "Per-step plans answered from the store.", registry=r)
        self.coalesced = Counter(
            "helix_plan_coalesced", "Per-step plan requests that waited on an identical in-flight solve.", registry=r
        )
        self.conflicts = Counter("helix_plan_conflicts", "Per-step plan requests with another batch (409).", registry=r)
        self.solves_in_flight = Gauge("helix_solves_in_flight", "Solves running in the worker pool.", registry=r)
        self.queue_length = Gauge(
            "helix_solve_queue_length", "Solves waiting for a worker (admission queue).", registry=r
        )
        self.queue_wait = Histogram(
            "helix_solve_queue_wait_seconds", "Time a solve waited in the admission queue for a worker.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "helix_solve_rejected", "Solves refused with 503 busy ('queue' full, or the 'job' has its share).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.abandoned = Counter(
            "helix_solve_abandoned", "Solves whose worker was killed ('deadline') or died ('crash').",
            ["reason"], registry=r,
        )  # fmt: skip
        self.predicted_ratio = Histogram(
            "helix_measured_to_predicted_ratio",
            "Measured / predicted iteration time from step feedback.",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.last_ratio = Gauge(
            "helix_last_measured_to_predicted_ratio", "Latest measured / predicted ratio (any job).", registry=r
        )
        self.calibration_observations = Counter(
            "helix_calibration_observations", "Feedback reports taken into online calibration.", registry=r
        )
        self.calibrated_profiles = Counter(
            "helix_calibrated_profiles", "Refined profiles stored by online calibration.", registry=r
        )
        self.step_time_mape = Gauge(
            "helix_step_time_mape",
            "Mean |predicted - measured| / measured step time over the last steps of the job that reported last, "
            "by profile: base (before calibration), calibrated (after, out of sample), planned (the plans' own).",
            ["profile"],
            registry=r,
        )
        self.prediction_error = Histogram(
            "helix_step_time_relative_error",
            "|predicted / measured - 1| of each observed step, by profile (base or calibrated).",
            ["profile"],
            buckets=ERROR_BUCKETS,
            registry=r,
        )

    def solve_count(self, kind: str) -> float:
        """Solves so far of one kind ('stateless', 'job_step', 'job_decision')."""
        value = self.registry.get_sample_value("helix_solves_total", {"kind": kind})
        return value or 0.0
