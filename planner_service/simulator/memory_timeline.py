"""Activation-side memory of one (lane, stage) along its op order, linear in the recompute counts.

Shared by the simulator (peak for given recompute counts) and the recompute ILP (one memory row
per op), so the solver budgets exactly what the simulator will predict.

Model (see pipeline_simulator's docstring): chunk c is held from F(c) until B(c) ends, costing
`base[c] + per_layer[c] * r_c` bytes with r_c recomputed layers (activations of recomputed layers
shrink to checkpoints, or lose their MLP half's under `RecomputeScope.MLP`; a non-final slice keeps the K/V of
whole recomputed layers for later slices (an MLP-only recompute keeps them with its attention); a chunk that
attends to a prefix keeps, in each layer that does not recompute, the concatenated prefix K/V when the
attention kernel saves it). From the backward of a sequence's last slice until an earlier slice's own
backward ends, that earlier slice also holds dK/dV accumulators (`kv_grad`). Every op adds its transient
working memory. A backward op that defers its weight gradients (`Plan.defer_weight_grads`: a chunk with a W op)
queues each kept layer's GEMM operands (inputs and output gradients) as it back-propagates that layer, while
autograd frees the layer's other saved tensors; the chunk keeps the operands from the end of its backward until
its W op (`weight_grads_held`). Layer by layer the chunk's bytes change by (operands - activations), so the B op's
peak is at one of its ends: what it began with, or that plus every kept layer's (operands - activations) when the
operands are the larger (`deferred`, usually 0: a layer's GEMM inputs are among its saved activations, and its
output gradients are about the size of the rest).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from planner_service.cost_model import ChunkShape, CostModel
from planner_service.cost_model.comm_model import tokens_per_device
from proto import Lane, PipelineSpec, RecomputeScope


@dataclass(frozen=True, slots=True)
class StageMemory:
    """Bytes of one (lane, stage): chunk terms plus per-op constants, in the stage's op order."""

    num_layers: int
    base: tuple[float, ...]
    """base[c]: bytes held for chunk c with no recompute."""
    per_layer: tuple[float, ...]
    """per_layer[c]: change in held bytes per recomputed layer (negative: recompute saves memory)."""
    op_chunks: tuple[int, ...]
    op_is_forward: tuple[bool, ...]
    op_constant: tuple[float, ...]
    """op_constant[t]: transient bytes of op t plus dK/dV accumulators held while it runs."""
    deferred: tuple[float, ...] = ()
    """deferred[c]: bytes per kept (not recomputed) layer by which a B(c) that defers its weight gradients peaks
    above what was held when it began (`CostModel.deferring_backward_bytes`: the layer's W operands less the
    activations its backward frees, when positive); empty when the stage's backward ops do not defer them. Not in
    `held_at` rows: the recompute ILP plans the stage without deferral (`Plan.defer_weight_grads` is only switched
    on for a plan whose peak still fits)."""
    weight_grads_held: tuple[float, ...] = ()
    """weight_grads_held[c]: bytes per kept layer chunk c keeps from the end of B(c) to the end of W(c) (0: no W
    op); `op_is_weight_grads` marks the W ops in the op order."""
    op_is_weight_grads: tuple[bool, ...] = ()
    op_transient: tuple[float, ...] = ()
    """op_transient[t]: the transient working-memory part of op_constant[t] (what a saved-tensor probe does not
    see: `peak(..., transients=False)`); empty: none."""

    def held_at(self) -> list[tuple[int, ...]]:
        """For each op, the chunks whose activations are held while it runs (for the ILP rows)."""
        held: set[int] = set()
        out = []
        for c, fwd in zip(self.op_chunks, self.op_is_forward, strict=True):
            if fwd:
                held.add(c)
            out.append(tuple(sorted(held)))
            if not fwd:
                held.discard(c)
        return out

    def peak(self, recompute: Sequence[int], *, transients: bool = True) -> float:
        """Peak bytes over the op order with `recompute[c]` layers recomputed per chunk. `transients=False` gives
        what the executor's CPU probe counts: the tensors held for backward (activations, checkpoints, K/V of
        earlier slices and their gradients, the GEMM operands kept for W ops), without each op's working memory
        (`executor.parallel.pipeline.memory_probe`)."""
        held = 0.0
        waiting = 0.0  # weight-gradient operands kept for later W ops
        peak = 0.0
        is_w = self.op_is_weight_grads or (False,) * len(self.op_chunks)
        left_out = self.op_transient if not transients and self.op_transient else (0.0,) * len(self.op_chunks)
        ops = zip(self.op_chunks, self.op_is_forward, is_w, self.op_constant, left_out, strict=True)
        for c, fwd, w, const, transient in ops:
            const -= transient
            kept = self.num_layers - recompute[c]
            if w:
                peak = max(peak, held + waiting + const)
                waiting -= self.weight_grads_held[c] * kept
                continue
            size = self.base[c] + self.per_layer[c] * recompute[c]
            if fwd:
                held += size
            extra = self.deferred[c] * kept if self.deferred and not fwd else 0.0
            peak = max(peak, held + waiting + const + extra)
            if not fwd:
                held -= size
                if self.weight_grads_held:
                    waiting += self.weight_grads_held[c] * kept
        return peak


def stage_memory(
    lane: Lane,
    pipeline: PipelineSpec,
    stage: int,
    cost: CostModel,
    lengths: Mapping[int, int],
    tokens: Sequence[int],
    prefix_kv_rows: Sequence[int] | None = None,
) -> StageMemory:
    """Build the linear memory model of `lane` on `stage` (tokens[c]: tokens of chunk c; prefix_kv_rows[c]: its
    `ChunkShape.prefix_kv_rows`, derived from the segments when not given). A chunk with a W op in the stage's
    order defers its weight gradients (validation allows W ops only under `Plan.defer_weight_grads`)."""
    s = lane.sp_degree
    if prefix_kv_rows is None:
        prefix_kv_rows = [ChunkShape.of(chunk).prefix_kv_rows for chunk in lane.chunks]
    layers = pipeline.layers_of(stage)
    last = stage == pipeline.num_stages - 1
    num_chunks = len(lane.chunks)
    # tokens of non-final slices (their K/V is read by later slices) and each sliced sequence's chain
    slice_tokens = [0] * num_chunks
    chains: dict[int, list[tuple[int, int]]] = {}
    for c, chunk in enumerate(lane.chunks):
        for seg in chunk.segments:
            length = lengths.get(seg.seq_id, seg.end)
            if seg.start > 0 or seg.end < length:
                chains.setdefault(seg.seq_id, []).append((seg.start, c))
                if seg.end < length:
                    slice_tokens[c] += seg.end - seg.start
    earlier_of_last: dict[int, list[int]] = {}
    for chain in chains.values():
        ordered = [c for _, c in sorted(chain)]
        if len(ordered) > 1:
            earlier_of_last.setdefault(ordered[-1], []).extend(ordered[:-1])

    kv_grad = [cost.kv_bytes(slice_tokens[c], s, layers) if slice_tokens[c] else 0.0 for c in range(num_chunks)]
    if not chains and not any(prefix_kv_rows):
        base, per_layer, transient = _whole_sequence_bytes(cost, s, layers, last, tokens)
    else:
        shapes = [
            ChunkShape(num_tokens=n, attn_pairs=0.0, prefix_kv_rows=rows)
            for n, rows in zip(tokens, prefix_kv_rows, strict=True)
        ]

        def held_bytes(c: int, r: int) -> float:
            act = cost.chunk_activation_bytes(
                shapes[c], sp_degree=s, num_layers=layers, recompute_layers=r, is_last_stage=last
            )
            copies = r if cost.options.recompute_scope is RecomputeScope.LAYER else 0  # MLP-only: K/V kept anyway
            return act + (cost.kv_bytes(slice_tokens[c], s, copies) if slice_tokens[c] and copies else 0.0)

        base = tuple(held_bytes(c, 0) for c in range(num_chunks))
        per_layer = tuple(held_bytes(c, 1) - base[c] if layers else 0.0 for c in range(num_chunks))
        transient = [cost.transient_bytes(shapes[c], sp_degree=s, is_last_stage=last) for c in range(num_chunks)]
    ops = lane.schedule[stage]
    constants = []
    op_transient = []
    grads = 0.0
    for op in ops:
        c = op.chunk
        if op.kind == "W":  # its GEMMs' weight gradients: parameter-sized, no activation working memory
            constants.append(grads)
            op_transient.append(0.0)
            continue
        if op.kind == "B":
            grads += sum(kv_grad[e] for e in earlier_of_last.get(c, ()))
        constants.append(transient[c] + grads)
        op_transient.append(transient[c])
        if op.kind == "B":
            grads -= kv_grad[c]
    w_chunks = {op.chunk for op in ops if op.kind == "W"}
    return StageMemory(
        num_layers=layers,
        base=base,
        per_layer=per_layer,
        op_chunks=tuple(op.chunk for op in ops),
        op_is_forward=tuple(op.kind == "F" for op in ops),
        op_constant=tuple(constants),
        deferred=tuple(cost.deferring_backward_bytes(n, s) if c in w_chunks else 0.0 for c, n in enumerate(tokens))
        if w_chunks
        else (),
        weight_grads_held=tuple(
            cost.weight_grad_operand_bytes(n, s) if c in w_chunks else 0.0 for c, n in enumerate(tokens)
        )
        if w_chunks
        else (),
        op_is_weight_grads=tuple(op.kind == "W" for op in ops) if w_chunks else (),
        op_transient=tuple(op_transient),
    )


def _whole_sequence_bytes(
    cost: CostModel, sp_degree: int, layers: int, last: bool, tokens: Sequence[int]
) -> tuple[tuple[float, ...], tuple[float, ...], list[float]]:
    """(base, per_layer, transient) of chunks of whole sequences (no slice, no K/V prefix).

    Each of these is a chunk's tokens per device times one per-token figure of the stage, so the figures are
    taken once, at one token per device, and multiplied: the same products, to the bit, as one cost-model call
    per chunk, at a fraction of the time (the memory timeline of thousands of lanes is built every plan)."""
    held = cost.chunk_activation_bytes(
        sp_degree, sp_degree=sp_degree, num_layers=layers, recompute_layers=0, is_last_stage=last
    )
    held_one_recomputed = cost.chunk_activation_bytes(
        sp_degree, sp_degree=sp_degree, num_layers=layers, recompute_layers=1, is_last_stage=last
    )
    working = cost.transient_bytes(sp_degree, sp_degree=sp_degree, is_last_stage=last)
    per_device = [tokens_per_device(n, sp_degree) for n in tokens]
    base = tuple(t * held for t in per_device)
    per_layer = tuple(t * held_one_recomputed - b if layers else 0.0 for t, b in zip(per_device, base, strict=True))
    return base, per_layer, [t * working for t in per_device]
