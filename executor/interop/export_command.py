"""`helix export`: a `helix train` checkpoint -> a Hugging Face Llama checkpoint (`config.json` + safetensors).

Loaded by `planner_service.cli` from the `helix.commands` entry-point group. Reads the DCP checkpoint offline
(no process group: `dcp_to_torch_save` merges every rank's shards), keeps its model tensors (the stages' global
names merge into the whole model; a tied embedding appears once) and writes them under Hugging Face names.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import torch
import typer

from executor.interop.hf_llama import CheckpointFormatError, save_pretrained
from executor.train.checkpoint import PARTIAL_SUFFIX, find_latest_checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def register(app: typer.Typer) -> None:
    """Entry point of the `helix.commands` group: add `helix export` to the CLI."""
    app.command("export")(export_command)


def model_state_from_checkpoint(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model tensors of a DCP checkpoint folder (`step-…`) or of the latest complete one under a root."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder = checkpoint if (checkpoint / ".metadata").is_file() else find_latest_checkpoint(checkpoint)
    if folder is None or folder.name.endswith(PARTIAL_SUFFIX) or not (folder / ".metadata").is_file():
        raise CheckpointFormatError(
            f"{checkpoint}: no complete helix train checkpoint (a step-* folder with .metadata)"
        )
    with tempfile.TemporaryDirectory(prefix="helix-export-") as tmp:
        merged = Path(tmp) / "merged.pt"
        dcp_to_torch_save(str(folder), str(merged))
        state = torch.load(merged, weights_only=False, map_location="cpu")
    model = state.get("model")
    if not isinstance(model, dict) or not model:
        raise CheckpointFormatError(f"{folder}: the checkpoint holds no model tensors")
    return model


def export_command(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="A helix train checkpoint folder (step-*) or its --checkpoint-dir.")
    ],
    model: Annotated[str, typer.Option("--model", "-m", help="The model it trained: preset name or JSON file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for config.json and model.safetensors.")],
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="Cast the weights (float32, bfloat16, float16, float64).")
    ] = None,
) -> None:
    """Write a trained model as a Hugging Face Llama checkpoint.

    Example: helix export --checkpoint runs/ckpt --model tiny --out runs/hf-tiny
    """
    from planner_service.presets import resolve_model

    if dtype is not None and dtype not in DTYPES:
        raise typer.BadParameter(f"{dtype!r}; choose one of {', '.join(DTYPES)}", param_hint="--dtype")
    spec = resolve_model(model)
    try:
        state = model_state_from_checkpoint(checkpoint)
        folder = save_pretrained(state, spec, out, DTYPES[dtype] if dtype else None)
    except CheckpointFormatError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=1) from err
    typer.echo(f"wrote {folder / 'config.json'} and {folder / 'model.safetensors'} ({len(state)} tensors)")
