"""Token-level pipelining inside one process (no process group): a stage running a lane's schedule with
sliced sequences, K/V cache leaves and recompute gives the whole-sequence gradients; the input-saving
attention is exact; the memory probe counts saved tensors once per storage and frees them after backward."""

from __future__ import annotations

import pytest
import torch

from executor.attention import varlen_causal_attention
from executor.chunk_shards import total_targets
from executor.kv_cache import ChunkKVBinding, SliceKVCache
from executor.memory_probe import ActivationMemoryProbe
from executor.model import build_stage, named_gradients
from executor.pipeline_runtime import StageRunSettings, StageRuntime
from executor.plan_role import RankRole
from executor.prefix_attention import prefix_attention
from executor.reference import reference_step
from planner_service.schedules import build_schedule
from proto.batch import Batch
from proto.plan import Chunk, Lane, Segment
from tests.executor.executor_fixtures import tiny_model

pytestmark = pytest.mark.timeout(120)

SEED, TOKEN_SEED = 3, 11


def _lane(chunks: list[list[tuple[int, int, int]]], recompute: list[int]) -> Lane:
    built = [Chunk(segments=[Segment(seq_id=q, start=a, end=b) for q, a, b in spec]) for spec in chunks]
    return Lane(
        lane_id=0, sp_degree=1, ranks=[[0]], chunks=built, schedule=build_schedule(built, 1), recompute=[recompute]
    )


def _run_lane(batch: Batch, lane: Lane, num_layers: int = 3) -> tuple[float, dict[str, torch.Tensor], int]:
    model = tiny_model(num_layers=num_layers)
    module = build_stage(model, seed=SEED, dtype=torch.float64)
    runtime = StageRuntime(
        module=module,
        lane=lane,
        role=RankRole(rank=0, lane_id=0, lane_index=0, stage=0, num_stages=1, sp_rank=0, sp_ranks=(0,)),
        sp_group=None,
        lengths=batch.length_of(),
        token_seed=TOKEN_SEED,
        loss_norm=total_targets(batch.length_of()),
        settings=StageRunSettings(
            dtype=torch.float64, device="cpu", attention_backend="sdpa", vocab_size=model.vocab_size, recv_timeout_s=5
        ),
    )
    result = runtime.run()
    return result.local_loss, dict(named_gradients(module)), result.peak_activation_bytes


@pytest.mark.parametrize("recompute", [[0, 0, 0, 0], [3, 3, 3, 3], [1, 3, 0, 2]], ids=["none", "all", "mixed"])
def test_sliced_sequence_matches_whole_sequence(recompute: list[int]) -> None:
    """Sequence 1 in 3 uneven slices across chunks (the last one a hybrid chunk with a short sequence),
    backward last-first: loss and every gradient equal the whole-sequence reference."""
    batch = Batch(seq_ids=[1, 2, 3], lengths=[70, 5, 9])
    lane = _lane([[(3, 0, 9)], [(1, 0, 31)], [(1, 31, 40)], [(1, 40, 70), (2, 0, 5)]], recompute)
    loss, grads, _ = _run_lane(batch, lane)
    ref = reference_step(tiny_model(num_layers=3), batch, seed=SEED, token_seed=TOKEN_SEED)
    assert abs(loss - ref.loss) <= 1e-12 * abs(ref.loss)
    for name, g in ref.grads.items():
        assert torch.allclose(grads[name], g, rtol=0, atol=1e-12 * float(g.abs().max())), name


def test_recompute_keeps_the_cached_leaves_and_their_gradients() -> None:
    """A recomputed layer re-runs `bind` in backward: it must reuse the recorded leaves (same objects, same
    values), never replace a leaf that already holds dK/dV from a later slice."""
    cache = SliceKVCache()
    lengths = {5: 12}
    binding = ChunkKVBinding(
        cache=cache,
        segments=(Segment(seq_id=5, start=0, end=7),),
        cu_seqlens=(0, 7),
        lengths=lengths,
        first_layer=4,
        recompute_layers=1,
    )
    k, v = torch.randn(7, 2, 4, dtype=torch.float64), torch.randn(7, 2, 4, dtype=torch.float64)
    binding.bind(4, k, v)
    (entry,) = cache._entries[(5, 0)].values()
    entry.k.grad = torch.ones_like(entry.k)
    binding.bind(4, k * 2, v * 2)  # what a recomputation with different values would try to record
    again = cache._entries[(5, 0)][4]
    assert again is entry and torch.equal(entry.k, k) and torch.equal(entry.k.grad, torch.ones_like(k))
    assert entry.k.untyped_storage().data_ptr() != k.untyped_storage().data_ptr()  # a recomputed layer copies
    later = ChunkKVBinding(
        cache=cache,
        segments=(Segment(seq_id=5, start=7, end=12),),
        cu_seqlens=(0, 5),
        lengths=lengths,
        first_layer=4,
        recompute_layers=0,
    )
    _, _, prefixes = later.bind(4, k[:5], v[:5])
    assert prefixes[0][0][0] is entry.k
    with pytest.raises(RuntimeError, match="holds 0 tokens of earlier slices but the slice starting at 7"):
        later.bind(6, k[:5], v[:5])
    binding.release()
    assert cache.keys() == []


def test_input_saving_attention_is_exact_and_keeps_no_scores() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(90, 4, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(90, 2, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    ctx_k, ctx_v = (torch.randn(30, 2, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    bounds = [0, 70, 85]
    weight = torch.randn(90, 4, 8, generator=gen, dtype=torch.float64)

    def grads(fn):  # type: ignore[no-untyped-def]
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, ctx_k, ctx_v)]
        saved: list[int] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(*leaves)
        return torch.autograd.grad((out * weight).sum(), leaves), out, saved

    def plain(q, k, v, ck, cv):  # type: ignore[no-untyped-def]
        pieces = [(ck[:10], cv[:10]), (ck[10:], cv[10:])]
        return varlen_causal_attention(
            q,
            k,
            v,
            bounds,
            context_kv=[(torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])), None],
            backend="sdpa",
        )

    def saving(q, k, v, ck, cv):  # type: ignore[no-untyped-def]
        return prefix_attention(q, k, v, bounds, [[(ck[:10], cv[:10]), (ck[10:], cv[10:])], []], backend="sdpa")

    ref_grads, ref_out, ref_saved = grads(plain)
    got_grads, got_out, got_saved = grads(saving)
    assert torch.equal(got_out, ref_out)
    for a, b in zip(got_grads, ref_grads, strict=True):
        assert torch.equal(a, b)
    assert sum(got_saved) < sum(ref_saved) / 3  # q, k, v and prefix pieces only: no probabilities
    assert max(got_saved) <= q.numel()


def test_memory_probe_counts_storages_once_and_releases_them() -> None:
    w = torch.nn.Parameter(torch.randn(16, 16, dtype=torch.float64))
    probe = ActivationMemoryProbe(exclude=[w])
    x = torch.randn(10, 16, dtype=torch.float64, requires_grad=True)
    with probe.forward():
        y = x @ w  # saves x (and w: excluded)
        z = (y * y).sum() + (x * 2).sum()  # y saved twice (one storage); x again
    assert probe.live_bytes == x.numel() * 8 + y.numel() * 8
    z.backward()
    assert probe.live_bytes == 0
    assert probe.peak_bytes == x.numel() * 8 + y.numel() * 8


def test_measured_memory_grows_with_held_slices() -> None:
    """The probe sees the K/V leaves of earlier slices: slicing with full recompute holds more than the
    checkpoints alone (the leaves), and recompute holds less than no recompute."""
    batch = Batch(seq_ids=[1], lengths=[64])
    whole = _run_lane(batch, _lane([[(1, 0, 64)]], [0]))[2]
    chunks = [[(1, 0, 32)], [(1, 32, 64)]]
    sliced = _run_lane(batch, _lane(chunks, [0, 0]))[2]
    recomputed = _run_lane(batch, _lane(chunks, [3, 3]))[2]
    assert recomputed < sliced
    assert abs(sliced - whole) <= 0.05 * whole  # same tokens held at once: both slices are in flight together
