"""Deferred weight gradients (`Plan.defer_weight_grads`): a stage's backward sends its input gradient while the
kept layers' weight gradients are still queued, computes them after, and ends with exactly the gradients (and
gradient hooks) of a plain backward."""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F

from executor.model import DecoderStage, build_stage
from executor.parallel.pipeline import runtime as runtime_module
from executor.parallel.pipeline.runtime import StageRunSettings, StageRuntime
from executor.parallel.pipeline.weight_grads import DeferrableStage, install_deferrable_linears
from executor.role import RankRole
from executor.verify.synthetic_tokens import SyntheticTokens
from planner_service.schedules import build_schedule
from proto.batch import Batch
from proto.plan import Chunk, Lane, Segment
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
    for (name, p), q in zip(deferred.named_parameters(), plain.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        assert torch.equal(p.grad, q.grad), name


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

    def send_gradient(self, chunk: int, tensor: torch.Tensor) -> None:
        pending = self.deferrable.store.pending if self.deferrable is not None else 0
        _RecordingLinks.sent.append((chunk, tensor.detach().clone(), pending))

    def finish(self) -> None:
        pass


def _run_last_stage(monkeypatch: pytest.MonkeyPatch, defer: bool) -> tuple[DecoderStage, list[tuple[int, Any, int]]]:
    model = tiny_model(num_layers=4)
    module = build_stage(model, seed=SEED, layer_range=LAYERS, dtype=torch.float64)
    deferrable = install_deferrable_linears(module.layers.values())
    batch = Batch(seq_ids=[1, 2, 3], lengths=[20, 7, 11])
    pairs = zip(batch.seq_ids, batch.lengths, strict=True)
    chunks = [Chunk(segments=[Segment(seq_id=q, start=0, end=n)]) for q, n in pairs]
    lane = Lane(
        lane_id=0,
        sp_degree=1,
        ranks=[[0], [1]],
        chunks=chunks,
        schedule=[build_schedule(chunks, 2)[0], build_schedule(chunks, 2)[1]],
        recompute=[[0, 0, 0], [0, 2, 1]],
    )
    _RecordingLinks.sent = []
    _RecordingLinks.deferrable = deferrable
    monkeypatch.setattr(runtime_module, "StageLinks", _RecordingLinks)
    runtime = StageRuntime(
        module=module,
        lane=lane,
        role=RankRole(rank=1, lane_id=0, lane_index=0, stage=1, num_stages=2, sp_rank=0, sp_ranks=(1,)),
        sp_group=None,
        lengths=batch.length_of(),
        tokens=SyntheticTokens(7, model.vocab_size),
        loss_norm=sum(batch.lengths),
        settings=StageRunSettings(dtype=torch.float64, device="cpu", attention_backend="sdpa", recv_timeout_s=5),
        weight_grads=deferrable if defer else None,
    )
    runtime.run()
    return module, list(_RecordingLinks.sent)


def test_stage_sends_its_input_gradient_before_its_weight_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last of two stages, with recompute on some chunks: deferring, every backward op sends while its kept
    layers' weight gradients are still queued (7 per kept block), and the step ends with the gradients and sent
    input gradients of the same run without deferral."""
    plain, plain_sent = _run_last_stage(monkeypatch, defer=False)
    deferred, deferred_sent = _run_last_stage(monkeypatch, defer=True)
    assert [pending for _, _, pending in plain_sent] == [0, 0, 0]
    recompute = {0: 0, 1: 2, 2: 1}
    assert [(c, pending) for c, _, pending in deferred_sent] == [(c, 7 * (3 - recompute[c])) for c, _, _ in plain_sent]
    for (_, want, _), (_, got, _) in zip(plain_sent, deferred_sent, strict=True):
        assert torch.equal(got, want)
    for (name, p), q in zip(deferred.named_parameters(), plain.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        assert torch.equal(p.grad, q.grad), name
