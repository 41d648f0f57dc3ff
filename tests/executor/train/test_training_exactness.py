"""The core guarantee over whole training runs: plans that change strategy (and so lanes, slices, chunking and
recompute) every step train exactly as one process would, in float64 on CPU with gloo.

The reference is `ReferenceTrainer` on the same batches (same sampler, same corpus token ids) with the same
AdamW, warm-up + cosine schedule and global-norm clipping. Guards against anything that makes a parallel step
differ from a plain one: a per-lane mean, a gradient summed twice across replicas, a clip norm that counts
replicas, a schedule that steps at the wrong time, a checkpoint that loses a stage.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from executor.data.batches import BatchSampler, DataPosition
from executor.data.dataset import prepare_dataset
from executor.parallel.data import AdamWConfig
from executor.train.config import TrainConfig
from executor.train.lr_schedule import WarmupCosine
from executor.verify.launch import launch_local
from executor.verify.reference import ReferenceTrainer
from planner_service.presets import CLUSTERS, MODELS
from tests.executor.train.train_cases import final_parameters, train_rank, write_stdlib_corpus

STEPS = 5
TOLERANCE = 1e-9


def _config(tmp: Path, corpus: Path, stages: int) -> TrainConfig:
    return TrainConfig(
        cluster=CLUSTERS["cpu-2x2"],
        model=MODELS["tiny"],
        data=corpus,
        cache_dir=tmp / "cache",
        max_len=96,
        batch_size=6,
        seed=3,
        steps=STEPS,
        stages=stages,
        dtype="float64",
        lr=1e-2,
        warmup_steps=2,
        grad_clip=0.5,  # small enough that clipping is active on some steps
        checkpoint_dir=tmp / f"ckpt-p{stages}",
        checkpoint_every=STEPS,
    )


def _reference(config: TrainConfig) -> tuple[list[float], dict[str, torch.Tensor], list[float]]:
    dataset = prepare_dataset(
        config.data, vocab_size=config.model.vocab_size, max_len=config.max_len, cache_dir=config.cache_dir
    )
    sampler = BatchSampler(dataset.table, config.seed, batch_size=config.batch_size)
    trainer = ReferenceTrainer(
        model=config.model,
        seed=config.seed,
        optimizer_config=AdamWConfig(lr=config.lr, weight_decay=config.weight_decay),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        trainer.optimizer,
        WarmupCosine(warmup_steps=config.warmup_steps, total_steps=config.steps, min_ratio=config.min_lr_ratio),
    )
    position, losses, norms = DataPosition(), [], []
    for _ in range(config.steps):
        batch = sampler.next_batch(position)
        position = batch.position_after
        step = trainer.forward_backward(batch.batch(), tokens=dataset.tokens())
        losses.append(step.loss)
        norms.append(float(torch.nn.utils.clip_grad_norm_(trainer.module.parameters(), config.grad_clip)))
        trainer.optimizer_step()
        schedule.step()
    return losses, trainer.parameters(), norms


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("stages", "strategies"),
    [(1, ("static", "flexsp", "helix", "greedy", "static")), (2, ("infinipipe", "static", "helix", "greedy"))],
    ids=["P1", "P2"],
)
def test_strategy_mixing_run_equals_single_process_training(
    tmp_path: Path, stages: int, strategies: tuple[str, ...]
) -> None:
    corpus = write_stdlib_corpus(tmp_path / "corpus")
    config = _config(tmp_path, corpus, stages)
    results = launch_local(train_rank, (config, strategies), world_size=config.cluster.num_devices)
    records = results[0]["records"]
    assert [r["strategy"] for r in records] == [strategies[s % len(strategies)] for s in range(STEPS)]
    assert {r["num_stages"] for r in records} == {stages}
    ref_losses, ref_params, ref_norms = _reference(config)
    for record, ref_loss, ref_norm in zip(records, ref_losses, ref_norms, strict=True):
        print(  # the table the closing notes quote (pytest -s)
            f"P={stages} step {record['step']} {record['strategy']:>10}: loss {record['loss']:.15f} "
            f"reference {ref_loss:.15f} rel. err {abs(record['loss'] - ref_loss) / abs(ref_loss):.1e}"
        )
        assert abs(record["loss"] - ref_loss) <= TOLERANCE * abs(ref_loss), (record["step"], record["loss"], ref_loss)
        assert abs(record["grad_norm"] - ref_norm) <= TOLERANCE * ref_norm, (record["step"], record["grad_norm"])
    assert any(n > config.grad_clip for n in ref_norms), "the clip never acted: the test would not see a bad norm"
    params = final_parameters(config.checkpoint_dir / f"step-{STEPS:08d}", tmp_path)  # type: ignore[operator]
    assert set(params) == set(ref_params)
    for name, ref in ref_params.items():
        err = float((params[name] - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        assert err <= TOLERANCE, (name, err)
