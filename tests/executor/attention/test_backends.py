"""Varlen causal attention backends against a naive per-segment reference, including K/V prefixes."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from executor.attention.backends import naive_causal_attention, resolve_backend, varlen_causal_attention

pytestmark = pytest.mark.timeout(60)


def _qkv(total: int, hq: int, hkv: int, d: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(total, h, d, generator=gen, dtype=torch.float64, requires_grad=True) for h in (hq, hkv, hkv)
    )


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return list(torch.autograd.grad((out * weight).sum(), inputs, retain_graph=True))


@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2), (4, 1)])
@pytest.mark.parametrize("pad", [0, 3])
def test_sdpa_matches_naive_on_packed_segments(hq: int, hkv: int, pad: int) -> None:
    """Looped SDPA equals naive attention per segment (GQA included); padding rows are zero with zero grad.

    Guards against masks leaking across packed sequences and against padding polluting real tokens."""
    lengths = [1, 7, 3, 12]
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    q, k, v = _qkv(bounds[-1] + pad, hq, hkv, 8, seed=1)
    out = varlen_causal_attention(q, k, v, bounds, backend="sdpa")
    expected = torch.cat([naive_causal_attention(q[a:b], k[a:b], v[a:b], 8**-0.5) for a, b in pairwise(bounds)])
    torch.testing.assert_close(out[: bounds[-1]], expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(out[bounds[-1] :], torch.zeros_like(out[bounds[-1] :]))
    got = _grads(out, [q, k, v], seed=2)
    ref = _grads(torch.cat([expected, out[bounds[-1] :]]), [q, k, v], seed=2)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for g in got:
        assert torch.equal(g[bounds[-1] :], torch.zeros_like(g[bounds[-1] :]))


def test_naive_reference_is_causal_softmax() -> None:
    """The naive reference itself: output row i is the softmax-weighted mean of values 0..i."""
    q, k, v = (t.detach() for t in _qkv(5, 1, 1, 4, seed=3))
    out = naive_causal_attention(q, k, v, 0.5)
    for i in range(5):
        w = torch.softmax((k[: i + 1, 0] @ q[i, 0]) * 0.5, dim=0)
        torch.testing.assert_close(out[i, 0], w @ v[: i + 1, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
def test_kv_prefix_is_lower_right_causal_and_matches_whole_sequence(backend: str) -> None:
    """A slice [C, C+L) attending to a K/V prefix of C tokens gives the rows the whole sequence gives.

    Lower-right alignment: query i of the slice sees keys up to C+i. Gradients flow into the prefix
    exactly as they flow into those keys in the whole sequence (needed for sliced sequences)."""
    hq, hkv, d = 4, 2, 8
    whole_len, cut = 19, 11
    q, k, v = _qkv(whole_len, hq, hkv, d, seed=4)
    whole = varlen_causal_attention(q, k, v, [0, whole_len], backend="naive")
    short = 3  # a second, unsliced segment packed after the slice
    qs, ks, vs = _qkv(short, hq, hkv, d, seed=5)
    q2 = torch.cat([q[cut:], qs])
    k2 = torch.cat([k[cut:], ks])
    v2 = torch.cat([v[cut:], vs])
    out = varlen_causal_attention(
        q2,
        k2,
        v2,
        [0, whole_len - cut, whole_len - cut + short],
        context_kv=[(k[:cut], v[:cut]), None],
        backend=backend,
    )
    torch.testing.assert_close(out[: whole_len - cut], whole[cut:], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        out[whole_len - cut :], varlen_causal_attention(qs, ks, vs, [0, short], backend="naive"), rtol=1e-12, atol=1e-12
    )
    # gradients w.r.t. the prefix keys equal the whole sequence's gradient contribution from rows >= cut
    weight = torch.randn(whole_len - cut, hq, d, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    g_slice = torch.autograd.grad((out[: whole_len - cut] * weight).sum(), [k, v])
    g_whole = torch.autograd.grad((whole[cut:] * weight).sum(), [k, v])
    for a, b in zip(g_slice, g_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_prefix_mask_shape() -> None:
    """Query i of a 3-token slice after a 2-token prefix sees exactly keys 0..2+i."""
    q = torch.zeros(3, 1, 2, dtype=torch.float64)
    k = torch.zeros(3, 1, 2, dtype=torch.float64)
    v = torch.arange(3, dtype=torch.float64).view(3, 1, 1).expand(3, 1, 2).contiguous()
    kc = torch.zeros(2, 1, 2, dtype=torch.float64)
    vc = torch.full((2, 1, 2), 10.0, dtype=torch.float64)
    out = varlen_causal_attention(q, k, v, [0, 3], context_kv=[(kc, vc)], backend="sdpa")
    # uniform weights over prefix (10, 10) and own values 0..i
    expected = [(20 + sum(range(i + 1))) / (3 + i) for i in range(3)]
    torch.testing.assert_close(out[:, 0, 0], torch.tensor(expected, dtype=torch.float64))


def test_backend_resolution() -> None:
    """auto is the exact SDPA path on CPU; CUDA-only backends are refused on CPU with a reason."""
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend("flash", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("magic", torch.device("cpu"))


@pytest.mark.parametrize("context", [0, 37])
def test_long_segments_in_query_blocks_match_naive(context: int) -> None:
    """Segments longer than one SDPA query block (and a prefix) still give exact causal attention."""
    from executor.attention.backends import SDPA_QUERY_BLOCK

    length = 2 * SDPA_QUERY_BLOCK + 21
    q, k, v = _qkv(length + 5, 4, 2, 8, seed=9)
    kc, vc = (t.detach().requires_grad_(True) for t in _qkv(context, 2, 2, 8, seed=10)[1:]) if context else (None, None)
    ctx = [(kc, vc) if context else None, None]
    bounds = [0, length, length + 5]
    out = varlen_causal_attention(q, k, v, bounds, context_kv=ctx, backend="sdpa")
    ref = varlen_causal_attention(q, k, v, bounds, context_kv=ctx, backend="naive")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    inputs = [q, k, v] + ([kc, vc] if context else [])
    for a, b in zip(_grads(out, inputs, seed=11), _grads(ref, inputs, seed=11), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _fake_flash_varlen(fa4: bool):  # type: ignore[no-untyped-def]
    """A stand-in for FlashAttention's varlen function with the named API's positional order and return value:
    flash-attn 4 takes `qv` fourth and returns (out, lse); flash-attn 2 takes cu_seqlens_q fourth and returns out.
    It computes with the naive reference, so the backend's packing and calling convention are what is tested."""

    def compute(q, k, v, cu_q, cu_k, scale, causal):  # type: ignore[no-untyped-def]
        assert causal and cu_q.dtype == cu_k.dtype == torch.int32
        qb, kb = cu_q.tolist(), cu_k.tolist()
        pieces = [
            naive_causal_attention(q[a:b], k[c:d], v[c:d], scale)
            for (a, b), (c, d) in zip(pairwise(qb), pairwise(kb), strict=True)
        ]
        return torch.cat(pieces)

    if fa4:

        def flash4(q, k, v, qv=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
                   softmax_scale=None, causal=False):  # type: ignore[no-untyped-def]  # fmt: skip
            assert qv is None
            out = compute(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal)
            return out, out.new_zeros(q.shape[1], q.shape[0])

        return flash4

    def flash2(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, softmax_scale=None,
               causal=False):  # type: ignore[no-untyped-def]  # fmt: skip
        assert dropout_p == 0.0
        return compute(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal)

    return flash2


@pytest.mark.parametrize("fa4", [False, True], ids=["flash-attn-2", "flash-attn-4"])
def test_flash_backend_calls_either_api(monkeypatch: pytest.MonkeyPatch, fa4: bool) -> None:
    """The "flash" implementation passes packed [prefix; own] K/V and int32 boundaries by keyword, so that it works
    with flash-attn 2's and flash-attn 4's different positional orders, and unwraps flash-attn 4's (out, lse)."""
    from executor.attention import backends

    monkeypatch.setattr(backends, "_flash_varlen", lambda: _fake_flash_varlen(fa4))
    bounds = [0, 3, 10, 14]
    q, k, v = _qkv(bounds[-1], 4, 2, 8, seed=5)
    kc, vc = (t.detach()[:5].clone() for t in _qkv(5, 2, 2, 8, seed=6)[1:])
    contexts = [None, (kc, vc), None]
    out = backends._IMPLEMENTATIONS["flash"](q, k, v, bounds, contexts, 8**-0.5)
    ref = varlen_causal_attention(q, k, v, bounds, context_kv=contexts, backend="naive")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_flash_module_search_falls_through_to_flash_attn_4(monkeypatch: pytest.MonkeyPatch) -> None:
    """flash-attn 4 installs `flash_attn` as a namespace holding only `cute`: the search must go on to
    `flash_attn.cute`; a kernel package that fails at import is skipped, not raised."""
    import sys
    import types

    from executor.attention import backends

    namespace = types.ModuleType("flash_attn")
    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_varlen_func = _fake_flash_varlen(True)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flash_attn", namespace)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    backends._flash_varlen.cache_clear()
    try:
        assert backends._flash_varlen() is cute.flash_attn_varlen_func  # type: ignore[attr-defined]

        def broken(name: str) -> types.ModuleType:
            raise RuntimeError(f"{name}: no CUDA driver")

        monkeypatch.setattr(backends.importlib, "import_module", broken)
        backends._flash_varlen.cache_clear()
        assert backends._flash_varlen() is None
        assert backends.flash_api() is None
    finally:
        backends._flash_varlen.cache_clear()


def test_fused_backends_get_half_inputs_or_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused kernels compute in fp16/bf16 only. Under autocast fp32 inputs are cast to autocast's dtype (as
    autocast itself would); without it "auto" falls back to exact SDPA and an explicit fused backend is refused."""
    from executor.attention import backends

    seen: list[torch.dtype] = []

    def fused(q, k, v, bounds, contexts, scale):  # type: ignore[no-untyped-def]
        seen.append(q.dtype)
        assert k.dtype == v.dtype == q.dtype and all(c is None or c[0].dtype == q.dtype for c in contexts)
        return backends._naive(q, k, v, bounds, contexts, scale)

    fused_on_cpu = {"auto": "torch_varlen", "torch_varlen": "torch_varlen"}  # as "auto" resolves on CUDA
    monkeypatch.setattr(backends, "resolve_backend", lambda backend, device: fused_on_cpu.get(backend, backend))
    monkeypatch.setitem(backends._IMPLEMENTATIONS, "torch_varlen", fused)
    q, k, v = (t.detach().float() for t in _qkv(9, 4, 2, 8, seed=7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = varlen_causal_attention(q, k, v, [0, 4, 9], backend="torch_varlen")
    assert seen == [torch.bfloat16] and out.dtype == torch.bfloat16
    exact = varlen_causal_attention(q, k, v, [0, 4, 9], backend="naive")
    torch.testing.assert_close(out.float(), exact, rtol=3e-2, atol=3e-2)
    assert varlen_causal_attention(q, k, v, [0, 4, 9], backend="auto").dtype == torch.float32
    assert seen == [torch.bfloat16]  # "auto" without autocast ran SDPA, not the fused kernel
    with pytest.raises(ValueError, match=r"takes float16 or bfloat16 inputs, got torch\.float32"):
        varlen_causal_attention(q, k, v, [0, 4, 9], backend="torch_varlen")
