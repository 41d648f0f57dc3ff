"""Workloads: lengths files, synthetic corpora, stdlib lengths, batch sampling and the CLI entry point.

Guards against: parse errors that do not point at the offending line, synthetic corpora drifting from the
published statistics they claim to model, and non-deterministic or mis-truncated batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from planner_service.workloads import (
    DATASETS,
    WorkloadError,
    load_workload,
    read_lengths,
    sample_batch,
    sample_synthetic,
    stdlib_lengths,
)
from planner_service.workloads.synthetic import PROFILES

# <repo>/../shared/data/wikipedia-lengths.txt; parents[2] is the repo root.
WIKIPEDIA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "wikipedia-lengths.txt"


# ---- lengths files -------------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "lengths.txt"
    p.write_bytes(text.encode())
    return p


def test_read_lengths_accepts_whitespace_and_trailing_blank_lines(tmp_path: Path) -> None:
    p = _write(tmp_path, " 12\n3 \r\n\t4096\n\n  \n")
    assert read_lengths(p) == [12, 3, 4096]
    assert read_lengths(str(_write(tmp_path, "7"))) == [7]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("", 1, "file is empty"),
        ("\n \n", 1, "file is empty"),
        ("5\n6\nabc\n7\n", 3, "expected one positive integer per line, got 'abc'"),
        ("5\n2.5\n", 2, "got '2.5'"),
        ("5\n6\n0\n", 3, "positive integer, got 0"),
        ("1\n2\n3\n-4\n", 4, "positive integer, got '-4'"),
        ("1\n\n2\n", 2, "blank line"),
        ("\n1\n", 1, "blank line"),
        ("1\n2 3\n", 2, "got '2 3'"),
        ("1\n1_000\n", 2, "got '1_000'"),
    ],
)
def test_read_lengths_errors_name_file_and_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(WorkloadError) as info:
        read_lengths(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}:{line}: "), msg
    assert fragment in msg
    assert "\n" not in msg


def test_read_lengths_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match=r"nope\.txt: cannot read lengths file"):
        read_lengths(tmp_path / "nope.txt")


def test_read_lengths_wikipedia_statistics() -> None:
    """The measured statistics quoted in DESIGN §1 and synthetic.py's docstring."""
    if not WIKIPEDIA.is_file():
        pytest.skip(f"{WIKIPEDIA} not present")
    a = np.asarray(read_lengths(WIKIPEDIA))
    assert a.size == 1_000_000
    assert (int(a.min()), int(a.max()), float(np.median(a))) == (1, 1_823_777, 347.0)
    assert a.mean() == pytest.approx(1013.64878)
    assert (a <= 8192).mean() == pytest.approx(0.98401)
    assert a[a > 8192].sum() / a.sum() == pytest.approx(0.27465, abs=5e-5)
    assert (a > 32768).mean() == pytest.approx(0.001304)


# ---- synthetic corpora ---------------------------------------------------------------------------------

N_SAMPLES = 200_000


def _stats(dataset: str) -> tuple[np.ndarray, int]:
    a = np.asarray(sample_synthetic(dataset, N_SAMPLES, np.random.default_rng(0)))
    return a, int(a.sum())


def test_synthetic_github_matches_published_statistics() -> None:
    """HelixTrain proposal §1.5: 91.5% <= 8K; 0.6% > 64K holding 21.6% of tokens.

    Tolerances are ~4 standard deviations over seeds (measured: 0.07% / 2.8% / 3.1% relative).
    """
    a, total = _stats("github")
    assert (a <= 8192).mean() == pytest.approx(0.915, abs=0.003)
    assert (a > 65536).mean() == pytest.approx(0.006, rel=0.12)
    assert a[a > 65536].sum() / total == pytest.approx(0.216, rel=0.13)


def test_synthetic_wikipedia_matches_measured_statistics() -> None:
    """Measured on shared/data/wikipedia-lengths.txt (see synthetic.py): median 347, mean 1013.6, 98.40% <= 8K,
    the rest holding 27.46% of tokens, 0.130% > 32K holding 7.55%."""
    a, total = _stats("wikipedia")
    assert (a <= 8192).mean() == pytest.approx(0.9840, abs=0.001)
    assert a[a > 8192].sum() / total == pytest.approx(0.2746, rel=0.08)
    assert float(np.median(a)) == pytest.approx(347, rel=0.03)
    assert a.mean() == pytest.approx(1013.6, rel=0.04)
    assert (a > 32768).mean() == pytest.approx(0.0013, rel=0.25)
    assert a[a > 32768].sum() / total == pytest.approx(0.0755, rel=0.3)
    assert a.max() <= 1_823_777


def test_synthetic_commoncrawl_matches_chosen_targets() -> None:
    """Approximate targets read off FlexSP's histogram: 99.0% <= 8K, 16% of tokens above 8K, 0.05% > 64K."""
    a, total = _stats("commoncrawl")
    assert (a <= 8192).mean() == pytest.approx(0.990, abs=0.001)
    assert a[a > 8192].sum() / total == pytest.approx(0.16, rel=0.12)
    assert (a > 65536).mean() == pytest.approx(0.0005, rel=0.4)
    assert float(np.median(a)) == pytest.approx(600, rel=0.03)
    assert a.max() <= 1 << 18


@pytest.mark.parametrize("dataset", DATASETS)
def test_synthetic_is_deterministic_positive_ints(dataset: str) -> None:
    first = sample_synthetic(dataset, 5000, np.random.default_rng(7))
    assert first == sample_synthetic(dataset, 5000, np.random.default_rng(7))
    assert first != sample_synthetic(dataset, 5000, np.random.default_rng(8))
    assert all(type(x) is int for x in first)
    assert min(first) >= 1
    hi = max(b.hi for b in PROFILES[dataset].bands)
    assert max(first) <= hi


def test_synthetic_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'c4'; expected one of github, commoncrawl, wikipedia"):
        sample_synthetic("c4", 10, np.random.default_rng(0))


# ---- stdlib lengths ------------------------------------------------------------------------------------


def test_stdlib_lengths_is_real_sorted_and_deterministic(tmp_path: Path) -> None:
    lengths = stdlib_lengths()
    assert len(lengths) > 200
    assert min(lengths) >= 1
    assert lengths == stdlib_lengths()
    # a tiny tree checks ceil(bytes / 4), path order, and the skips
    (tmp_path / "b.py").write_bytes(b"x" * 9)  # 3 tokens
    (tmp_path / "a.py").write_bytes(b"x" * 4)  # 1 token
    (tmp_path / "empty.py").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"x" * 100)
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "site-packages" / "third.py").write_bytes(b"x" * 100)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_bytes(b"x" * 17)  # 5 tokens
    assert stdlib_lengths(tmp_path) == [1, 3, 5]


# ---- sampling ------------------------------------------------------------------------------------------


def test_sample_batch_deterministic_and_without_replacement() -> None:
    population = list(range(1, 1001))
    a = sample_batch(population, 100, seed=3, max_len=None)
    assert a == sample_batch(population, 100, seed=3, max_len=None)
    assert a.lengths != sample_batch(population, 100, seed=4, max_len=None).lengths
    assert a.seq_ids == list(range(100))
    assert len(set(a.lengths)) == 100  # distinct values: no sequence drawn twice
    expected = np.asarray(population)[np.random.default_rng(3).choice(1000, size=100, replace=False)]
    assert a.lengths == expected.tolist()


def test_sample_batch_with_replacement_when_population_is_small() -> None:
    b = sample_batch([5, 6, 7], 10, seed=0, max_len=None)
    assert len(b.lengths) == 10 and set(b.lengths) <= {5, 6, 7}
    assert b.seq_ids == list(range(10))


def test_sample_batch_truncates_to_max_len() -> None:
    b = sample_batch([10, 100, 1000, 10_000], 4, seed=1, max_len=500)
    assert sorted(b.lengths) == [10, 100, 500, 500]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"batch_size": 0, "max_len": None}, "--batch-size must be >= 1, got 0"),
        ({"batch_size": 4, "max_len": 0}, "--max-len must be >= 1"),
    ],
)
def test_sample_batch_option_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(WorkloadError, match=fragment):
        sample_batch([1, 2, 3], seed=0, **kwargs)


def test_sample_batch_empty_population() -> None:
    with pytest.raises(WorkloadError, match="population is empty"):
        sample_batch([], 4, seed=0, max_len=None)


# ---- load_workload -------------------------------------------------------------------------------------


def test_load_workload_from_file(tmp_path: Path) -> None:
    p = _write(tmp_path, "\n".join(str(n) for n in range(1, 51)) + "\n")
    b = load_workload(lengths_path=str(p), dataset=None, batch_size=8, seed=2, max_len=40)
    assert b == sample_batch(list(range(1, 51)), 8, seed=2, max_len=40)
    assert max(b.lengths) <= 40


def test_load_workload_datasets() -> None:
    g = load_workload(lengths_path=None, dataset="github", batch_size=64, seed=1, max_len=32768)
    assert g.lengths == [min(x, 32768) for x in sample_synthetic("github", 64, np.random.default_rng(1))]
    s = load_workload(lengths_path=None, dataset="stdlib", batch_size=32, seed=1, max_len=None)
    assert s == sample_batch(stdlib_lengths(), 32, seed=1, max_len=None)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"lengths_path": None, "dataset": None}, r"exactly one of --lengths .* or --dataset"),
        ({"lengths_path": "x.txt", "dataset": "github"}, r"exactly one of --lengths .* or --dataset"),
        (
            {"lengths_path": None, "dataset": "c4"},
            r"--dataset 'c4' is not known; .*github, commoncrawl, wikipedia, stdlib",
        ),
    ],
)
def test_load_workload_source_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(WorkloadError, match=fragment):
        load_workload(batch_size=4, seed=0, max_len=None, **kwargs)


def test_load_workload_option_errors() -> None:
    with pytest.raises(WorkloadError, match="--batch-size"):
        load_workload(lengths_path=None, dataset="github", batch_size=0, seed=0, max_len=None)
    with pytest.raises(WorkloadError, match="--max-len"):
        load_workload(lengths_path=None, dataset="github", batch_size=4, seed=0, max_len=-1)
