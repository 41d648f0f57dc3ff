"""CUDA attention backends (flash-attn varlen, torch's fused varlen) against the exact SDPA path.

Skipped without a CUDA device. Checks packed segments, GQA, padding rows and a K/V prefix (lower-right
causal alignment, which the slices of Executor II rely on) in bf16 against float32 SDPA.
"""

from __future__ import annotations

import pytest
import torch

from executor.attention.backends import resolve_backend, varlen_causal_attention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

BACKENDS = ["torch_varlen", "flash"]


def _available(backend: str) -> bool:
    try:
        resolve_backend(backend, torch.device("cuda"))
    except ValueError:
        return False
    return True


def _inputs(total: int, context: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shapes = [(total, 8, 64), (total, 2, 64), (total, 2, 64), (context, 2, 64), (context, 2, 64)]
    return tuple(torch.randn(s, generator=gen, device="cuda", dtype=torch.float32) for s in shapes)


def test_auto_picks_a_fused_backend_on_cuda() -> None:
    assert resolve_backend("auto", torch.device("cuda")) in {"flash", "torch_varlen"} or not any(
        _available(b) for b in BACKENDS
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("context", [0, 50])
def test_fused_backend_matches_sdpa(backend: str, context: int) -> None:
    if not _available(backend):
        pytest.skip(f"{backend} is not available here")
    bounds = [0, 1, 38, 238, 243]
    pad = 5
    q, k, v, kc, vc = _inputs(bounds[-1] + pad, context, seed=context + 1)
    weight = torch.randn_like(q)

    def run(name: str, dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
        leaves = [t.to(dtype).requires_grad_(True) for t in (q, k, v, kc, vc)]
        ctx = [None, None, (leaves[3], leaves[4]) if context else None, None]
        out = varlen_causal_attention(*leaves[:3], bounds, context_kv=ctx, backend=name)
        wanted = leaves if context else leaves[:3]
        grads = torch.autograd.grad((out.float() * weight).sum(), wanted)
        return out.float(), [g.float() for g in grads]

    out, grads = run(backend, torch.bfloat16)
    ref, ref_grads = run("sdpa", torch.float32)
    assert torch.equal(out[bounds[-1] :], torch.zeros_like(out[bounds[-1] :]))
    torch.testing.assert_close(out, ref, atol=3e-2, rtol=3e-2)
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, rg, atol=6e-2, rtol=6e-2)
