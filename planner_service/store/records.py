"""What the plan store holds and answers: frozen records, claim outcomes and the store's errors.

Plans are kept gzip-compressed (`plan_gz`); `PlanRecord.plan_json` gives back the exact bytes that were
returned when the plan was made, so a stored plan is byte-identical to the planning response.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any, Literal


class StoreError(RuntimeError):
    """The store cannot be opened or used (a damaged or unreachable database, a failed write)."""


class PlanConflictError(Exception):
    """A different batch was already planned (or is being planned) for this (job, step)."""

    def __init__(self, job_id: str, step: int, stored_fingerprint: str) -> None:
        super().__init__(f"job {job_id} step {step} was already planned for another batch ({stored_fingerprint})")
        self.stored_fingerprint = stored_fingerprint


def compress_plan(plan_json: bytes) -> bytes:
    """gzip with a zero timestamp: the same plan always compresses to the same bytes (and can be sent as-is
    with `Content-Encoding: gzip`)."""
    return gzip.compress(plan_json, compresslevel=6, mtime=0)


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    created_at: float
    spec: dict[str, Any]
    decisions: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PlanRecord:
    """One step's plan. `plan_gz` is None once retention pruned the step (a tombstone: the step existed)."""

    job_id: str
    step: int
    batch_fingerprint: str
    plan_id: str
    predicted_s: float
    plan_gz: bytes | None
    raw_size: int
    """Bytes of the uncompressed plan JSON."""

    @classmethod
    def of_json(
        cls, *, job_id: str, step: int, batch_fingerprint: str, plan_id: str, predicted_s: float, plan_json: bytes
    ) -> PlanRecord:
        return cls(
            job_id=job_id,
            step=step,
            batch_fingerprint=batch_fingerprint,
            plan_id=plan_id,
            predicted_s=predicted_s,
            plan_gz=compress_plan(plan_json),
            raw_size=len(plan_json),
        )

    @property
    def pruned(self) -> bool:
        return self.plan_gz is None

    @property
    def plan_json(self) -> bytes:
        """The exact plan bytes that were returned when the plan was made."""
        assert self.plan_gz is not None, f"job {self.job_id} step {self.step} was pruned by the retention policy"
        return gzip.decompress(self.plan_gz)


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    step: int
    plan_id: str
    measured_s: float
    predicted_s: float | None


@dataclass(frozen=True, slots=True)
class StepClaim:
    """The outcome of asking to plan (job, step): solve it (`claimed`), wait for the process that holds the
    claim (`held`), or use the plan already stored (`stored`)."""

    state: Literal["claimed", "held", "stored"]
    stored: PlanRecord | None = None


@dataclass(frozen=True, slots=True)
class StoreUsage:
    """Size of the stored plans, for the load bench and /metrics."""

    plans: int
    pruned: int
    raw_bytes: int
    stored_bytes: int
