"""Run one rank's op list of a plan: F/B of its lane's chunks at its stage, with sends, receives and K/V caches.

For op F(c) the rank materialises its SP share of chunk c's inputs (token ids on the first stage, else the
activations received from the same SP position of stage p-1), runs the stage's layers with Ulysses
attention over the lane's SP group and the K/V cache of sliced sequences, recomputing the plan's number of
layers for (stage, c), and sends the output to stage p+1 (on the last stage it computes the chunk's loss).
For B(c) it back-propagates the loss (last stage) or the gradient received from stage p+1, adds the
accumulated dK/dV of the chunk's non-final slice, sends the input gradient to stage p-1 and releases the
chunk's activations and K/V leaves. With deferred weight gradients (`Plan.defer_weight_grads`, `weight_grads`)
a chunk with a W op in the stage's order leaves its kept layers' weight gradients to that op
(`weight_grads.WeightGradStore.flush`), which runs after the B's send; the W ops after the stage's last B op
are one group run with that B, layer by layer (`_TrailingGroup`: after its send, or during it on the first
stage, which sends nothing).

Shapes come from the plan: a chunk of T tokens on a lane of SP degree s is (ceil(T/s), hidden) per rank.

The rank's model states hear about every backward op (`BackwardHooks`, W ops included; a trailing group as part
of its B): the gradient sync of ZeRO-0/1 runs during the last one, ZeRO-2's during each. The trailing group and
its B are one armed op, so the sync reduces each layer's buckets while the group computes the next.
Under ZeRO-3 the rank runs the block's common rounds (`executor.parallel.zero.block_rounds`): its own ops, and
idle ops of no tokens where a busier lane of its block runs a chunk, so that FSDP2's per-chunk collectives line
up over the block. Under mixed precision the stage's forward runs in bf16 autocast.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from executor.model import AttendFn, DecoderStage
from executor.parallel.pipeline.kv_cache import ChunkKVBinding, SliceKVCache
from executor.parallel.pipeline.links import StageLinks
from executor.parallel.pipeline.memory_probe import ActivationMemoryProbe
from executor.parallel.pipeline.shards import IGNORE_INDEX, TokenSource, chunk_layout, materialize_shard
from executor.parallel.pipeline.weight_grads import DeferrableStage, WeightGradStore
from executor.parallel.ulysses import UlyssesAttention
from executor.parallel.zero.block_rounds import IdleOp, Round
from executor.role import RankRole
from proto.plan import Lane, RecomputeScope

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class StageRunSettings:
    """Per-job constants of a rank's stage runs."""

    dtype: torch.dtype
    device: str
    attention_backend: str
    recv_timeout_s: float
    compute_dtype: torch.dtype | None = None
    """bf16 autocast of the forward (mixed precision, ZeRO-0/1/2 on CUDA); None: the parameters' dtype."""


class BackwardHooks(Protocol):
    """The model states' view of the schedule: each backward op, and whether it is the rank's last (`events`:
    gradient events per weight in it when a trailing group of W ops joins it, see `_TrailingGroup`), and
    (`weights_final`) the weights whose deferred gradients the group added outside autograd."""

    def before_backward(self, *, last: bool, events: Mapping[nn.Parameter, int] | None = None) -> None: ...
    def after_backward(self) -> None: ...
    def weights_final(self, weights: Iterable[nn.Parameter]) -> None: ...


class _NoHooks:
    def before_backward(self, *, last: bool, events: Mapping[nn.Parameter, int] | None = None) -> None:
        return None

    def after_backward(self) -> None:
        return None

    def weights_final(self, weights: Iterable[nn.Parameter]) -> None:
        return None


@dataclass
class _TrailingGroup:
    """The W ops that end a stage's order, run with its last B op as one group, layer by layer (the planner's
    `weight_grad_tail`): a layer's deferred weight gradients are computed for every chunk of the group at once,
    so its gradient buckets are final, and reduced, while the next layer's are computed. On the first stage,
    which sends nothing, each layer is flushed as the B op's backward passes it (`watch_block_inputs`);
    elsewhere after the B op's send."""

    chunks: list[int]
    layers: list[list[nn.Parameter]]
    """Per block of the stage, the weights some chunk of the group deferred."""
    store: WeightGradStore
    hooks: BackwardHooks
    watched: int | None
    """The chunk whose forward watches the block inputs (the last B's chunk, on the first stage), else None."""
    left: set[int] = field(default_factory=set)
    """Blocks not flushed yet."""

    @classmethod
    def of(
        cls,
        chunks: list[int],
        stage: DeferrableStage,
        recompute: Sequence[int],
        hooks: BackwardHooks,
        *,
        watched: int | None,
    ) -> _TrailingGroup:
        deferred = {id(w) for c in chunks for w in stage.kept_weights(recompute[c])}
        layers = [[w for w in block if id(w) in deferred] for block in stage.block_weights]
        return cls(chunks, layers, stage.store, hooks, watched, set(range(len(layers))))

    def events(self, own: Collection[nn.Parameter]) -> dict[nn.Parameter, int]:
        """Gradient events of each group weight in the armed op: its flush, plus its hook when the B op computes
        a gradient of it too (every weight but those the B's own chunk deferred, `own`)."""
        deferred_by_b = {id(w) for w in own}
        return {w: 1 if id(w) in deferred_by_b else 2 for layer in self.layers for w in layer}

    def flush(self, block: int) -> None:
        if block not in self.left:
            return
        self.left.discard(block)
        self.store.flush_weights(self.chunks, self.layers[block])
        self.hooks.weights_final(self.layers[block])

    def flush_rest(self) -> None:
        for block in sorted(self.left, reverse=True):
            self.flush(block)

    def watch_block_inputs(self, module: DecoderStage) -> list[RemovableHandle]:
        """Forward hooks for the B op's chunk: each block's input gets a gradient hook that flushes the block
        (its input gradient is complete once the block's backward is done)."""

        def watch(block: int) -> Callable[..., None]:
            def pre_hook(_module: nn.Module, args: tuple[object, ...]) -> None:
                x = args[0]
                if isinstance(x, torch.Tensor) and x.requires_grad:
                    x.register_hook(lambda _grad: self.flush(block))

            return pre_hook

        return [b.register_forward_pre_hook(watch(i)) for i, b in enumerate(module.layers.values())]


@dataclass(frozen=True)
class StageRunResult:
    local_loss: float
    """Sum of this rank's chunk losses (non-zero on the last stage only)."""
    local_tokens: int
    """Rows this rank processed (padded shard sizes)."""
    peak_activation_bytes: int
    """Measured peak of activations saved for backward plus held K/V (see `memory_probe`)."""


@dataclass
class _InFlight:
    """What a chunk keeps between its forward and its backward on this rank."""

    inputs: torch.Tensor
    output: torch.Tensor
    """The loss on the last stage, else the activations sent to the next stage."""
    kv: ChunkKVBinding


@dataclass(kw_only=True)
class StageRuntime:
    """One rank's execution of its lane's schedule at its stage, for one step."""

    module: DecoderStage
    lane: Lane
    role: RankRole
    sp_group: dist.ProcessGroup | None
    lengths: Mapping[int, int]
    tokens: TokenSource
    loss_norm: int
    settings: StageRunSettings
    hooks: BackwardHooks = field(default_factory=_NoHooks)
    rounds: Sequence[Round] | None = None
    """The rounds to run (ZeRO-3); None: the lane's schedule at this stage."""
    weight_grads: DeferrableStage | None = None
    """The stage's deferrable GEMMs, when the plan defers weight gradients (chunks with a W op)."""
    recompute_scope: RecomputeScope = RecomputeScope.LAYER
    """What the lane's recomputed layers recompute (`PlanOptions.recompute_scope`)."""
    _cache: SliceKVCache = field(default_factory=SliceKVCache)
    _in_flight: dict[int, _InFlight] = field(default_factory=dict)
    _w_chunks: set[int] = field(default_factory=set)
    """Chunks whose weight gradients this stage's W ops compute."""
    _group: _TrailingGroup | None = None
    """The W ops after the stage's last B op, run with it."""
    _idle: list[torch.Tensor] = field(default_factory=list)

    def _held_tensors(self) -> Iterator[torch.Tensor]:
        """What the step holds beside the autograd graph: the K/V of earlier slices (and their gradients), and the
        operands of deferred weight gradients waiting for their W ops."""
        yield from self._cache.held_tensors()
        if self.weight_grads is not None:
            yield from self.weight_grads.store.held_tensors()

    def run(self) -> StageRunResult:
        role, lane = self.role, self.lane
        links = StageLinks(
            rank=role.rank,
            lane_id=role.lane_id,
            stage=role.stage,
            prev_rank=None if role.is_first_stage else lane.ranks[role.stage - 1][role.sp_rank],
            next_rank=None if role.is_last_stage else lane.ranks[role.stage + 1][role.sp_rank],
            timeout_s=self.settings.recv_timeout_s,
        )
        probe = ActivationMemoryProbe(
            exclude=self.module.parameters(), held=self._held_tensors, device=self.settings.device
        )
        local_loss, local_tokens = 0.0, 0
        rounds = list(lane.schedule[role.stage]) if self.rounds is None else list(self.rounds)
        # ops that produce gradients: B, and W (a chunk's deferred weight gradients); the last one completes them
        backward_at = [i for i, op in enumerate(rounds) if not isinstance(op, IdleOp) and op.kind != "F"]
        last_backward = max(backward_at, default=-1)
        self._w_chunks = {op.chunk for op in rounds if not isinstance(op, IdleOp) and op.kind == "W"}
        last_b = max((i for i in backward_at if rounds[i].kind == "B"), default=-1)
        trailing = [op.chunk for op in rounds[last_b + 1 :] if not isinstance(op, IdleOp) and op.kind == "W"]
        self._group = None
        if trailing:
            assert self.weight_grads is not None, f"rank {role.rank}: W ops in a plan without deferral"
            last = rounds[last_b]
            assert not isinstance(last, IdleOp)
            self._group = _TrailingGroup.of(
                trailing,
                self.weight_grads,
                lane.recompute[role.stage],
                self.hooks,
                watched=last.chunk if role.is_first_stage else None,
            )
        probe.start()
        for i, op in enumerate(rounds):
            if isinstance(op, IdleOp):
                self._idle_round(op.kind)
            elif op.kind == "F":
                with probe.forward(), self._autocast():
                    loss, tokens = self._forward(op.chunk, links)
                local_loss += loss
                local_tokens += tokens
            elif self._group is not None and i > last_b:
                continue  # a W op of the trailing group: run with the last B
            else:
                if self._group is not None and i == last_b:
                    self._backward_with_group(op.chunk, links, self._group)
                else:
                    self.hooks.before_backward(last=i == last_backward)
                    if op.kind == "B":
                        self._backward(op.chunk, links)
                    else:
                        assert self.weight_grads is not None, f"rank {role.rank}: {op} in a plan without deferral"
                        self.weight_grads.store.flush(op.chunk)
                    self.hooks.after_backward()
                probe.sample()
            if log.isEnabledFor(logging.DEBUG):
                held, peak = probe.live_bytes, probe.peak_bytes
                log.debug("rank %d %s: held activations %d B, peak %d B", role.rank, op, held, peak)
        links.finish()
        if self._in_flight:
            raise RuntimeError(f"rank {role.rank}: chunks {sorted(self._in_flight)} ran forward but never backward")
        if self.weight_grads is not None and self.weight_grads.store.pending:
            keys = self.weight_grads.store.pending_keys()
            raise RuntimeError(f"rank {role.rank}: weight gradients of chunks {keys} were deferred and never computed")
        if self._cache.keys():
            raise RuntimeError(f"rank {role.rank}: K/V of slices {self._cache.keys()} were never released")
        assert not self._idle, f"rank {role.rank}: {len(self._idle)} idle forward rounds never ran backward"
        return StageRunResult(local_loss, local_tokens, probe.peak_bytes)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        dtype = self.settings.compute_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.settings.device).type, dtype=dtype)

    def _idle_round(self, kind: str) -> None:
        """Join a round of the block's busier lanes: a forward / backward of no tokens through the stage,
        which issues the same per-layer collectives as a chunk and computes nothing."""
        if kind == "B":
            out = self._idle.pop(0)
            torch.autograd.backward(out, torch.zeros_like(out))
            return
        spec, device = self.module.spec, self.settings.device
        if self.role.is_first_stage:
            inputs = torch.zeros(0, dtype=torch.long, device=device)
        else:
            inputs = torch.zeros(0, spec.hidden_size, dtype=self.settings.dtype, device=device, requires_grad=True)
        positions = torch.zeros(0, dtype=torch.long, device=device)
        with self._autocast():
            self._idle.append(self.module(inputs, positions, _no_attention))

    def _forward(self, c: int, links: StageLinks) -> tuple[float, int]:
        role, settings = self.role, self.settings
        layout = chunk_layout(self.lane.chunks[c], role.sp_degree)
        shard = materialize_shard(
            layout,
            role.sp_rank,
            lengths=dict(self.lengths),
            tokens=self.tokens,
            device=settings.device,
        )
        recompute = self.lane.recompute[role.stage][c]
        mlp_only = self.recompute_scope is RecomputeScope.MLP
        kv = ChunkKVBinding(
            cache=self._cache,
            segments=layout.segments,
            cu_seqlens=layout.cu_seqlens,
            lengths=self.lengths,
            first_layer=self.module.lo,
            recompute_layers=0 if mlp_only else recompute,  # an MLP-only recompute never reruns attention
        )
        attend = UlyssesAttention(
            group=self.sp_group,
            sp_degree=role.sp_degree,
            cu_seqlens=layout.cu_seqlens,
            backend=settings.attention_backend,
            kv_binding=kv if kv.is_needed else None,
        )
        if role.is_first_stage:
            inputs = shard.token_ids
        else:
            shape = (layout.shard_tokens, self.module.spec.hidden_size)
            inputs = links.recv_activation(c, shape, settings.dtype, settings.device).requires_grad_(True)
        group = self._group
        watching = group.watch_block_inputs(self.module) if group is not None and c == group.watched else []
        try:
            if self._defers(c):
                assert self.weight_grads is not None
                with self.weight_grads.store.deferring(self.weight_grads.kept_weights(recompute), key=c):
                    out = self.module(inputs, shard.positions, _opaque(attend), recompute, recompute_mlp_only=mlp_only)
            else:
                out = self.module(inputs, shard.positions, _opaque(attend), recompute, recompute_mlp_only=mlp_only)
        finally:  # the module outlives the step: a failed forward must not leave this step's hooks on it
            for handle in watching:
                handle.remove()
        loss_value = 0.0
        if role.is_last_stage:
            out = F.cross_entropy(out, shard.targets, ignore_index=IGNORE_INDEX, reduction="sum") / self.loss_norm
            loss_value = float(out.detach())
        else:
            links.send_activation(c, out)
        self._in_flight[c] = _InFlight(inputs, out, kv)
        return loss_value, layout.shard_tokens

    def _backward(self, c: int, links: StageLinks) -> None:
        flight = self._in_flight.pop(c)
        if self.role.is_last_stage:
            flight.output.backward()
        else:
            grad = links.recv_gradient(c, tuple(flight.output.shape), self.settings.dtype, self.settings.device)
            torch.autograd.backward(flight.output, grad)
        if not self.role.is_first_stage:
            assert flight.inputs.grad is not None, f"rank {self.role.rank}: B{c} produced no input gradient"
            links.send_gradient(c, flight.inputs.grad)
        flight.kv.release()

    def _backward_with_group(self, c: int, links: StageLinks, group: _TrailingGroup) -> None:
        """The stage's last B op and the trailing group of W ops, armed as one backward op (`_TrailingGroup`)."""
        assert self.weight_grads is not None
        own = self.weight_grads.kept_weights(self.lane.recompute[self.role.stage][c]) if self._defers(c) else []
        self.hooks.before_backward(last=True, events=group.events(own))
        self._backward(c, links)
        group.flush_rest()
        self.hooks.after_backward()

    def _defers(self, c: int) -> bool:
        """Whether chunk c's weight gradients wait for its W op."""
        return self.weight_grads is not None and c in self._w_chunks


def _no_attention(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of an idle round: no tokens, so nothing to attend to. The result still depends on q, k and v:
    every parameter must get a (zero) gradient, or FSDP2 would reduce-scatter a smaller buffer than its peers."""
    return q * 0 + (k.sum() + v.sum()) * 0


def _opaque(attend: UlyssesAttention) -> AttendFn:
    """`attend` behind a closure. FSDP2's root pre-forward rebuilds dataclass arguments field by field (to move
    their tensors), which would hand the layers a copy of the K/V cache whose records are lost."""

    def call(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attend(layer, q, k, v)

    return call
