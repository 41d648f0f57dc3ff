"""Checkpoints with `torch.distributed.checkpoint` (DCP): model, optimizer, LR schedule, data position, RNG.

Layout: `<dir>/step-00000042/` holds DCP's shard files and `.metadata` plus `train_state.json` (the step to run
next, the sampler position, the scheduler state, the job id and its pipeline degree). Every rank writes its own
shard in one collective save into `step-…​.partial`; rank 0 then adds `train_state.json` and renames the folder,
so a folder without `.partial` is complete: a run killed mid-save leaves only a `.partial` folder, which is
ignored (and replaced by the next save of that step).

Parameter names are global (`layers.5.attn.wq.weight`), so the stages of a pipeline write disjoint keys and the
replicas of a stage block write the same keys (DCP stores one copy). Optimizer state goes by parameter name
when torch can map it (plain AdamW, FSDP2 for ZeRO-3); a ZeRO-1/2 flat shard is saved per rank as bytes, which
restores only on the same world size and pipeline degree (`train_state.json` records them and resume checks them).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

STEP_PREFIX = "step-"
PARTIAL_SUFFIX = ".partial"
TRAIN_STATE_FILE = "train_state.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, damaged or made for another job layout."""


@dataclass(frozen=True, kw_only=True)
class TrainState:
    """Everything besides tensors that a resumed run needs to continue exactly where the saved one stood."""

    next_step: int
    data_position: dict[str, int]
    scheduler: dict[str, Any]
    job_id: str | None
    num_stages: int
    world_size: int
    extra: dict[str, Any] = field(default_factory=dict)
    layer_ranges: list[list[int]] | None = None
    """[first, last) layers of each stage the saved executors held (None in checkpoints from before the split was
    a job decision: the even split)."""

    def split(self) -> list[tuple[int, int]] | None:
        return [(int(a), int(b)) for a, b in self.layer_ranges] if self.layer_ranges is not None else None

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT_VERSION, **self.__dict__}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: Path) -> TrainState:
        try:
            raw = json.loads(text)
            if raw.pop("format") != FORMAT_VERSION:
                raise CheckpointError(f"{where}: checkpoint format is not {FORMAT_VERSION}")
            return cls(**raw)
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{where}: {TRAIN_STATE_FILE} is damaged ({exc})") from None


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"{STEP_PREFIX}{step:08d}"


def find_latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest step under `root`, or None."""
    if not root.is_dir():
        return None
    complete = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(STEP_PREFIX) and not p.name.endswith(PARTIAL_SUFFIX)
    ]
    return max(complete, key=lambda p: p.name, default=None)


def _optimizer_by_name(optimizer: torch.optim.Optimizer) -> bool:
    """Whether torch can key this optimizer's state by parameter name (not a ZeRO-1/2 flat shard)."""
    return type(optimizer).__name__ not in {"ZeroRedundancyOptimizer", "ShardedAdamW"}


def _shard_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer holding this rank's shard of the state (ZeroRedundancyOptimizer wraps it)."""
    return getattr(optimizer, "optim", optimizer)


def _tensors(module: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> dict[str, Any]:
    state: dict[str, Any] = {"model": get_model_state_dict(module), "rng": {f"rank{rank}": torch.get_rng_state()}}
    if _optimizer_by_name(optimizer):
        state["optim"] = get_optimizer_state_dict(module, optimizer)
    else:
        inner = _shard_optimizer(optimizer).state_dict()  # this rank's shard of the state
        buffer = io.BytesIO()
        torch.save(inner, buffer)
        state["optim_shard"] = {f"rank{rank}": torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)}
    return state


def save_checkpoint(
    root: Path, state: TrainState, *, module: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int
) -> Path:
    """Collective: every rank calls it with its own module and optimizer. Returns the completed folder."""
    rank = dist.get_rank()
    final = checkpoint_dir(root, step)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    dcp.save(_tensors(module, optimizer, rank), checkpoint_id=str(partial))
    if rank == 0:
        (partial / TRAIN_STATE_FILE).write_text(state.to_json())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    dist.barrier()
    return final


def load_checkpoint(
    path: Path,
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    world_size: int,
    num_stages: int,
    layer_ranges: Sequence[tuple[int, int]] | None = None,
) -> TrainState:
    """Collective: restore this rank's module, optimizer and RNG from `path`; return the saved `TrainState`."""
    meta = path / ".metadata"
    state_file = path / TRAIN_STATE_FILE
    if not meta.is_file() or not state_file.is_file():
        missing = ".metadata" if not meta.is_file() else TRAIN_STATE_FILE
        raise CheckpointError(f"{path} is not a complete checkpoint (missing {missing})")
    train_state = TrainState.from_json(state_file.read_text(), path)
    if train_state.num_stages != num_stages:
        raise CheckpointError(f"{path} was saved with P={train_state.num_stages}; this run uses P={num_stages}")
    saved_split = train_state.split()
    if layer_ranges is not None and saved_split is not None and saved_split != [tuple(r) for r in layer_ranges]:
        raise CheckpointError(f"{path} was saved with layers {saved_split}; this run builds {list(layer_ranges)}")
    by_name = _optimizer_by_name(optimizer)
    if not by_name and train_state.world_size != world_size:
        raise CheckpointError(
            f"{path} holds ZeRO-1/2 optimizer shards of {train_state.world_size} ranks; this run has {world_size}"
        )
    rank = dist.get_rank()
    target = _tensors(module, optimizer, rank)
    try:
        if not by_name:  # the saved shard's byte size, from the checkpoint's own metadata
            saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata[f"optim_shard.rank{rank}"]
            target["optim_shard"][f"rank{rank}"] = torch.empty(saved.size, dtype=torch.uint8)  # type: ignore[union-attr]
        dcp.load(target, checkpoint_id=str(path))
    except Exception as exc:  # DCP raises CheckpointException/RuntimeError/KeyError for damaged or foreign files
        raise CheckpointError(f"{path} cannot be loaded ({type(exc).__name__}: {exc})") from None
    set_model_state_dict(module, target["model"])
    if by_name:
        set_optimizer_state_dict(module, optimizer, target["optim"])
    else:
        raw = target["optim_shard"][f"rank{rank}"].numpy().tobytes()
        _shard_optimizer(optimizer).load_state_dict(torch.load(io.BytesIO(raw), weights_only=True))
    torch.set_rng_state(target["rng"][f"rank{rank}"])
    return train_state
