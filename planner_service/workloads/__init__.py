"""Workloads: where the sequence lengths of a global batch come from.

A lengths file (one integer per line), a synthetic model of a published corpus, or the Python standard
library's own source files; ``load_workload`` turns any of them into one seeded, truncated ``proto.Batch``.
"""

from planner_service.workloads.lengths_file import WorkloadError, read_lengths
from planner_service.workloads.sampling import STDLIB_DATASET, load_workload, sample_batch
from planner_service.workloads.stdlib_lengths import stdlib_lengths
from planner_service.workloads.synthetic import DATASETS, sample_synthetic

__all__ = [
    "DATASETS",
    "STDLIB_DATASET",
    "WorkloadError",
    "load_workload",
    "read_lengths",
    "sample_batch",
    "sample_synthetic",
    "stdlib_lengths",
]
