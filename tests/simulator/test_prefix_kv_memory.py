"""Memory of a sliced sequence when the attention kernel saves the concatenated prefix K/V.

Guards against the review's finding that the fused GPU attention path saves, for a slice, the concatenation of the
earlier slices' K/V with its own (`executor.attention.backends._packed_with_context`, a new tensor the kernel keeps for
backward) while the memory timeline counted only the slice's own K/V: a helix plan predicted to fit an 80 GiB
device needed several GiB more. The second test checks that assumption against what the executor's attention
really saves (the exact SDPA path on CPU keeps the pieces by reference; the fused CUDA kernels a new tensor).
"""

from __future__ import annotations

import pytest
import torch

from executor.attention.backends import resolve_backend, varlen_causal_attention
from executor.attention.prefix import prefix_attention
from planner_service.cost_model import CostModel
from planner_service.simulator import simulate
from proto import Batch, Chunk, Lane, ModelSpec, PipelineSpec, Plan, Segment
from tests.cost_model.hand_specs import hand_cluster, hand_plan, hand_profile, ops

CLUSTER = hand_cluster(1, 1)
MODEL = ModelSpec(
    name="t", num_layers=2, hidden_size=64, num_heads=8, num_kv_heads=2, ffn_hidden_size=128, vocab_size=256
)
PROFILE = hand_profile(
    activation_bytes_per_token_layer=100.0,
    checkpoint_bytes_per_token_layer=10.0,
    kv_bytes_per_token_layer=8.0,
    attention_saves_prefix_kv=True,
)


def three_slices() -> tuple[Plan, Batch]:
    """One 3000-token sequence cut in three 1000-token slices, one device, F0 F1 F2 B2 B1 B0, no recompute."""
    batch = Batch.from_lengths([3000])
    chunks = [Chunk(segments=[Segment(seq_id=0, start=a, end=a + 1000)]) for a in (0, 1000, 2000)]
    lane = Lane(
        lane_id=0, sp_degree=1, ranks=[[0]], chunks=chunks, schedule=[ops("F0 F1 F2 B2 B1 B0")], recompute=[[0, 0, 0]]
    )
    plan = hand_plan(CLUSTER, MODEL, batch, PipelineSpec.even(2, 1), [lane])
    return plan, batch


def test_peak_of_a_sliced_sequence_counts_the_concatenated_prefix_kv() -> None:
    """Per chunk, 2 layers: activations 1000 x 100 B x 2 = 200,000. Slice 1 also keeps [slice 0; slice 1] K/V,
    2000 rows x 8 B x 2 layers = 32,000; slice 2 keeps 3000 rows: 48,000. Working memory: 1000 x 100 B, plus for a
    slice with a prefix 2 copies (concatenation, gradient) of one layer's [prefix; own] K/V: 32,000 for slice 1,
    48,000 for slice 2. From B2 on, slices 0 and 1 (read by later slices) hold dK/dV accumulators: 1000 x 8 B x 2
    layers = 16,000 each.
    F2 holds 200,000 + 232,000 + 248,000 = 680,000; B2 adds 100,000 + 48,000 + 32,000 = 180,000: peak 860,000.
    Counting only each slice's own K/V (before the fix) gave 600,000 + 132,000 = 732,000."""
    plan, batch = three_slices()
    cost = CostModel.from_specs(CLUSTER, MODEL, PROFILE)
    states = cost.model_state_bytes(0, plan.pipeline, 1)
    assert simulate(plan, batch, cost).predicted.peak_memory_bytes == [pytest.approx(states + 860_000)]
    pieces = CostModel.from_specs(CLUSTER, MODEL, PROFILE.model_copy(update={"attention_saves_prefix_kv": False}))
    # a backend that keeps the prefix pieces by reference: held 600,000, working memory still 180,000
    assert simulate(plan, batch, pieces).predicted.peak_memory_bytes == [pytest.approx(states + 780_000)]


def saved_concatenation_bytes(attend: str, backend: str, device: str, dtype: torch.dtype) -> tuple[int, int]:
    """(bytes of new [prefix; own]-sized storages saved for backward, bytes of one K and one V concatenation).

    One segment of L = 96 tokens after a prefix of C = 160 tokens in two pieces, 2 heads of 64 (MHA, so no head
    is repeated). `attend`: "prefix" calls the executor's `prefix_attention`, "plain" the unwrapped
    `varlen_causal_attention` with the prefix already concatenated (which must show up: it checks the probe).
    """
    length, pieces, heads, dim = 96, (64, 96), 2, 64
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(rows: int) -> torch.Tensor:
        return torch.randn(rows, heads, dim, generator=gen, device=device, dtype=dtype).requires_grad_(True)

    q, k, v = rand(length), rand(length), rand(length)
    prefix = [(rand(n), rand(n)) for n in pieces]
    inputs = {t.untyped_storage().data_ptr() for t in (q, k, v, *(x for p in prefix for x in p))}
    one_copy = (length + sum(pieces)) * heads * dim * torch.tensor([], dtype=dtype).element_size()
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in inputs and storage.nbytes() == one_copy:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if attend == "prefix":
            out = prefix_attention(q, k, v, [0, length], [prefix], backend=backend)
        else:
            ctx = (torch.cat([p[0] for p in prefix]), torch.cat([p[1] for p in prefix]))
            out = varlen_causal_attention(q, k, v, [0, length], context_kv=[ctx], backend=backend)
    out.float().sum().backward()
    return sum(saved.values()), 2 * one_copy


def test_exact_cpu_attention_keeps_prefix_pieces_by_reference() -> None:
    """What `attention_saves_prefix_kv=False` describes: the executor's SDPA path saves no [prefix; own] copy.
    The same probe does see one where autograd keeps it (SDPA called directly on the concatenated keys)."""
    saved, _ = saved_concatenation_bytes("prefix", "sdpa", "cpu", torch.float64)
    assert saved == 0
    saved, expected = saved_concatenation_bytes("plain", "sdpa", "cpu", torch.float64)
    assert saved == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["torch_varlen", "flash"])
def test_fused_cuda_attention_saves_the_concatenated_prefix_kv(backend: str) -> None:
    """What the presets' `attention_saves_prefix_kv=True` describes: the fused kernels keep one [prefix; own] K and
    one V, (C + L) rows each, for backward."""
    try:
        resolve_backend(backend, torch.device("cuda"))
    except ValueError as exc:
        pytest.skip(str(exc))
    saved, expected = saved_concatenation_bytes("prefix", backend, "cuda", torch.bfloat16)
    assert saved == expected
