"""The executor implements exactly what `proto.capabilities.TORCH_EXECUTOR` declares, combination by combination:
every declared ZeRO stage builds its model states and every undeclared one is refused; tied embeddings build on a
later stage; the attention backends and dtypes agree. (The planner side: tests/planner/test_executor_capabilities.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from executor.attention.backends import BACKENDS
from executor.model import build_stage
from executor.parallel.data import AdamWConfig
from executor.parallel.zero.model_states import StatesConfig, build_model_states
from executor.runner import ExecutorConfig, refuse_unsupported
from proto.capabilities import TORCH_EXECUTOR
from proto.plan import ZeroStage
from tests.executor.executor_fixtures import tiny_model

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def one_rank_world(tmp_path: Path):  # type: ignore[no-untyped-def]
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("zero", range(5))
def test_every_declared_zero_stage_builds_and_no_other(zero: int, one_rank_world: None) -> None:
    declared = zero in {int(z) for z in TORCH_EXECUTOR.zero_stages}
    config = ExecutorConfig(zero_stage=zero)
    if not declared:
        with pytest.raises(ValueError, match=f"zero_stage={zero}"):
            refuse_unsupported(config)
        return
    refuse_unsupported(config)
    from torch.distributed.device_mesh import DeviceMesh

    states = build_model_states(
        build_stage(tiny_model(), seed=0, dtype=torch.float64),
        config=StatesConfig(zero_stage=zero),
        optimizer=AdamWConfig(),
        dp_group=None,
        mesh=DeviceMesh.from_group(dist.group.WORLD, "cpu") if zero == 3 else None,
        tie_group=None,
    )
    assert states.state_bytes() > 0


def test_tied_embeddings_across_stages_as_declared() -> None:
    spec = tiny_model(num_layers=2, tie_embeddings=True)
    last = build_stage(spec, seed=0, layer_range=(1, 2))
    assert TORCH_EXECUTOR.tied_embeddings_across_stages
    first = build_stage(spec, seed=0, layer_range=(0, 1))
    assert last.embed is not None and last.lm_head is None
    assert first.embed is not None and torch.equal(first.embed.weight, last.embed.weight)  # same init by name


def test_attention_backends_and_dtypes_as_declared() -> None:
    assert set(BACKENDS) == set(TORCH_EXECUTOR.attention_backends)
    for backend in ("auto", "sdpa", "no-such-kernel"):
        config = ExecutorConfig(attention_backend=backend)
        if backend in TORCH_EXECUTOR.attention_backends:
            refuse_unsupported(config)
        else:
            with pytest.raises(ValueError, match="attention_backend"):
                refuse_unsupported(config)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        name = str(dtype).removeprefix("torch.")
        if name in TORCH_EXECUTOR.parameter_dtypes:
            refuse_unsupported(ExecutorConfig(dtype=dtype))
        else:
            with pytest.raises(ValueError, match="dtype="):
                refuse_unsupported(ExecutorConfig(dtype=dtype))
    assert "bfloat16" in TORCH_EXECUTOR.compute_dtypes
    with pytest.raises(ValueError, match="mixed precision runs on CUDA"):  # bf16 compute is a CUDA feature
        refuse_unsupported(ExecutorConfig(compute_dtype=torch.bfloat16, device="cpu"))


def test_zero_stage_enum_is_covered() -> None:
    """Every ZeRO stage the wire contract can express is declared (so no plan option is silently unrunnable)."""
    assert set(TORCH_EXECUTOR.zero_stages) == set(ZeroStage)
