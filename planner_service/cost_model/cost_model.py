"""`CostModel`: one object answering every time and memory question the planner and simulator ask.

It binds a cluster, a model, a `CostProfile` and the job's `PlanOptions`, and composes the pure functions of
`compute_model`, `comm_model` and `memory_model`. Solvers, the simulator and the CLI all price plans through it,
so every strategy is compared with the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from planner_service.cost_model import comm_model, compute_model, data_parallel, memory_model
from planner_service.cost_model.profile_presets import profile_for
from proto import Batch, Chunk, ClusterSpec, CostProfile, ModelSpec, PipelineSpec, PlanOptions, RecomputeScope
from proto.topology import Topology


@dataclass(frozen=True, slots=True)
class ChunkShape:
    """What the cost of a chunk depends on: its token count, its causal attention pairs Σ((C+L)^2 − C^2), and the
    K/V rows a fused attention kernel concatenates when some segment attends to a prefix."""

    num_tokens: int
    attn_pairs: float
    prefix_kv_rows: int = 0
    """Σ(L + C) over the chunk's segments when any has a context C > 0 (the fused kernels pack every segment's
    keys as [prefix; own] into one new tensor, `executor.attention._packed_with_context`), else 0."""

    @classmethod
    def of(cls, chunk: Chunk | ChunkShape) -> ChunkShape:
        if isinstance(chunk, ChunkShape):
            return chunk
        return cls.from_segments((seg.start, seg.end - seg.start) for seg in chunk.segments)

    @classmethod
    def from_segments(cls, segments: Iterable[tuple[int, int]]) -> ChunkShape:
        """From (context, length) pairs, e.g. [(0, n)] for a whole sequence of n tokens."""
        segs = list(segments)
        tokens = sum(n for _, n in segs)
        context = sum(c for c, _ in segs)
        return cls(
            num_tokens=tokens,
            attn_pairs=compute_model.attention_pairs(segs),
            prefix_kv_rows=tokens + context if context else 0,
        )


@dataclass(frozen=True, slots=True)
class OpCost:
    """Seconds of one pipeline op on each device of a lane's stage, split by cause.

    `recompute_s` (backward only) is the forward of the recomputed layers, including their all-to-alls.
    """

    compute_s: float
    comm_s: float
    recompute_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.compute_s + self.comm_s + self.recompute_s


class LayerTerms(NamedTuple):
    """Per-device seconds of one chunk on one layer of a lane (and of the LM head): the blocks of every op cost.

    The first two (forward compute, all-to-alls) are what a forward layer costs; a named tuple because the
    simulator builds one per (chunk, placement) of every lane.
    """

    forward_s: float
    """One layer's forward compute."""
    alltoall_s: float
    """Its 4 Ulysses all-to-alls (the same again in backward)."""
    head_s: float
    """LM head + loss forward."""
    backward_s: float
    """One layer's backward compute (attention and GEMMs each at their own backward/forward factor)."""
    head_backward_s: float
    """LM head + loss backward."""
    alltoall: comm_model.LinkTimes
    """The all-to-alls split by link class."""
    weight_grad_s: float = 0.0
    """The part of `backward_s` that computes the layer's weight gradients (what a W op takes over)."""
    recompute_s: float = 0.0
    """What one recomputed layer reruns in backward under the options' `recompute_scope`: its forward and
    all-to-alls ('layer'), or its MLP half's forward ('mlp')."""
    recompute_alltoalls: int = 1
    """Layers' worth of all-to-alls that one recomputed layer reruns (1 for 'layer', 0 for 'mlp')."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CostModel:
    """Time and memory of chunks, stages and collectives for one (cluster, model, profile, options)."""

    cluster: ClusterSpec
    """The devices and their links."""
    model: ModelSpec
    """The transformer shape (parameter counts, widths for communication volumes)."""
    profile: CostProfile
    """Every fitted or assumed coefficient."""
    options: PlanOptions = field(default_factory=PlanOptions)
    """Job options that change memory and sync (ZeRO stage)."""

    @classmethod
    def from_specs(
        cls,
        cluster: ClusterSpec,
        model: ModelSpec,
        profile: CostProfile | None = None,
        options: PlanOptions | None = None,
    ) -> CostModel:
        """Bind the specs; without a measured profile, use the documented preset."""
        return cls(
            cluster=cluster,
            model=model,
            profile=profile_for(cluster, model, profile),
            options=options if options is not None else PlanOptions(),
        )

    # ---- compute -----------------------------------------------------------------------------------------
    def layer_forward_s(self, segments: Sequence[tuple[int, int]], sp_degree: int) -> float:
        """Forward compute seconds of one layer for (context, length) segments on a lane of SP degree s."""
        return compute_model.layer_forward_segments_s(self.profile, segments, sp_degree)

    def layer_terms(self, chunk: Chunk | ChunkShape, *, sp_degree: int, spans_nodes: bool) -> LayerTerms:
        """Per-device seconds of one layer's forward, all-to-alls and backward, and of the LM head, for a chunk.

        The building blocks of every op cost; the simulator calls this once per (chunk, placement).
        """
        shape = ChunkShape.of(chunk)
        pairs, tokens, p = shape.attn_pairs, shape.num_tokens, self.profile
        a2a = self.alltoall_layer_links(tokens, sp_degree, spans_nodes)
        forward = compute_model.layer_forward_s(p, attn_pairs=pairs, num_tokens=tokens, sp_degree=sp_degree)
        mlp_only = self.options.recompute_scope is RecomputeScope.MLP
        return LayerTerms(
            forward_s=forward,
            alltoall_s=a2a.duration_s,
            head_s=compute_model.head_forward_s(p, num_tokens=tokens, sp_degree=sp_degree),
            backward_s=compute_model.layer_backward_s(p, attn_pairs=pairs, num_tokens=tokens, sp_degree=sp_degree),
            head_backward_s=compute_model.head_backward_s(p, num_tokens=tokens, sp_degree=sp_degree),
            alltoall=a2a,
            weight_grad_s=compute_model.layer_weight_grad_s(p, num_tokens=tokens, sp_degree=sp_degree),
            recompute_s=(
                compute_model.layer_mlp_forward_s(p, num_tokens=tokens, sp_degree=sp_degree)
                if mlp_only
                else forward + a2a.duration_s
            ),
            recompute_alltoalls=0 if mlp_only else 1,
        )

    def stage_forward_s(
        self, chunk: Chunk | ChunkShape, *, sp_degree: int, num_layers: int, spans_nodes: bool, is_last_stage: bool
    ) -> OpCost:
        """F(chunk) on a stage of `num_layers` layers: layers (+ LM head on the last stage) and their all-to-alls."""
        t = self.layer_terms(chunk, sp_degree=sp_degree, spans_nodes=spans_nodes)
        return OpCost(
            compute_s=num_layers * t.forward_s + (t.head_s if is_last_stage else 0.0) + self.profile.op_overhead_s,
            comm_s=num_layers * t.alltoall_s,
        )

    def stage_backward_s(
        self,
        chunk: Chunk | ChunkShape,
        *,
        sp_degree: int,
        num_layers: int,
        spans_nodes: bool,
        is_last_stage: bool,
        recompute_layers: int = 0,
    ) -> OpCost:
        """B(chunk): the layers' (+ LM head's) backward, the backward all-to-alls, and the forward (with its
        all-to-alls) of the recomputed layers."""
        t = self.layer_terms(chunk, sp_degree=sp_degree, spans_nodes=spans_nodes)
        r = min(max(recompute_layers, 0), num_layers)
        return OpCost(
            compute_s=num_layers * t.backward_s
            + (t.head_backward_s if is_last_stage else 0.0)
            + self.profile.op_overhead_s,
            comm_s=num_layers * t.alltoall_s,
            recompute_s=r * t.recompute_s,
        )

    def chunk_cost_s(
        self,
        chunk: Chunk | ChunkShape,
        *,
        sp_degree: int,
        num_layers: int,
        is_last_stage: bool = False,
        spans_nodes: bool = False,
        recompute_layers: int = 0,
        include_comm: bool = True,
    ) -> float:
        """Forward + backward seconds of a chunk on one stage, for balancing chunks and lanes.

        With `include_comm` (default) the all-to-alls are included, since they scale with the chunk's tokens
        and dominate on inter-node lanes; without it, only compute (+ recompute).
        """
        f = self.stage_forward_s(
            chunk, sp_degree=sp_degree, num_layers=num_layers, spans_nodes=spans_nodes, is_last_stage=is_last_stage
        )
        b = self.stage_backward_s(
            chunk,
            sp_degree=sp_degree,
            num_layers=num_layers,
            spans_nodes=spans_nodes,
            is_last_stage=is_last_stage,
            recompute_layers=recompute_layers,
        )
        if include_comm:
            return f.total_s + b.total_s
        return f.compute_s + b.compute_s + b.recompute_s

    def ideal_s(self, batch: Batch) -> float:
        """Lower bound: forward + backward compute of the whole batch on the full model / N devices.

        Sequences unsliced, s = 1, all layers + the LM head, no communication, no recompute, no bubbles, and no
        per-call overhead b (it depends on how the plan packs chunks, so a bound must leave it out).
        """
        work = compute_model.training_s(
            self.profile,
            attn_pairs=float(sum(n * n for n in batch.lengths)),
            num_tokens=float(sum(batch.lengths)),
            num_layers=self.model.num_layers,
        )
        return work / self.cluster.num_devices

    # ---- communication -----------------------------------------------------------------------------------
    def alltoall_layer_s(self, num_tokens: int, sp_degree: int, spans_nodes: bool) -> float:
        """The 4 Ulysses all-to-alls of one layer (forward; backward is the same again) on an aligned SP group."""
        return self.alltoall_layer_links(num_tokens, sp_degree, spans_nodes).duration_s

    def alltoall_layer_links(self, num_tokens: int, sp_degree: int, spans_nodes: bool) -> comm_model.LinkTimes:
        """`alltoall_layer_s` split by link class (NVLink and network parts run in parallel)."""
        per_node = comm_model.group_devices_per_node(sp_degree, self.cluster.devices_per_node, spans_nodes=spans_nodes)
        return comm_model.ulysses_layer_links(
            self.profile, self.model, num_tokens=num_tokens, sp_degree=sp_degree, per_node=per_node
        )

    def p2p_s(self, num_tokens: int, sp_degree: int, crosses_nodes: bool) -> float:
        """Send of a chunk's activations (or gradients) between neighbouring stages of a lane."""
        return comm_model.p2p_s(
            self.profile, self.model, num_tokens=num_tokens, sp_degree=sp_degree, crosses_nodes=crosses_nodes
        )

    # ---- data-parallel collectives (the executor contract in `data_parallel`) ------------------------------
    def stage_group(self, stage: int, pipeline: PipelineSpec) -> data_parallel.StageGroup:
        """Stage `stage`'s data-parallel group: its block of N/P devices and the parameters it holds."""
        topology = self.topology(pipeline)
        block = topology.stage_block_size
        params = memory_model.stage_params(self.model, pipeline, stage)
        layers = pipeline.layers_of(stage)
        return data_parallel.StageGroup(
            num_params=params,
            num_units=layers + (1 if params > layers * self.model.params_per_layer else 0),
            dp_size=block,
            nodes=max(1, min(topology.nodes_of_stage(stage), block)),
        )

    def collective_calls(self, stage: int, pipeline: PipelineSpec) -> tuple[data_parallel.CollectiveCall, ...]:
        """What stage `stage`'s block issues and when, under `options.zero_stage` (the executor contract)."""
        return data_parallel.contract_calls(
            self.stage_group(stage, pipeline),
            zero_stage=self.options.zero_stage,
            bucket_bytes=self.profile.grad_bucket_bytes,
            grad_bytes=self.grad_reduce_bytes,
            param_bytes=self.profile.param_bytes,
        )

    def stage_collectives(self, pipeline: PipelineSpec, *, max_chunks: int) -> list[data_parallel.StageCollectives]:
        """Per stage, the collectives (counts, unsharded bytes) one rank takes part in during a step whose busiest
        lane runs `max_chunks` chunks: what the executor's collectives are counted against."""
        return [
            data_parallel.stage_collectives(p, self.collective_calls(p, pipeline), max_chunks=max_chunks)
            for p in range(pipeline.num_stages)
        ]

    def collective_times(self, stage: int, pipeline: PipelineSpec) -> data_parallel.StageCollectiveTimes:
        """Stage `stage`'s data-parallel collectives priced on its block, in the pieces the simulator overlaps."""
        return data_parallel.stage_collective_times(
            self.stage_group(stage, pipeline),
            self.collective_calls(stage, pipeline),
            profile=self.profile,
            intra_latency_s=_or(self.profile.allreduce_latency_intra_s, self.cluster.intra_node_latency_s),
            inter_latency_s=_or(self.profile.allreduce_latency_inter_s, self.cluster.inter_node_latency_s),
        )

    def grad_sync_s(self, stage: int, pipeline: PipelineSpec) -> float:
        """Stage `stage`'s once-per-step collectives on their own: ZeRO-0 all-reduce, ZeRO-1 reduce-scatter +
        parameter all-gather, ZeRO-2 parameter all-gather, ZeRO-3 none (its collectives are per chunk)."""
        times = self.collective_times(stage, pipeline)
        return times.step_sync.duration_s + times.after_step_s

    @property
    def grad_reduce_bytes(self) -> int:
        """Bytes per gradient element in data-parallel reductions (`PlanOptions.grad_reduce_dtype`)."""
        return self.options.grad_reduce_dtype.element_bytes(self.model.bytes_per_element)

    # ---- memory ------------------------------------------------------------------------------------------
    @property
    def usable_memory_bytes(self) -> float:
        """What model states + activations may use on one device (device capacity less the reserve)."""
        return memory_model.usable_memory_bytes(self.profile, self.cluster.device_memory_bytes)

    @property
    def memory_reserve_bytes(self) -> float:
        return self.profile.memory_reserve_bytes

    def model_state_bytes(self, stage: int, pipeline: PipelineSpec, dp_size: int) -> float:
        """Params + grads + optimizer of one stage on one device, ZeRO-sharded per `options.zero_stage`."""
        return memory_model.model_state_bytes(
            self.profile, self.model, pipeline, stage=stage, dp_size=dp_size, zero_stage=self.options.zero_stage
        )

    def chunk_activation_bytes(
        self,
        chunk: Chunk | ChunkShape | int,
        *,
        sp_degree: int,
        num_layers: int,
        recompute_layers: int = 0,
        is_last_stage: bool = False,
    ) -> float:
        """Bytes one device keeps for a chunk between its forward and backward.

        `chunk` may be a token count: a chunk without K/V prefix (a prefix's concatenated K/V needs the segments).
        """
        shape = _shape_of(chunk)
        return memory_model.chunk_activation_bytes(
            self.profile,
            self.model,
            tokens_per_device=comm_model.tokens_per_device(shape.num_tokens, sp_degree),
            sp_degree=sp_degree,
            num_layers=num_layers,
            recompute_layers=recompute_layers,
            is_last_stage=is_last_stage,
            prefix_kv_rows=shape.prefix_kv_rows,
            recompute_scope=self.options.recompute_scope,
        )

    def kv_bytes(self, num_tokens: int, sp_degree: int, num_layers: int) -> float:
        """K/V bytes per device of `num_tokens` tokens over `num_layers` layers (GQA replication included)."""
        return memory_model.kv_bytes(
            self.profile, self.model, num_tokens=num_tokens, sp_degree=sp_degree, num_layers=num_layers
        )

    def transient_bytes(self, chunk: Chunk | ChunkShape | int, *, sp_degree: int, is_last_stage: bool) -> float:
        """Working memory on top of what is held while an op of this chunk runs (`chunk` as above)."""
        shape = _shape_of(chunk)
        return memory_model.transient_bytes(
            self.profile,
            self.model,
            tokens_per_device=comm_model.tokens_per_device(shape.num_tokens, sp_degree),
            sp_degree=sp_degree,
            is_last_stage=is_last_stage,
            prefix_kv_rows=shape.prefix_kv_rows,
        )

    def layer_activation_bytes(self, num_tokens: int, sp_degree: int) -> float:
        """Bytes per device that one kept layer of a chunk holds for backward (without a prefix's K/V): what that
        layer's backward frees."""
        per_token = memory_model.kept_layer_bytes_per_token(self.profile, self.model, sp_degree)
        return comm_model.tokens_per_device(num_tokens, sp_degree) * per_token

    def deferring_backward_bytes(self, num_tokens: int, sp_degree: int) -> float:
        """Bytes per device per kept layer by which a backward op that defers its weight gradients peaks above what
        its chunk held when it began.

        Back-propagating a kept layer frees its saved activations but keeps its GEMMs' inputs (among them) and
        their output gradients for the W op, so the chunk's bytes change by (operands - activations) per layer:
        a straight line over the op, highest at its start or its end. Positive only when a layer's W operands
        outweigh its activations (never with the presets, whose operands are the activations less fp32 statistics;
        a measured profile may differ); a chunk that attends to a prefix frees that K/V too, so leaving it out keeps
        this an upper bound."""
        operands = self.weight_grad_operand_bytes(num_tokens, sp_degree)
        return max(0.0, operands - self.layer_activation_bytes(num_tokens, sp_degree))

    def weight_grad_operand_bytes(self, num_tokens: int, sp_degree: int) -> float:
        """Bytes per device per kept layer that a chunk keeps from its backward op until its W op: its GEMMs'
        output gradients and inputs."""
        per_token = self.profile.deferred_grad_bytes_per_token_layer + self.profile.deferred_input_bytes_per_token_layer
        return comm_model.tokens_per_device(num_tokens, sp_degree) * per_token

    # ---- placement helpers -------------------------------------------------------------------------------
    def topology(self, pipeline: PipelineSpec) -> Topology:
        """Where the ranks of this cluster sit under `pipeline` (stage blocks, lanes, nodes)."""
        return Topology.of(self.cluster, pipeline.num_stages)

    def dp_size(self, pipeline: PipelineSpec) -> int:
        """Devices holding one stage (the stage block, N / P): its data-parallel degree."""
        return self.topology(pipeline).stage_block_size


def _or(measured: float | None, default: float) -> float:
    """A profile's measured value, else the cluster's."""
    return default if measured is None else measured


def _shape_of(chunk: Chunk | ChunkShape | int) -> ChunkShape:
    """A token count stands for a chunk of whole sequences (no K/V prefix)."""
    if isinstance(chunk, int):
        return ChunkShape(num_tokens=chunk, attn_pairs=0.0)
    return ChunkShape.of(chunk)
