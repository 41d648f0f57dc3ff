"""One transformer layer, the LM head + loss, the bytes they save and the training state, timed on this rank.

The layer is the executor's own `Block` with its attention path (`prefix_attention`, the backend `helix train`
resolves), fed what a pipeline stage feeds it: a (T, H) hidden state that needs a gradient, RoPE positions counted
inside each sequence, and for a slice the earlier slices' K/V as leaves that receive dK/dV. Backward is timed
separately from forward, and again through activation checkpointing (the recompute the planner may choose).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from executor.attention.backends import resolve_backend
from executor.attention.prefix import SCORE_KEEPING_BACKENDS, prefix_attention
from executor.model import Block, RMSNorm, init_parameters, rope_cos_sin
from executor.parallel.data import AdamWConfig, build_optimizer
from executor.parallel.pipeline.memory_probe import ActivationMemoryProbe
from executor.parallel.pipeline.weight_grads import install_deferrable_linears
from executor.profile.grid import PARAM_DTYPES, ProfileGrid, ProfileSettings
from executor.profile.timing import Clock, aligned, repeated_seconds, summarize
from proto.model import ModelSpec


@dataclass(frozen=True, slots=True)
class GridChunk:
    """A chunk of `segments` equal segments of `seq_len` tokens, each after `context` earlier tokens."""

    segments: int
    seq_len: int
    context: int

    @property
    def num_tokens(self) -> int:
        return self.segments * self.seq_len

    @property
    def attn_pairs(self) -> float:
        c, n = self.context, self.seq_len
        return float(self.segments * ((c + n) ** 2 - c * c))


def chunk_shapes(grid: ProfileGrid) -> list[GridChunk]:
    """The grid's chunks: every token count cut into each segment count, and one-segment slices with contexts."""
    shapes = []
    for tokens in grid.tokens:
        for segments in grid.segments:
            if tokens % segments or tokens // segments < grid.min_segment_tokens:
                continue
            ratios = grid.context_ratios if segments == 1 else (0.0,)
            for ratio in ratios:
                shape = GridChunk(segments, tokens // segments, int(ratio * tokens))
                if shape.context + shape.seq_len <= grid.max_keys:
                    shapes.append(shape)
    return shapes


def autocast(settings: ProfileSettings) -> contextlib.AbstractContextManager[object]:
    if settings.dtype != "bfloat16":
        return contextlib.nullcontext()
    return torch.autocast(settings.device, dtype=torch.bfloat16)


class LayerBench:
    """A layer, an LM head and their inputs on this rank's device."""

    def __init__(self, model: ModelSpec, settings: ProfileSettings) -> None:
        self.model, self.settings = model, settings
        self.dtype = PARAM_DTYPES[settings.dtype]
        self.device = torch.device(settings.device)
        self.backend = resolve_backend(settings.attention_backend, self.device)
        self.block = Block(model, 0).to(dtype=self.dtype)
        init_parameters(self.block, settings.seed)
        self.block.to(self.device)
        self.deferrable = install_deferrable_linears([self.block])  # plain forwards unless told to defer
        self.norm = RMSNorm(model.hidden_size, model.norm_eps).to(self.device, self.dtype)
        self.head = torch.nn.Linear(model.hidden_size, model.vocab_size, bias=False).to(self.device, self.dtype)
        self._generator = torch.Generator(device=self.device).manual_seed(settings.seed)

    @property
    def saves_prefix_kv(self) -> bool:
        """Fused kernels save the [prefix; own] K/V they build; the input-saving CPU path keeps the pieces."""
        return self.backend not in SCORE_KEEPING_BACKENDS

    @property
    def saves_output(self) -> bool:
        """Fused kernels save their output for backward; the input-saving path recomputes it."""
        return self.backend not in SCORE_KEEPING_BACKENDS

    def randn(self, *shape: int, grad: bool = False) -> torch.Tensor:
        x = torch.randn(*shape, generator=self._generator, device=self.device, dtype=self.dtype)
        return x.requires_grad_(grad)

    def layer_inputs(self, shape: GridChunk) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, object]:
        """x (T, H), RoPE cos/sin for positions C..C+L-1 of each segment, and the layer's attend function."""
        m = self.model
        x = self.randn(shape.num_tokens, m.hidden_size, grad=True)
        positions = torch.arange(shape.context, shape.context + shape.seq_len, device=self.device).repeat(
            shape.segments
        )
        cos, sin = rope_cos_sin(positions, m.head_dim, m.rope_theta, x.dtype)
        bounds = [i * shape.seq_len for i in range(shape.segments + 1)]
        prefixes = None
        if shape.context:
            prefixes = [
                [(self.randn(shape.context, m.num_kv_heads, m.head_dim, grad=True),
                  self.randn(shape.context, m.num_kv_heads, m.head_dim, grad=True))]
                for _ in range(shape.segments)
            ]  # fmt: skip

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return prefix_attention(q, k, v, bounds, prefixes, backend=self.backend)

        return x, cos, sin, attend

    def time_layer(self, shape: GridChunk, *, recompute: bool) -> tuple[float, float]:
        """Forward and backward seconds of the layer on `shape` (through checkpointing with `recompute`)."""
        x, cos, sin, attend = self.layer_inputs(shape)
        grad = torch.ones(shape.num_tokens, self.model.hidden_size, device=self.device, dtype=self.dtype)

        def forward() -> torch.Tensor:
            if recompute:
                return checkpoint(self.block, x, cos, sin, attend, use_reentrant=False)  # type: ignore[no-any-return]
            return self.block(x, cos, sin, attend)  # type: ignore[no-any-return]

        def backward(y: torch.Tensor) -> None:
            y.backward(grad.to(y.dtype))
            self.block.zero_grad(set_to_none=True)
            x.grad = None

        return self.forward_backward_seconds(forward, backward)

    def time_deferred_layer(self, shape: GridChunk) -> tuple[float, float, float]:
        """Forward, backward up to the input gradient, and the deferred weight gradients of the layer on `shape`
        with every GEMM weight gradient deferred (`Plan.defer_weight_grads`), each timed on its own."""
        x, cos, sin, attend = self.layer_inputs(shape)
        grad = torch.ones(shape.num_tokens, self.model.hidden_size, device=self.device, dtype=self.dtype)
        store = self.deferrable.store

        def forward() -> torch.Tensor:
            with store.deferring(self.deferrable.kept_weights(0)):
                return self.block(x, cos, sin, attend)  # type: ignore[no-any-return]

        def backward(y: torch.Tensor) -> None:
            y.backward(grad.to(y.dtype))

        def weight_grads(_: torch.Tensor) -> None:
            store.flush()
            self.block.zero_grad(set_to_none=True)
            x.grad = None

        forward_s, backward_s, weight_grad_s = self.phase_seconds(forward, backward, weight_grads)
        return forward_s, backward_s, weight_grad_s

    def time_head(self, num_tokens: int) -> tuple[float, float]:
        """Forward and backward seconds of final norm + LM head + summed cross-entropy."""
        x = self.randn(num_tokens, self.model.hidden_size, grad=True)
        targets = torch.randint(0, self.model.vocab_size, (num_tokens,), device=self.device, generator=self._generator)

        def forward() -> torch.Tensor:
            return F.cross_entropy(F.linear(self.norm(x), self.head.weight), targets, reduction="sum")

        def backward(loss: torch.Tensor) -> None:
            loss.backward()
            x.grad = None

        return self.forward_backward_seconds(forward, backward)

    def forward_backward_seconds(
        self, forward: Callable[[], torch.Tensor], backward: Callable[[torch.Tensor], None]
    ) -> tuple[float, float]:
        """Forward and backward seconds (the settings' statistic over repeats), each timed on its own with all
        ranks aligned before it."""
        forward_s, backward_s = self.phase_seconds(forward, backward)
        return forward_s, backward_s

    def phase_seconds(self, forward: Callable[[], torch.Tensor], *after: Callable[[torch.Tensor], None]) -> list[float]:
        """Seconds of the forward (under the settings' autocast) and of each later phase given its output (the
        settings' statistic over repeats), each timed on its own with all ranks aligned before it."""
        s = self.settings
        clock = Clock(s.device)
        samples: list[list[float]] = [[] for _ in range(1 + len(after))]
        for i in range(s.warmup + s.repeats):
            aligned()
            clock.start()
            with autocast(s):
                out = forward()
            seconds = [clock.stop()]
            for phase in after:
                aligned()
                clock.start()
                phase(out)
                seconds.append(clock.stop())
            if i >= s.warmup:
                for kept, value in zip(samples, seconds, strict=True):
                    kept.append(value)
        return [summarize(values, s.statistic) for values in samples]

    def saved_bytes(self, num_tokens: int, *, kind: str) -> float:
        """Bytes the forward of the layer ('layer', 'checkpointed_layer', 'mlp_checkpointed_layer': only its MLP half
        checkpointed) or of the head ('head') keeps for backward: the activation probe's count on CPU, the
        allocator's growth less the output on CUDA."""
        shape = GridChunk(1, num_tokens, 0)
        x, cos, sin, attend = self.layer_inputs(shape)
        with _counting(self) as count:
            with autocast(self.settings):
                if kind == "head":
                    targets = torch.zeros(num_tokens, dtype=torch.long, device=self.device)
                    out = F.cross_entropy(F.linear(self.norm(x), self.head.weight), targets, reduction="sum")
                elif kind == "checkpointed_layer":
                    out = checkpoint(self.block, x, cos, sin, attend, use_reentrant=False)
                elif kind == "mlp_checkpointed_layer":
                    out = self.block(x, cos, sin, attend, recompute_mlp=True)
                else:
                    out = self.block(x, cos, sin, attend)
            count.output = out
        del out
        return count.bytes

    def gemm_flops_per_s(self) -> float:
        """A square GEMM's rate on this rank while every rank runs one: the practical peak the layer's GEMMs are
        compared with besides the nominal one."""
        n = self.settings.grid.gemm_size
        a, b = self.randn(n, n), self.randn(n, n)
        with autocast(self.settings):
            seconds = repeated_seconds(lambda: a @ b, device=self.settings.device, warmup=1, repeats=3, statistic="min")
        return 2.0 * n**3 / seconds

    def state_bytes_per_param(self) -> tuple[float, float, float]:
        """(param, grad, optimizer) bytes per parameter of the executor's AdamW after one step, counted exactly."""
        optimizer = build_optimizer(self.block.parameters(), AdamWConfig())
        x, cos, sin, attend = self.layer_inputs(GridChunk(1, 32, 0))
        with autocast(self.settings):
            self.block(x, cos, sin, attend).sum().backward()
        optimizer.step()
        params = list(self.block.parameters())
        numel = sum(p.numel() for p in params)
        param = sum(p.numel() * p.element_size() for p in params)
        grad = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
        state = sum(
            v.numel() * v.element_size()
            for values in optimizer.state.values()
            for v in values.values()
            if isinstance(v, torch.Tensor)
        )
        self.block.zero_grad(set_to_none=True)
        return param / numel, grad / numel, state / numel


class _Count:
    bytes: float = 0.0
    output: torch.Tensor | None = None


@contextlib.contextmanager
def _counting(bench: LayerBench) -> Iterator[_Count]:
    """Bytes saved while the block runs. The layer's input counts: a stage's layers save their input (the first
    norm's), which is the previous layer's output, so per layer it is counted once."""
    count = _Count()
    params = [*bench.block.parameters(), *bench.norm.parameters(), *bench.head.parameters()]
    if bench.device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        yield count
        torch.cuda.synchronize()
        out = count.output.numel() * count.output.element_size() if count.output is not None else 0
        count.bytes = float(torch.cuda.memory_allocated() - before - out)
        return
    probe = ActivationMemoryProbe(exclude=params)
    with probe.forward():
        yield count
    count.bytes = float(probe.peak_bytes)
