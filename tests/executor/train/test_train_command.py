"""`helix train` from the command line: user errors, the contract of a service-backed run, and planning
fallbacks. Runs the real CLI (which starts torchrun) against a real `helix serve` process on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from planner_service.local_service import LocalService, free_port
from tests.executor.train.train_cases import records_of, write_stdlib_corpus

REQUIRED = {"step", "loss", "tokens", "plan_source", "predicted_s", "measured_s", "strategy"}
CONTRACT_ARGS = ["--cluster", "cpu-2x2", "--model", "tiny", "--strategy", "helix", "--steps", "6"]
CONTRACT_ARGS += ["--batch-size", "8", "--max-len", "2048", "--seed", "1"]


def helix(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "planner_service.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stdlib_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/no/such/dir"], "does not exist"),
        (["--planner", "localhost:8000"], "is not a planner URL"),
        (["--planner", "ftp://x"], "is not a planner URL"),
        (["--strategy", "fastest"], "unknown strategy 'fastest'"),
        (["--resume"], "resuming needs --checkpoint-dir"),
    ],
)
def test_user_errors_exit_2_with_one_line(corpus: Path, args: list[str], message: str) -> None:
    base = ["train", "--cluster", "cpu-2x2", "--model", "tiny", "--data", str(corpus)]
    result = helix(*base, *args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_empty_corpus_and_missing_checkpoint_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = helix("train", "-c", "cpu-2x2", "-m", "tiny", "--data", str(tmp_path / "empty"), timeout=60)
    assert result.returncode == 2 and "has no readable text files" in result.stderr, result.stderr
    (tmp_path / "doc.txt").write_text("some text " * 50)
    result = helix(
        "train", "-c", "cpu-2x2", "-m", "tiny", "--data", str(tmp_path / "doc.txt"), timeout=60
    )  # a plain text file is not a corpus
    assert result.returncode == 2 and "not .jsonl" in result.stderr, result.stderr
    result = helix(
        "train", "-c", "cpu-2x2", "-m", "tiny", "--data", str(tmp_path), "--resume",
        "--checkpoint-dir", str(tmp_path / "ckpt"), timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "no complete checkpoint" in result.stderr, result.stderr


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_service_backed_run_meets_the_contract(corpus: Path, tmp_path: Path) -> None:
    """The documented contract: 4 ranks started by `helix train` itself, plans from the service, one JSON object
    per step with the required fields, exit 0; the loss of a real run falls."""
    metrics = tmp_path / "run.jsonl"
    with LocalService(tmp_path / "plans.db") as service:
        result = helix(
            "train", *CONTRACT_ARGS, "--data", str(corpus), "--planner", service.url, "--metrics", str(metrics),
            "--cache-dir", str(tmp_path / "cache"), "--plot", str(tmp_path / "run.png"),
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = records_of(metrics)
    assert [r["step"] for r in records] == list(range(6))
    for r in records:
        assert set(r) >= REQUIRED, set(r)
        assert r["plan_source"] == "service" and r["strategy"] == "helix"
        assert r["predicted_s"] > 0 and r["measured_s"] > 0 and r["tokens"] > 0
        assert len(r["peak_memory_bytes"]) == 4
    assert len({r["num_stages"] for r in records}) == 1
    assert sum(r["loss"] for r in records[-2:]) < sum(r["loss"] for r in records[:2])
    assert (tmp_path / "run.png").stat().st_size > 0
    assert "loss first -> last" in result.stdout  # the final table


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_unreachable_planner_falls_back_for_every_step(corpus: Path, tmp_path: Path) -> None:
    """Nothing listens on the URL: every step is planned in-process (by rank 0, then broadcast), counted."""
    metrics = tmp_path / "run.jsonl"
    result = helix(
        "train", *CONTRACT_ARGS[:-6], "--steps", "3", "--batch-size", "6", "--max-len", "512", "--data", str(corpus),
        "--planner", f"http://127.0.0.1:{free_port()}", "--metrics", str(metrics), "--cache-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = records_of(metrics)
    assert [r["plan_source"] for r in records] == ["fallback"] * 3
    assert all("service failed" in r["fallback_reason"] for r in records)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_init_starts_from_a_hugging_face_checkpoint(corpus: Path, tmp_path: Path) -> None:
    """`--init DIR` takes the model's shape from DIR/config.json and every stage's weights from its safetensors
    (P = 2: each rank reads only its stage). With lr 0 one step changes nothing, so the checkpoint written after
    it must hold exactly the Hugging Face weights (seed 7), not the run's own initialisation (seed 0)."""
    import torch

    from executor.interop.hf_llama import save_pretrained
    from executor.model import build_stage
    from planner_service.presets import MODELS
    from tests.executor.train.train_cases import final_parameters

    weights = build_stage(MODELS["tiny"], seed=7).state_dict()
    hf_dir = save_pretrained(weights, MODELS["tiny"], tmp_path / "hf")
    result = helix(
        "train", "--cluster", "cpu-2x2", "--init", str(hf_dir), "--data", str(corpus), "--steps", "1",
        "--lr", "0", "--stages", "2", "--strategy", "greedy", "--batch-size", "4", "--max-len", "128",
        "--cache-dir", str(tmp_path / "cache"), "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    params = final_parameters(tmp_path / "ckpt" / "step-00000001", tmp_path)
    assert set(params) == set(weights)
    for name, value in weights.items():
        assert torch.equal(params[name], value), name


def test_init_must_be_a_checkpoint_folder(corpus: Path, tmp_path: Path) -> None:
    result = helix("train", "-c", "cpu-2x2", "--init", str(tmp_path), "--data", str(corpus), timeout=60)
    assert result.returncode == 2 and "no config.json" in result.stderr, result.stderr


def test_a_job_pins_the_plans_zero_stage_to_its_own(tmp_path: Path) -> None:
    """The executor shards model states once per job, so a job never asks for plans the planner may raise to
    another ZeRO stage (a plan at another stage would be refused at its first step)."""
    from executor.train.config import TrainConfig
    from planner_service.presets import CLUSTERS, MODELS
    from proto import PlanOptions, ZeroStage

    config = TrainConfig(
        cluster=CLUSTERS["cpu-2x2"],
        model=MODELS["tiny"],
        data=tmp_path,
        options=PlanOptions(zero_stage=ZeroStage.OPTIMIZER),
    )
    assert config.options.zero_stage == config.options.max_zero_stage == ZeroStage.OPTIMIZER
