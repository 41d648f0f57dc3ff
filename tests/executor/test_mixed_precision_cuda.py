"""Mixed precision on CUDA per the executor contract: fp32 master parameters and gradients, bf16 compute
(autocast for ZeRO-0/1/2, FSDP2's MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32) for ZeRO-3).

Each case runs one step on a one-rank NCCL group and checks the dtypes the contract prices (parameters, their
gradients and AdamW state in fp32; the forward in bf16) and that the loss and gradients are the fp32 reference's
to bf16 accuracy (a wrongly kept fp32 compute path or a bf16 gradient would not be caught by dtypes alone).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from executor.parallel.groups import create_process_groups
from executor.runner import ExecutorConfig, PlanExecutor
from executor.verify.reference import ReferenceTrainer
from executor.verify.synthetic_tokens import SyntheticTokens
from proto.batch import Batch
from tests.executor.executor_fixtures import (
    at_zero_stage,
    cpu_cluster,
    make_plan,
    tiny_model,
    with_recompute_scope,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bf16 mixed precision is CUDA-only)"),
]

BF16_TOL = 3e-2
"""bf16 has an 8-bit mantissa (~4e-3 per rounding); a 2-layer model's loss and gradients stay within a few %."""


@pytest.fixture
def one_gpu_world(tmp_path: Path):  # type: ignore[no-untyped-def]
    dist.init_process_group("nccl", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    torch.cuda.set_device(0)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_bf16_compute_over_fp32_states(zero: int, one_gpu_world: None) -> None:
    cluster, model = cpu_cluster(1, 1), tiny_model(num_layers=2)
    batch = Batch(seq_ids=[3, 5], lengths=[40, 17])
    plan = at_zero_stage(make_plan(batch, cluster, model, [([0], [[3], [5]])]), zero)
    groups = create_process_groups(cluster, [1])
    config = ExecutorConfig(seed=1, dtype=torch.float32, device="cuda", zero_stage=zero, compute_dtype=torch.bfloat16)
    executor = PlanExecutor(model=model, cluster=cluster, pipeline=plan.pipeline, groups=groups, config=config)
    seen: list[torch.dtype] = []
    hook = executor.module.layers["0"].mlp.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    tokens = SyntheticTokens(7, model.vocab_size)
    result = executor.forward_backward(plan, batch, tokens=tokens)
    hook.remove()
    assert seen and all(d == torch.bfloat16 for d in seen), seen  # the layers computed in bf16
    grads = executor.full_gradients()
    assert all(g.dtype == torch.float32 for g in grads.values())
    assert all(p.dtype == torch.float32 for p in executor.full_parameters().values())
    executor.optimizer_step()
    for state in executor.optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                assert value.dtype == torch.float32
    reference = ReferenceTrainer(model=model, seed=1, dtype=torch.float32).forward_backward(batch, tokens=tokens)
    assert abs(result.loss - reference.loss) <= BF16_TOL * abs(reference.loss)
    for name, g in grads.items():
        expected = reference.grads[name]
        assert float((g.cpu() - expected).norm()) <= BF16_TOL * max(float(expected.norm()), 1e-6), name


@pytest.mark.parametrize("zero", [0, 3])
def test_mlp_only_recompute_in_bf16_matches_whole_layer_recompute(zero: int, one_gpu_world: None) -> None:
    """The same plan with every layer recomputed, once whole (`layer`) and once its MLP half only (`mlp`), under bf16
    autocast (ZeRO-0) and FSDP2 mixed precision (ZeRO-3): the same loss and gradients to bf16 accuracy, and the
    MLP-only step holds more activation memory than the whole-layer one (its attention halves stay) and less than
    no recompute."""
    from proto.plan import RecomputeScope

    cluster, model = cpu_cluster(1, 1), tiny_model(num_layers=2)
    batch = Batch(seq_ids=[3, 5], lengths=[400, 170])
    layers = model.num_layers
    results = {}
    for name, recompute, scope in (
        ("none", [[0, 0]], RecomputeScope.LAYER),
        ("layer", [[layers, layers]], RecomputeScope.LAYER),
        ("mlp", [[layers, layers]], RecomputeScope.MLP),
    ):
        plan = make_plan(batch, cluster, model, [([0], [[3], [5]])], recompute=recompute)
        plan = at_zero_stage(with_recompute_scope(plan, scope), zero)
        groups = create_process_groups(cluster, [1])
        config = ExecutorConfig(
            seed=1, dtype=torch.float32, device="cuda", zero_stage=zero, compute_dtype=torch.bfloat16
        )
        executor = PlanExecutor(model=model, cluster=cluster, pipeline=plan.pipeline, groups=groups, config=config)
        result = executor.forward_backward(plan, batch, tokens=SyntheticTokens(7, model.vocab_size))
        results[name] = (result, {k: v.cpu() for k, v in executor.full_gradients().items()})
    whole, mlp = results["layer"], results["mlp"]
    assert abs(mlp[0].loss - whole[0].loss) <= BF16_TOL * abs(whole[0].loss)
    for key, g in mlp[1].items():
        expected = whole[1][key]
        assert float((g - expected).norm()) <= BF16_TOL * max(float(expected.norm()), 1e-6), key
    held = {name: r.peak_activation_bytes for name, (r, _) in results.items()}
    assert held["layer"] < held["mlp"] < held["none"], held
