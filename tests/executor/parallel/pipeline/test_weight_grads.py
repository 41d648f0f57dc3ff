"""Deferred weight gradients (`Plan.defer_weight_grads`): a stage's backward sends its input gradient while the
kept layers' weight gradients are still queued, computes them after, and ends with exactly the gradients (and
gradient hooks) of a plain backward."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F

from executor.model import DecoderStage, build_stage
from executor.parallel.data import AdamWConfig
from executor.parallel.pipeline import runtime as runtime_module
from executor.parallel.pipeline.runtime import StageRunResult, StageRunSettings, StageRuntime
from executor.parallel.pipeline.weight_grads import DeferrableStage, WeightGradStore, install_deferrable_linears
from executor.parallel.zero.flat_region import FlatRegion
from executor.parallel.zero.model_states import BucketedStates, StatesConfig
from executor.role import RankRole
from executor.verify.synthetic_tokens import SyntheticTokens
from planner_service.schedules import build_schedule
from proto.batch import Batch
from proto.plan import Chunk, Lane, Segment
from tests.cost_model.hand_specs import ops
from tests.executor.executor_fixtures import tiny_model

pytestmark = pytest.mark.timeout(120)

SEED = 4
LAYERS = (1, 4)  # a stage after the first: 3 blocks, no embedding; the last stage (LM head, loss)


def _attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    group = q.shape[1] // k.shape[1]
    qh, kh, vh = (t.transpose(0, 1) for t in (q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)))
    return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True).transpose(0, 1)


def _stage() -> DecoderStage:
    return build_stage(tiny_model(num_layers=4), seed=SEED, layer_range=LAYERS, dtype=torch.float64)


@pytest.mark.parametrize("recompute", [0, 1, 3])
def test_deferred_gradients_equal_plain_ones_and_hooks_fire_once(recompute: int) -> None:
    """Forward inside `deferring`, backward: the kept blocks' GEMM weights have no gradient and their hooks have
    not run; after `flush` every gradient equals a plain backward's bit for bit and every hook ran once."""
    plain, deferred = _stage(), _stage()
    stage = install_deferrable_linears(deferred.layers.values())
    fired: Counter[str] = Counter()
    for name, p in deferred.named_parameters():
        p.register_post_accumulate_grad_hook(lambda _p, n=name: fired.update([n]))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, plain.spec.hidden_size, dtype=torch.float64, generator=gen)
    positions = torch.arange(12)
    targets = torch.randint(0, plain.spec.vocab_size, (12,), generator=gen)

    def backward(module: DecoderStage, stage: DeferrableStage | None) -> torch.Tensor:
        inputs = x.clone().requires_grad_(True)
        if stage is None:
            logits = module(inputs, positions, _attend, recompute)
        else:
            with stage.store.deferring(stage.kept_weights(recompute)):
                logits = module(inputs, positions, _attend, recompute)
        F.cross_entropy(logits, targets).backward()
        assert inputs.grad is not None
        return inputs.grad

    want = backward(plain, None)
    got = backward(deferred, stage)
    kept = stage.kept_weights(recompute)
    assert stage.store.pending == len(kept) == 7 * (3 - recompute)  # q, k, v, o, gate, up, down per kept block
    assert all(w.grad is None for w in kept)
    assert sum(fired.values()) == sum(1 for p in deferred.parameters() if p.grad is not None)
    assert torch.equal(got, want)  # the input gradient is complete before any weight gradient
    stage.store.flush()
    assert stage.store.pending == 0
    assert set(fired.values()) == {1} and len(fired) == len(list(deferred.parameters()))
    _assert_same_gradients(deferred, plain, exact=True)


class _RecordingLinks:
    """`StageLinks` of a stage after the first, without peers: activations come from a fixed generator; each
    gradient sent is recorded with the number of weight gradients still queued at that moment."""

    sent: ClassVar[list[tuple[int, torch.Tensor, int]]] = []
    deferrable: ClassVar[DeferrableStage | None] = None

    def __init__(self, **_: Any) -> None:
        pass

    def recv_activation(self, chunk: int, shape: tuple[int, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
        gen = torch.Generator().manual_seed(100 + chunk)
        return torch.randn(shape, dtype=dtype, generator=gen)

    def recv_gradient(self, chunk: int, shape: tuple[int, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
        gen = torch.Generator().manual_seed(200 + chunk)
        return torch.randn(shape, dtype=dtype, generator=gen)

    def send_activation(self, chunk: int, tensor: torch.Tensor) -> None:
        pass

    def send_gradient(self, chunk: int, tensor: torch.Tensor) -> None:
        pending = self.deferrable.store.pending if self.deferrable is not None else 0
        _RecordingLinks.sent.append((chunk, tensor.detach().clone(), pending))

    def finish(self) -> None:
        pass


def _run_stage(
    monkeypatch: pytest.MonkeyPatch,
    defer: bool,
    *,
    stage: int = 1,
    order: str | None = None,
    states: Callable[[DecoderStage], BucketedStates] | None = None,
    results: list[StageRunResult] | None = None,
) -> tuple[DecoderStage, list[tuple[int, Any, int]]]:
    """Stage `stage` of two (the first: the embedding and one block; the last: three blocks and the head) runs
    three chunks in 1F1B order, or in `order` (e.g. with W ops), with recompute of 0, 2 and 1 blocks; `states`
    builds the model states that hear of its backward ops (none by default); `results` receives the run's result."""
    model = tiny_model(num_layers=4)
    module = build_stage(model, seed=SEED, layer_range=LAYERS if stage == 1 else (0, 1), dtype=torch.float64)
    hooks = states(module) if states is not None else None
    if hooks is not None:
        hooks.begin_step()
    deferrable = install_deferrable_linears(module.layers.values())
    batch = Batch(seq_ids=[1, 2, 3], lengths=[20, 7, 11])
    pairs = zip(batch.seq_ids, batch.lengths, strict=True)
    chunks = [Chunk(segments=[Segment(seq_id=q, start=0, end=n)]) for q, n in pairs]
    schedule = build_schedule(chunks, 2)
    if order is not None:
        schedule[stage] = ops(order)
    layers = LAYERS[1] - LAYERS[0] if stage == 1 else 1
    lane = Lane(
        lane_id=0,
        sp_degree=1,
        ranks=[[0], [1]],
        chunks=chunks,
        schedule=schedule,
        recompute=[[0, 0, 0], [0, 2, 1]] if stage == 1 else [[0, 1, 0], [0, 0, 0]],
    )
    assert max(lane.recompute[stage]) <= layers
    _RecordingLinks.sent = []
    _RecordingLinks.deferrable = deferrable
    monkeypatch.setattr(runtime_module, "StageLinks", _RecordingLinks)
    runtime = StageRuntime(
        module=module,
        lane=lane,
        role=RankRole(rank=stage, lane_id=0, lane_index=0, stage=stage, num_stages=2, sp_rank=0, sp_ranks=(stage,)),
        sp_group=None,
        lengths=batch.length_of(),
        tokens=SyntheticTokens(7, model.vocab_size),
        loss_norm=sum(batch.lengths),
        settings=StageRunSettings(dtype=torch.float64, device="cpu", attention_backend="sdpa", recv_timeout_s=5),
        weight_grads=deferrable if defer else None,
        **({"hooks": hooks} if hooks is not None else {}),
    )
    result = runtime.run()
    if results is not None:
        results.append(result)
    if hooks is not None:
        hooks.finish_step(idle_backward_rounds=0)
    return module, list(_RecordingLinks.sent)


def test_stage_sends_its_input_gradient_before_its_weight_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last of two stages, with recompute on some chunks and each W op right after its B: every backward op
    sends while its kept layers' weight gradients are still queued (7 per kept block), and the step ends with the
    gradients and sent input gradients of the same run without deferral. Without W ops nothing is deferred."""
    plain, plain_sent = _run_stage(monkeypatch, defer=False)
    deferred, deferred_sent = _run_stage(monkeypatch, defer=True, order="F0 B0 W0 F1 B1 W1 F2 B2 W2")
    assert [pending for _, _, pending in plain_sent] == [0, 0, 0]
    _, unsplit_sent = _run_stage(monkeypatch, defer=True)  # the flag, but no W op
    assert [pending for _, _, pending in unsplit_sent] == [0, 0, 0]
    recompute = {0: 0, 1: 2, 2: 1}
    assert [(c, pending) for c, _, pending in deferred_sent] == [(c, 7 * (3 - recompute[c])) for c, _, _ in plain_sent]
    for (_, want, _), (_, got, _) in zip(plain_sent, deferred_sent, strict=True):
        assert torch.equal(got, want)
    _assert_same_gradients(deferred, plain, exact=True)


def test_w_ops_compute_their_chunks_weight_gradients_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last stage with W ops after all its backward ops: each send finds every earlier chunk's weight
    gradients still queued as well as its own (7 per kept block: 21, 7 and 14), and the step ends with the plain
    run's gradients (to rounding: chunks' contributions now add up in another order) and sent input gradients."""
    plain, plain_sent = _run_stage(monkeypatch, defer=False)
    order = "F0 B0 F1 B1 F2 B2 W0 W1 W2"
    deferred, deferred_sent = _run_stage(monkeypatch, defer=True, order=order)
    assert [pending for _, _, pending in deferred_sent] == [21, 28, 42]
    for (_, want, _), (_, got, _) in zip(plain_sent, deferred_sent, strict=True):
        assert torch.equal(got, want)
    _assert_same_gradients(deferred, plain)


def test_memory_probe_counts_operands_queued_for_w_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU probe counts the GEMM operands queued for W ops, held beside the graph after their backward, as the
    memory model does (`weight_grads_held`): with every W op after the last backward, chunks 0 and 1 keep theirs
    while B2 runs, so the measured peak exceeds the plain run's (same F/B order); with each W op right after its B,
    nothing waits and the peak is the plain one's."""
    plain: list[StageRunResult] = []
    late: list[StageRunResult] = []
    prompt: list[StageRunResult] = []
    _run_stage(monkeypatch, defer=False, order="F0 B0 F1 B1 F2 B2", results=plain)
    _run_stage(monkeypatch, defer=True, order="F0 B0 F1 B1 F2 B2 W0 W1 W2", results=late)
    _run_stage(monkeypatch, defer=True, order="F0 B0 W0 F1 B1 W1 F2 B2 W2", results=prompt)
    queued_inputs = 7 * 20 * 8  # chunk 0 alone: 7 GEMM inputs per kept block, 20 tokens, >= 8 bytes per row
    assert late[0].peak_activation_bytes > plain[0].peak_activation_bytes + queued_inputs
    assert prompt[0].peak_activation_bytes <= plain[0].peak_activation_bytes * 1.5


def test_first_stage_defers_only_chunks_with_w_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first stage sends nothing, so only a chunk with a W op defers there: chunk 0 queues its block's 7
    weight gradients for W0; chunk 1 recomputes the stage's one block, so W1 (after the last B op: the trailing
    group, run with B2 rather than by `flush`) finds nothing queued; chunk 2 has no W op and computes them in its
    backward. The gradients equal the plain run's."""
    flushed: list[tuple[int, int]] = []
    original = WeightGradStore.flush

    def recording_flush(store: WeightGradStore, key: int = 0) -> None:
        flushed.append((key, store.pending))
        original(store, key)

    monkeypatch.setattr(WeightGradStore, "flush", recording_flush)
    plain, _ = _run_stage(monkeypatch, defer=False, stage=0)
    assert flushed == []
    deferred, _ = _run_stage(monkeypatch, defer=True, stage=0, order="F0 F1 B0 F2 B1 W0 B2 W1")
    assert flushed == [(0, 7)]
    _assert_same_gradients(deferred, plain)


def _assert_same_gradients(got: DecoderStage, want: DecoderStage, *, exact: bool = False) -> None:
    """Every parameter of `got` has `want`'s gradient: bit for bit (`exact`), or to rounding (1e-12 relative) where
    chunks' contributions add up in another order."""
    for (name, p), q in zip(got.named_parameters(), want.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        if exact:
            assert torch.equal(p.grad, q.grad), (name, float((p.grad - q.grad).abs().max()))
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14 * float(q.grad.abs().max()), msg=name)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])])
def test_deferred_gradients_under_bf16_autocast(device: str) -> None:
    """Mixed precision (fp32 weights, bf16 autocast GEMMs, as `helix train` runs on CUDA): the deferred weight
    gradients are computed from the same bf16 operands as the plain backward and equal its gradients."""
    plain = build_stage(tiny_model(num_layers=4), seed=SEED, layer_range=LAYERS, device=device)
    deferred = build_stage(tiny_model(num_layers=4), seed=SEED, layer_range=LAYERS, device=device)
    stage = install_deferrable_linears(deferred.layers.values())
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(16, plain.spec.hidden_size, generator=gen, device=device)
    positions = torch.arange(16, device=device)
    targets = torch.randint(0, plain.spec.vocab_size, (16,), generator=gen, device=device)

    def step(module: DecoderStage, defer: bool) -> None:
        inputs = x.clone().requires_grad_(True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            if defer:
                with stage.store.deferring(stage.kept_weights(0)):
                    logits = module(inputs, positions, _attend, 0)
            else:
                logits = module(inputs, positions, _attend, 0)
        F.cross_entropy(logits.float(), targets).backward()
        if defer:
            stage.store.flush()

    step(plain, False)
    step(deferred, True)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in deferred.parameters())
    _assert_same_gradients(deferred, plain, exact=True)


BUCKET_BYTES = 64 * 2**10
"""Several buckets per block of the tiny model in float64 (a block's GEMM weights are about 270 KiB)."""


@pytest.mark.parametrize(
    ("stage", "order"),
    [(1, "F0 B0 F1 B1 F2 B2 W0 W1 W2"), (1, "F0 B0 F1 B1 W1 F2 B2 W0 W2"), (0, "F0 B0 F1 B1 F2 B2 W0 W1")],
)
def test_trailing_group_reduces_each_bucket_once_it_is_final(
    monkeypatch: pytest.MonkeyPatch, stage: int, order: str
) -> None:
    """The W ops after a stage's last B op run with it as one armed op, layer by layer (`_TrailingGroup`): every
    bucket of the stage's gradients is issued once, before the op ends (the reduction runs beside the group),
    and holds its final gradient when issued (nothing is added after). Chunks recompute 0, 2 and 1 blocks on the
    last stage, so some weights get a gradient from the B op as well as from the group. On the first stage the
    group is flushed while the last B's backward still runs: buckets go before its embedding gradient is
    accumulated. The gradients equal the plain run's."""
    trace: list[tuple[str, int]] = []

    def states(module: DecoderStage) -> BucketedStates:
        built = BucketedStates(
            module,
            config=StatesConfig(zero_stage=0, bucket_bytes=BUCKET_BYTES),
            optimizer=AdamWConfig(),
            dp_group=None,
            tie_group=None,
        )
        if module.embed is not None:
            module.embed.weight.register_post_accumulate_grad_hook(lambda _p: trace.append(("embed", -1)))
        return built

    plain, _ = _run_stage(monkeypatch, defer=False, stage=stage, states=states)
    issued: list[tuple[int, torch.Tensor, FlatRegion]] = []
    original = FlatRegion._issue

    def recording_issue(region: FlatRegion, bucket: int) -> None:
        assert region.grad is not None
        lo, hi = region.layout.buckets[bucket]
        issued.append((bucket, region.grad[lo:hi].clone(), region))
        trace.append(("issue", bucket))
        original(region, bucket)

    monkeypatch.setattr(FlatRegion, "_issue", recording_issue)
    trace.clear()
    deferred, _ = _run_stage(monkeypatch, defer=True, stage=stage, order=order, states=states)
    region = issued[0][2]
    buckets = len(region.layout.buckets)
    assert buckets >= 4
    assert sorted(b for b, _, _ in issued) == list(range(buckets))
    assert region.issued_during_backward == buckets
    assert region.grad is not None
    for bucket, snapshot, _ in issued:
        lo, hi = region.layout.buckets[bucket]
        assert torch.equal(snapshot, region.grad[lo:hi]), f"bucket {bucket} changed after it was issued"
    if stage == 0:
        first_issue = trace.index(("issue", 0))
        last_embed = max(i for i, event in enumerate(trace) if event[0] == "embed")
        assert first_issue < last_embed
    _assert_same_gradients(deferred, plain)
