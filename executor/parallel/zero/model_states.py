"""A stage's model states (parameters, gradients, optimizer) over its stage block, per ZeRO stage.

`build_model_states` returns the object the step driver talks to, whatever the ZeRO stage:

- `BucketedStates` (ZeRO-0/1/2, `flat_region`): parameters in flat buffers, gradients synchronised in buckets
  while the backward runs; ZeRO-1/2 step a sharded AdamW (`ShardedAdamW`) and all-gather the parameters after.
- `ShardedStates` (ZeRO-3): FSDP2 `fully_shard` per layer plus one unit for the stage's other parameters,
  resharded after forward, the next layer's gather prefetched, sums instead of FSDP's default mean.

Tied embeddings with P > 1: the first and the last stage both hold `embed.weight`. Its two gradients are summed
over the pair of ranks at the same position of the two blocks (a group created at start-up), so both hold the
whole model's gradient and step identically. Under ZeRO-0/1/2 the pair sums the local gradients before the
block reduces them (their shards would not line up afterwards); under ZeRO-3 the pair sums the FSDP shards,
which do line up (same shape, same block size).

Mixed precision (CUDA): ZeRO-0/1/2 keep fp32 parameters and gradients and compute under bf16 autocast (the
step driver enters it); ZeRO-3 uses FSDP2's `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh

from executor.model import DecoderStage
from executor.parallel.data import AdamWConfig, GradTerm, build_optimizer
from executor.parallel.zero.flat_region import FlatRegion

DEFAULT_BUCKET_BYTES = 25 * 2**20
"""PyTorch DDP's default bucket (bucket_cap_mb = 25), the cost profile's default `grad_bucket_bytes`."""


@dataclass(frozen=True, kw_only=True)
class StatesConfig:
    """How a stage's model states are kept and synchronised."""

    zero_stage: int = 0
    bucket_bytes: float = DEFAULT_BUCKET_BYTES
    compute_dtype: torch.dtype | None = None
    """bf16 on CUDA for mixed precision; None computes in the parameters' dtype."""
    reduce_dtype: torch.dtype = torch.float32
    """Gradient reduction dtype under mixed precision (ZeRO-3's policy; ZeRO-0/1/2 reduce fp32 gradients)."""
    overlap: bool = True
    """ZeRO-0/1/2: issue each bucket as soon as its gradients are final; False issues them all after the backward
    op (the baseline `bench/zero_memory.py` measures the overlap against)."""


class ShardedAdamW(torch.optim.AdamW):
    """AdamW over this rank's shard of a stage's flat parameters (ZeRO-1/2): its parameters are views into
    the flat buffers, so the update lands in place and the all-gather after the step replicates it."""


class ModelStates(Protocol):
    """What the step driver asks of a stage's model states in each step."""

    module: DecoderStage
    optimizer: torch.optim.Optimizer

    def begin_step(self) -> None: ...
    def before_backward(self, *, last: bool, events: Mapping[nn.Parameter, int] | None = None) -> None: ...
    def after_backward(self) -> None: ...
    def weights_final(self, weights: Iterable[nn.Parameter]) -> None: ...
    def finish_step(self, *, idle_backward_rounds: int) -> None: ...
    def grad_terms(self) -> list[GradTerm]: ...
    def step(self) -> None: ...
    def full_gradients(self) -> dict[str, torch.Tensor]: ...
    def full_parameters(self) -> dict[str, torch.Tensor]: ...
    def state_bytes(self) -> int: ...


def tied_parameter(module: DecoderStage, tie_group: dist.ProcessGroup | None) -> nn.Parameter | None:
    """The shared embedding when this stage is one of its two holders (P > 1), else None."""
    if tie_group is None:
        return None
    assert module.embed is not None, "a tied holder stage has the embedding"
    return cast(nn.Parameter, module.embed.weight)


class BucketedStates:
    """ZeRO-0/1/2: see `flat_region`."""

    def __init__(
        self,
        module: DecoderStage,
        *,
        config: StatesConfig,
        optimizer: AdamWConfig,
        dp_group: dist.ProcessGroup | None,
        tie_group: dist.ProcessGroup | None,
    ) -> None:
        self.module, self.zero_stage, self.tie_group = module, config.zero_stage, tie_group
        self.dp_size = dist.get_world_size(dp_group) if dp_group is not None else 1
        tied = tied_parameter(module, tie_group)
        # backward produces gradients roughly in reverse registration order: buckets fill front to back
        main = [p for p in reversed(list(module.parameters())) if p is not tied]
        self.main = FlatRegion(
            main, zero_stage=config.zero_stage, group=dp_group, bucket_bytes=config.bucket_bytes, overlap=config.overlap
        )
        self.tied = (
            FlatRegion([tied], zero_stage=min(config.zero_stage, 1), group=dp_group, bucket_bytes=config.bucket_bytes)
            if tied is not None
            else None
        )
        for index, param in enumerate(main):
            param.register_post_accumulate_grad_hook(lambda _p, i=index: self.main.on_grad_ready(i))
        self._index = {id(p): i for i, p in enumerate(main)}
        self._names = {id(p): n for n, p in module.named_parameters()}
        self._synced = False
        self.exposed_sync_s = 0.0
        """Seconds the last step's sync took after this rank's last backward op (what overlap did not hide)."""
        if config.zero_stage == 0:
            self.optimizer: torch.optim.Optimizer = build_optimizer(module.parameters(), optimizer)
        else:
            shards = [*self.main.shard_params, *(self.tied.shard_params if self.tied else [])]
            self.optimizer = ShardedAdamW(
                shards, lr=optimizer.lr, betas=optimizer.betas, eps=optimizer.eps, weight_decay=optimizer.weight_decay
            )

    @property
    def regions(self) -> list[FlatRegion]:
        return [self.main] + ([self.tied] if self.tied is not None else [])

    def begin_step(self) -> None:
        for region in self.regions:
            region.begin_step()
        self._synced = False

    def before_backward(self, *, last: bool, events: Mapping[nn.Parameter, int] | None = None) -> None:
        """Arm the sync for the rank's last backward op (every op under ZeRO-2). `events[w]`: how many gradient
        events weight w has in the op (hooks and `weights_final` calls; 1 where not given)."""
        if self.zero_stage == 2 or last:
            self.main.arm({self._index[id(w)]: n for w, n in (events or {}).items()})

    def weights_final(self, weights: Iterable[nn.Parameter]) -> None:
        """Deferred weight gradients were added to these weights' `.grad` outside autograd during the armed op."""
        for w in weights:
            self.main.mark_final(self._index[id(w)])

    def after_backward(self) -> None:
        if self.main.armed:
            self._synced = True
        self.main.end_backward()

    def finish_step(self, *, idle_backward_rounds: int) -> None:
        began = time.perf_counter()
        self._finish(idle_backward_rounds)
        self.exposed_sync_s = time.perf_counter() - began

    def _finish(self, idle_backward_rounds: int) -> None:
        if self.zero_stage == 2:
            for _ in range(idle_backward_rounds):
                self.main.idle_round()
        elif not self._synced:  # no backward op on this rank in this step: its (zero) gradients still count
            self.main.reduce_now()
        if self.tied is not None:
            assert self.tied.grad is not None
            dist.all_reduce(self.tied.grad, group=self.tie_group)
            self.tied.reduce_now()
        for region in self.regions:
            region.wait()

    def grad_terms(self) -> list[GradTerm]:
        """Each held gradient and how many ranks hold the same values (replicas under ZeRO-0; the tied
        weight's gradient is also held by the other holder stage)."""
        replicas = self.dp_size if self.zero_stage == 0 else 1
        terms = [GradTerm(g, replicas) for g in self.main.local_gradients()]
        if self.tied is not None:
            terms += [GradTerm(g, 2 * replicas) for g in self.tied.local_gradients()]
        return terms

    def step(self) -> None:
        self.optimizer.step()
        for region in self.regions:
            region.all_gather_params()

    def full_gradients(self) -> dict[str, torch.Tensor]:
        out = {}
        for region in self.regions:
            flat = region.full_gradient()
            for p, off, n in zip(region.params, region.layout.offsets, region.layout.sizes, strict=True):
                out[self._names[id(p)]] = flat[off : off + n].view_as(p).detach().clone()
        return out

    def full_parameters(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.module.named_parameters()}

    def state_bytes(self) -> int:
        """Bytes of parameters, gradients and optimizer state this rank holds between ops."""
        tensors = [t for r in self.regions for t in (r.flat, r.grad, r.shard_grad) if t is not None]
        return unique_bytes([*tensors, *_optimizer_tensors(self.optimizer)])


class ShardedStates:
    """ZeRO-3 with FSDP2 over the stage block's 1-D device mesh."""

    def __init__(
        self,
        module: DecoderStage,
        *,
        config: StatesConfig,
        optimizer: AdamWConfig,
        mesh: object,
        tie_group: dist.ProcessGroup | None,
    ) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = (
            MixedPrecisionPolicy(param_dtype=config.compute_dtype, reduce_dtype=config.reduce_dtype)
            if config.compute_dtype is not None
            else MixedPrecisionPolicy()
        )
        self.module, self.tie_group = module, tie_group
        layers = list(module.layers.values())
        device_mesh = cast(DeviceMesh, mesh)
        for block in layers:
            fully_shard(block, mesh=device_mesh, reshard_after_forward=True, mp_policy=policy)
        # explicit True: FSDP2 would otherwise keep the root unit gathered from forward to backward
        fully_shard(module, mesh=device_mesh, reshard_after_forward=True, mp_policy=policy)
        for unit in [module, *layers]:
            unit.set_gradient_divide_factor(1.0)  # type: ignore[operator]  # sums, as the loss normalisation needs
            # plain SUM collectives: a factor on float32 otherwise becomes NCCL's PREMUL_SUM, which gloo lacks
            unit.set_force_sum_reduction_for_comms(True)  # type: ignore[operator]
        for block, following in itertools.pairwise(layers):
            block.set_modules_to_forward_prefetch([following])  # type: ignore[operator]
        self._tied = tied_parameter(module, tie_group)  # after fully_shard, which replaces the parameters
        self.optimizer: torch.optim.Optimizer = build_optimizer(module.parameters(), optimizer)

    def begin_step(self) -> None:
        self.module.zero_grad(set_to_none=True)

    def before_backward(self, *, last: bool, events: Mapping[nn.Parameter, int] | None = None) -> None:
        return None

    def after_backward(self) -> None:
        return None

    def weights_final(self, weights: Iterable[nn.Parameter]) -> None:
        raise RuntimeError("ZeRO-3 defers no weight gradients (Plan.defer_weight_grads needs ZeRO-0/1)")

    def finish_step(self, *, idle_backward_rounds: int) -> None:
        if self._tied is not None and self._tied.grad is not None:
            dist.all_reduce(_local(self._tied.grad), group=self.tie_group)

    def grad_terms(self) -> list[GradTerm]:
        held = [p for p in self.module.parameters() if p.grad is not None]
        return [GradTerm(_local(cast(torch.Tensor, p.grad)), 2 if p is self._tied else 1) for p in held]

    def step(self) -> None:
        self.optimizer.step()

    def full_gradients(self) -> dict[str, torch.Tensor]:
        return {
            n: _full(p.grad) if p.grad is not None else torch.zeros(p.shape, dtype=p.dtype)
            for n, p in self.module.named_parameters()
        }

    def full_parameters(self) -> dict[str, torch.Tensor]:
        return {n: _full(p.detach()) for n, p in self.module.named_parameters()}

    def state_bytes(self) -> int:
        """Bytes of the parameter and gradient shards and the optimizer state this rank holds between ops."""
        tensors = [_local(p.detach()) for p in self.module.parameters()]
        tensors += [_local(p.grad) for p in self.module.parameters() if p.grad is not None]
        return unique_bytes([*tensors, *_optimizer_tensors(self.optimizer)])


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [_local(v) for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def unique_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one buffer count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _local(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _full(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().clone()


def build_model_states(
    module: DecoderStage,
    *,
    config: StatesConfig,
    optimizer: AdamWConfig,
    dp_group: dist.ProcessGroup | None,
    mesh: object | None,
    tie_group: dist.ProcessGroup | None,
) -> ModelStates:
    """The model states of `module` for `config.zero_stage` (0-3) over its stage block."""
    if config.zero_stage == 3:
        assert mesh is not None, "ZeRO-3 needs the stage block's device mesh (created at start-up)"
        return ShardedStates(module, config=config, optimizer=optimizer, mesh=mesh, tie_group=tie_group)
    return BucketedStates(module, config=config, optimizer=optimizer, dp_group=dp_group, tie_group=tie_group)


def max_chunks_in_block(chunk_counts: Sequence[int]) -> int:
    """The per-chunk rounds of a block: as many as its busiest lane has chunks."""
    return max(chunk_counts, default=0)
