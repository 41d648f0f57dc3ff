"""`helix export` as the CLI loads it: a `helix train` DCP checkpoint becomes a Hugging Face checkpoint that
loads back into the same weights, and a folder without a checkpoint is a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import typer
from typer.testing import CliRunner

from executor.interop.export_command import register
from executor.interop.hf_llama import load_pretrained_stage
from executor.model import build_stage
from executor.train.checkpoint import TrainState, save_checkpoint
from tests.executor.executor_fixtures import plugin_app, tiny_model

pytestmark = pytest.mark.timeout(120)


def _app() -> typer.Typer:
    return plugin_app(register)


def test_export_round_trips_a_training_checkpoint(tmp_path: Path) -> None:
    spec = tiny_model(num_layers=2, tie_embeddings=True)
    model_file = tmp_path / "model.json"
    model_file.write_text(spec.model_dump_json())
    stage = build_stage(spec, seed=4)
    optimizer = torch.optim.AdamW(stage.parameters())
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        state = TrainState(next_step=3, data_position={}, scheduler={}, job_id=None, num_stages=1, world_size=1)
        save_checkpoint(tmp_path / "ckpt", state, module=stage, optimizer=optimizer, step=3)
    finally:
        dist.destroy_process_group()
    out = tmp_path / "hf"
    args = ["export", "--checkpoint", str(tmp_path / "ckpt"), "--model", str(model_file), "--out", str(out)]
    result = CliRunner().invoke(_app(), [*args, "--dtype", "float64"])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    loaded = build_stage(spec, seed=99, dtype=torch.float64)
    load_pretrained_stage(loaded, out)
    for (name, a), (_, b) in zip(stage.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a.double(), b), name


def test_export_without_a_checkpoint_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _app(), ["export", "--checkpoint", str(tmp_path), "--model", "tiny", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "no complete helix train checkpoint" in result.output and "Traceback" not in result.output
