"""Backward ops that send their input gradient first and leave the weight gradients to a W op.

The input gradient of a stage needs only the input-gradient half of each GEMM's backward; the weight-gradient
half can wait. A chunk with a W op in the stage's order (`Plan.defer_weight_grads`) therefore back-propagates
with its kept layers' weight gradients queued, sends the input gradient to the previous stage, and its W op
computes the queued weight gradients later (`WeightGradStore.flush`): right after, or where the planner found
the stage would otherwise wait for its next input. The previous stage starts its backward earlier and the
pipeline drains faster.

Every bias-free `nn.Linear` of the stage's blocks is routed through the store (`install_deferrable_linears`). A
chunk whose backward will defer runs its forward inside `WeightGradStore.deferring`: its kept layers' GEMMs then
use the weight detached from autograd, and their backward returns the input gradient and queues (weight, GEMM
input, output gradient). Every other forward is the linear's own. `flush` computes each queued gradient as the
GEMM backward would (output gradient transposed times input, in the forward's compute dtype, then in the
weight's dtype) and accumulates it through autograd (`torch.autograd.backward` on the weight), so the gradient
hooks that drive the bucketed data-parallel sync fire once per weight, as they would during the backward. The
queue follows the backward's order (last layer first), so buckets fill in the usual order. The exception is a
stage's trailing group of W ops (`runtime._TrailingGroup`): `flush_weights` adds each layer's gradients for all
the group's chunks directly to `.grad`, without hooks, and the runtime reports the layer's weights final.

The layers a chunk recomputes compute their weight gradients inline: deferring them would keep their
rematerialised activations alive until the flush, which is the memory recompute exists to save. The queued
output gradients are what deferral costs in memory (`CostProfile.deferred_grad_bytes_per_token_layer`).
ZeRO-0/1 only: under ZeRO-2/3 each backward op reduce-scatters its gradients as they become final.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True, slots=True)
class _Queued:
    weight: nn.Parameter
    inputs: torch.Tensor
    """The GEMM's input, in the forward's compute dtype."""
    grad_output: torch.Tensor


@dataclass
class WeightGradStore:
    """The weights whose gradients the chunk being run forward will defer (and the chunk's key), and per chunk the
    queue of deferred gradients' operands filled by its backward."""

    _deferred: frozenset[int] = frozenset()
    _key: int = 0
    _queues: dict[int, list[_Queued]] = field(default_factory=dict)

    @contextlib.contextmanager
    def deferring(self, weights: Iterable[nn.Parameter], key: int = 0) -> Iterator[None]:
        """A forward run inside the block defers the gradients of `weights` when it is back-propagated, queued
        under `key` (the chunk)."""
        self._deferred, self._key = frozenset(id(w) for w in weights), key
        try:
            yield
        finally:
            self._deferred = frozenset()

    def defers(self, weight: torch.Tensor) -> int | None:
        """The key a forward of `weight` now queues its gradient under; None when it is not deferred."""
        return self._key if id(weight) in self._deferred else None

    def push(self, key: int, weight: nn.Parameter, inputs: torch.Tensor, grad_output: torch.Tensor) -> None:
        self._queues.setdefault(key, []).append(_Queued(weight, inputs, grad_output))

    @property
    def pending(self) -> int:
        """Weight gradients queued and not yet computed, over every key."""
        return sum(len(queue) for queue in self._queues.values())

    def pending_keys(self) -> list[int]:
        return sorted(self._queues)

    def held_tensors(self) -> Iterator[torch.Tensor]:
        """The operands queued for deferred weight gradients (held beside the graph until their W runs), for the
        CPU memory probe (`memory_probe`), as the memory model counts them."""
        for queue in self._queues.values():
            for entry in queue:
                yield entry.inputs
                yield entry.grad_output

    def flush(self, key: int = 0) -> None:
        """Compute the weight gradients queued under `key` and accumulate them into `.grad` (hooks included) in one
        autograd call: one engine run per op rather than one per weight (on small layers the per-call cost is
        what the deferral would otherwise add)."""
        queue = self._queues.pop(key, [])
        if not queue:
            return
        grads = [_weight_grad(item.grad_output, item.inputs, item.weight) for item in queue]
        torch.autograd.backward([item.weight for item in queue], grads)

    def flush_weights(self, keys: Sequence[int], weights: Collection[nn.Parameter]) -> None:
        """Compute the gradients of `weights` queued under `keys` and add them to the weights' `.grad`, key by key
        (the order separate flushes would add them in), leaving the other weights' queued. No autograd and so no
        gradient hooks: the caller reports the weights final (`BackwardHooks.weights_final`). A stage's trailing
        group of W ops runs as one call per layer, so each layer's buckets can be reduced while the next layer's
        gradients are computed."""
        wanted = {id(w) for w in weights}
        for key in keys:
            rest = []
            for item in self._queues.pop(key, []):
                if id(item.weight) not in wanted:
                    rest.append(item)
                    continue
                grad = _weight_grad(item.grad_output, item.inputs, item.weight)
                with torch.no_grad():
                    if item.weight.grad is None:
                        item.weight.grad = grad
                    else:
                        item.weight.grad.add_(grad)
            if rest:
                self._queues[key] = rest


def _weight_grad(grad_output: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """dW of y = x W^T: the output gradient transposed times the input, over every token (leading dims flattened)."""
    g = grad_output.reshape(-1, grad_output.shape[-1])
    x = inputs.reshape(-1, inputs.shape[-1]).to(g.dtype)
    return (g.t() @ x).to(weight.dtype)


class _LinearDeferringWeightGrad(torch.autograd.Function):
    """y = x W^T with W detached from autograd: the backward returns the input gradient and queues W's operands.

    The weight is no input of the autograd node, so autograd neither computes its gradient nor runs its
    gradient hooks during the backward (a node that returned None for it would still run them, and the bucketed
    sync would count the weight as final twice); `WeightGradStore.flush` accumulates it later."""

    @staticmethod
    def forward(
        ctx: Any,
        inputs: torch.Tensor,
        detached_weight: torch.Tensor,
        module: nn.Linear,
        store: WeightGradStore,
        key: int,
    ) -> torch.Tensor:
        out = F.linear(inputs, detached_weight)  # under autocast: the GEMM in the compute dtype, like nn.Linear
        ctx.save_for_backward(inputs.to(out.dtype))
        ctx.module, ctx.store, ctx.key = module, store, key
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        (inputs,) = ctx.saved_tensors
        weight: nn.Parameter = ctx.module.weight
        ctx.store.push(ctx.key, weight, inputs, grad_output)
        grad_inputs = grad_output @ weight.detach().to(grad_output.dtype) if ctx.needs_input_grad[0] else None
        return grad_inputs, None, None, None, None


@dataclass(frozen=True)
class DeferrableStage:
    """A stage's store and each of its blocks' GEMM weights, in layer order."""

    store: WeightGradStore
    block_weights: tuple[tuple[nn.Parameter, ...], ...]

    def kept_weights(self, recompute_layers: int) -> list[nn.Parameter]:
        """The weights a chunk that recomputes the stage's first `recompute_layers` blocks defers."""
        return [w for block in self.block_weights[recompute_layers:] for w in block]


def install_deferrable_linears(blocks: Iterable[nn.Module]) -> DeferrableStage:
    """Route every bias-free `nn.Linear` inside `blocks` through a new store: a forward run while the store
    defers the linear's weight uses `_LinearDeferringWeightGrad`, any other forward the linear's own."""
    store = WeightGradStore()
    weights: list[tuple[nn.Parameter, ...]] = []
    for block in blocks:
        own: list[nn.Parameter] = []
        for module in block.modules():
            if isinstance(module, nn.Linear):
                if module.bias is not None:
                    raise ValueError(f"deferrable linears have no bias; {module} has one")
                module.forward = _deferrable_forward(module, store)  # type: ignore[method-assign]
                own.append(module.weight)
        weights.append(tuple(own))
    return DeferrableStage(store, tuple(weights))


def _deferrable_forward(module: nn.Linear, store: WeightGradStore) -> Any:
    def forward(inputs: torch.Tensor) -> torch.Tensor:
        weight = module.weight
        key = store.defers(weight)
        if key is None:
            return F.linear(inputs, weight)
        out: torch.Tensor = _LinearDeferringWeightGrad.apply(inputs, weight.detach(), module, store, key)
        return out

    return forward
