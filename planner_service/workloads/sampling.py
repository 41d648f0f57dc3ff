"""Turn a length population into one global batch, the way a data loader would.

Why: the planner is driven by the lengths of one iteration's global batch. Sampling is seeded
(``numpy.random.default_rng(seed)``) so a CLI run, a benchmark and a test see the same batch for the same
arguments, and long sequences are truncated to ``max_len`` exactly as a loader with a context limit does.
``load_workload`` is the single entry point the CLI uses for ``--lengths`` / ``--dataset``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from planner_service.workloads.lengths_file import WorkloadError, read_lengths
from planner_service.workloads.stdlib_lengths import stdlib_lengths
from planner_service.workloads.synthetic import DATASETS, sample_synthetic
from proto import Batch

STDLIB_DATASET = "stdlib"
"""Dataset name for the Python standard library's source-file lengths (see ``stdlib_lengths``)."""


def _check_options(batch_size: int, max_len: int | None) -> None:
    if batch_size < 1:
        raise WorkloadError(f"--batch-size must be >= 1, got {batch_size}")
    if max_len is not None and max_len < 1:
        raise WorkloadError(f"--max-len must be >= 1 (or omitted for no limit), got {max_len}")


def _to_batch(lengths: np.ndarray, max_len: int | None) -> Batch:
    if max_len is not None:
        lengths = np.minimum(lengths, max_len)
    return Batch.from_lengths([int(x) for x in lengths])


def sample_batch(lengths: Sequence[int], batch_size: int, seed: int, max_len: int | None) -> Batch:
    """Draw ``batch_size`` lengths from ``lengths`` and truncate each to ``max_len``.

    Without replacement when ``batch_size <= len(lengths)``, with replacement otherwise. ``seq_ids`` are
    ``0..batch_size-1`` in sampled order. Deterministic in ``seed``.
    """
    _check_options(batch_size, max_len)
    population = np.asarray(lengths, dtype=np.int64)
    if population.size == 0:
        raise WorkloadError("the length population is empty; nothing to sample a batch from")
    if population.ndim != 1 or int(population.min()) < 1:
        raise WorkloadError("every length in the population must be a positive integer")
    rng = np.random.default_rng(seed)
    idx = rng.choice(population.size, size=batch_size, replace=batch_size > population.size)
    return _to_batch(population[idx], max_len)


def load_workload(
    *, lengths_path: str | None, dataset: str | None, batch_size: int, seed: int, max_len: int | None
) -> Batch:
    """One global batch from a lengths file (``--lengths``) or a named dataset (``--dataset``).

    Exactly one source must be given. Datasets: the synthetic corpus models (``github``, ``commoncrawl``,
    ``wikipedia``), drawn directly with ``default_rng(seed)``, or ``stdlib`` (Python source-file lengths),
    sampled like a lengths file.
    """
    if (lengths_path is None) == (dataset is None):
        raise WorkloadError("give exactly one of --lengths (a lengths file) or --dataset (a dataset name)")
    _check_options(batch_size, max_len)
    if lengths_path is not None:
        return sample_batch(read_lengths(lengths_path), batch_size, seed, max_len)
    assert dataset is not None
    if dataset == STDLIB_DATASET:
        return sample_batch(stdlib_lengths(), batch_size, seed, max_len)
    if dataset not in DATASETS:
        choices = ", ".join((*DATASETS, STDLIB_DATASET))
        raise WorkloadError(f"--dataset {dataset!r} is not known; choose one of: {choices}")
    drawn = sample_synthetic(dataset, batch_size, np.random.default_rng(seed))
    return _to_batch(np.asarray(drawn, dtype=np.int64), max_len)
