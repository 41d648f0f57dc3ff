"""The work model: per-stage forward+backward seconds of a whole sequence on a lane of SP degree s.

Strategies rank layouts by it before building anything (building and simulating a plan is far costlier),
and the lane ILP and longest-processing-time dealing balance lanes with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner_service.cost_model import ChunkShape, CostModel
from proto import PipelineSpec, RecomputeScope


@dataclass(frozen=True, slots=True)
class WorkModel:
    """w_s(L) = a*L^2 + b*L + c: per-stage fwd+bwd seconds of a whole sequence on a lane of size s."""

    sp_degree: int
    a: float
    b: float
    c: float

    def __call__(self, lengths: np.ndarray) -> np.ndarray:
        return (self.a * lengths + self.b) * lengths + self.c


def work_model(cost: CostModel, pipeline: PipelineSpec, sp_degree: int) -> WorkModel:
    """Fit the quadratic from three evaluations of the cost model on the busiest stage (its terms are quadratic
    in L; the busiest stage is the one with the most layers, or the last one with the LM head and the loss, and
    which one can change with L: the head is linear in tokens, so the fit follows the busier one at each point)."""
    spans = sp_degree > cost.cluster.devices_per_node
    last = pipeline.num_stages - 1
    stages = {(pipeline.layers_of(p), p == last) for p in range(pipeline.num_stages)}
    xs = [1024.0 * sp_degree, 2048.0 * sp_degree, 4096.0 * sp_degree]
    ys = [
        max(
            cost.chunk_cost_s(
                ChunkShape.from_segments([(0, int(x))]),
                sp_degree=sp_degree,
                num_layers=layers,
                is_last_stage=is_last,
                spans_nodes=spans,
            )
            for layers, is_last in stages
        )
        for x in xs
    ]
    a, b, c = np.polyfit(xs, ys, 2)
    return WorkModel(sp_degree, float(a), float(b), float(c))


def pipelined_estimate_s(per_stage_s: float, num_stages: int, chunks_per_stage: int) -> float:
    """Per-stage work stretched by the 1F1B fill and drain: (P - 1) of the m = chunks_per_stage * P chunks."""
    return per_stage_s * (1 + (num_stages - 1) / (chunks_per_stage * num_stages))


def _quadratic(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    a, b, c = np.polyfit(xs, ys, 2)
    return float(a), float(b), float(c)


@dataclass(frozen=True, slots=True)
class SimulatedWork:
    """What the simulator will charge a sequence on a lane of SP degree s at one pipeline split, per stage.

    The lane ILP balances lanes with it (with `fidelity`), so its makespan is in the simulator's terms:
    - the work model's compute and all-to-alls, without the per-chunk constant (`chunk_overhead_s` instead:
      short sequences share chunks, so they share the per-layer launch overhead);
    - the recompute memory forces on a sequence of that length on that lane size (`forced_recompute_s`):
      layers recomputed so that its activations (all its slices are held until its first slice's backward
      when sliced, plus the dK/dV accumulators) fit the busiest stage, times one layer's forward;
    - the 1F1B fill and drain as a stretch factor (`stretch`) with `chunks_per_stage` x P chunks per lane.
    The per-stage gradient sync is the same for every lane of a split; `sync_exposed_s` is added to the
    estimate so that splits compare.
    """

    sp_degree: int
    work: WorkModel
    recompute_per_layer: tuple[float, float, float]
    """Quadratic in L: forward seconds of one layer (+ its all-to-alls) of a whole sequence."""
    held_bytes_per_token: float
    """Bytes per token (whole sequence, on one device of the lane) held until backward with no recompute."""
    saved_bytes_per_token_layer: float
    """Bytes per token one recomputed layer frees."""
    budget_bytes: float
    """Activation memory of the busiest stage (usable less model states)."""
    num_layers: int
    stretch: float
    chunk_overhead_s: float
    """Per-chunk constant (launch overheads, all-to-all latency) times the chunks a lane runs, stretched."""
    sync_exposed_s: float

    def forced_recompute_s(self, lengths: np.ndarray) -> np.ndarray:
        excess = self.held_bytes_per_token * lengths - self.budget_bytes
        per_layer = np.maximum(self.saved_bytes_per_token_layer * lengths, 1e-9)
        layers = np.clip(np.ceil(np.maximum(excess, 0.0) / per_layer), 0, self.num_layers)
        a, b, c = self.recompute_per_layer
        return layers * ((a * lengths + b) * lengths + c)

    def __call__(self, lengths: np.ndarray) -> np.ndarray:
        """Per-sequence seconds the ILP charges (no per-chunk constant: see `chunk_overhead_s`)."""
        w = self.work
        compute = (w.a * lengths + w.b) * lengths
        return (compute + self.forced_recompute_s(lengths)) * self.stretch


BACKWARD_SHARE = 2 / 3
"""Share of a chunk's forward + backward time its backward takes (backward ~2x forward): the last backward op,
which the data-parallel reduction runs beside, is about this share of a lane's last chunk."""


@dataclass(frozen=True, slots=True)
class SyncExposure:
    """Per stage of a split, its data-parallel collectives in the pieces the simulator overlaps: the reduction
    that runs beside each lane's last backward op (`step_s`, with the share left after its last bucket), and
    what runs after the step (`after_s`, exposed)."""

    step_s: tuple[float, ...]
    bucket_share: tuple[float, ...]
    after_s: tuple[float, ...]

    @classmethod
    def of(cls, cost: CostModel, pipeline: PipelineSpec) -> SyncExposure:
        times = [cost.collective_times(p, pipeline) for p in range(pipeline.num_stages)]
        return cls(
            step_s=tuple(t.step_sync.duration_s for t in times),
            bucket_share=tuple(t.step_bucket_share for t in times),
            after_s=tuple(t.after_step_s for t in times),
        )

    def exposed_s(self, last_op_s: float) -> float:
        """What the slowest stage's collectives add to its work when a lane's last backward op takes
        `last_op_s`: the part of the reduction that op cannot hide (at least its last bucket), and the rest."""
        return max(
            after + max(step * share, step - last_op_s)
            for step, share, after in zip(self.step_s, self.bucket_share, self.after_s, strict=True)
        )


def exposed_sync_s(cost: CostModel, pipeline: PipelineSpec, last_op_s: float = 0.0) -> float:
    """`SyncExposure.exposed_s` of a split (0 for the last op: nothing hidden, an upper estimate)."""
    return SyncExposure.of(cost, pipeline).exposed_s(last_op_s)


def simulated_work(
    cost: CostModel,
    pipeline: PipelineSpec,
    sp_degree: int,
    *,
    sliced: bool,
    chunks_per_stage: int,
    sync_exposed_s: float | None = None,
) -> SimulatedWork:
    """`SimulatedWork` of lanes of SP degree s on `pipeline` (see the class for what each term stands for);
    `sync_exposed_s` when the caller has it (`exposed_sync_s`, the same for every lane size of a split)."""
    s = sp_degree
    stage = max(range(pipeline.num_stages), key=pipeline.layers_of)
    layers = pipeline.layers_of(stage)
    last = stage == pipeline.num_stages - 1
    spans = s > cost.cluster.devices_per_node
    xs = [1024.0 * s, 2048.0 * s, 4096.0 * s]
    recompute = [
        cost.stage_backward_s(
            ChunkShape.from_segments([(0, int(x))]),
            sp_degree=s,
            num_layers=1,
            spans_nodes=spans,
            is_last_stage=False,
            recompute_layers=1,
        ).recompute_s
        for x in xs
    ]
    probe = 1024 * s
    held = cost.chunk_activation_bytes(probe, sp_degree=s, num_layers=layers, is_last_stage=last)
    full = cost.chunk_activation_bytes(
        probe, sp_degree=s, num_layers=layers, recompute_layers=layers, is_last_stage=last
    )
    saved = (held - full) / max(layers, 1)
    if sliced:
        kv = cost.kv_bytes(probe, s, layers)
        held += kv  # dK/dV accumulators of the earlier slices while the later ones run backward
        if cost.options.recompute_scope is RecomputeScope.LAYER:  # an MLP-only recompute never frees its K/V
            saved -= kv / max(layers, 1)  # a recomputed layer of a non-final slice keeps its K/V
    dp = cost.dp_size(pipeline)
    budget = cost.usable_memory_bytes - max(cost.model_state_bytes(p, pipeline, dp) for p in range(pipeline.num_stages))
    budget -= cost.transient_bytes(probe, sp_degree=s, is_last_stage=last)  # one op's working memory
    p_count = pipeline.num_stages
    chunks = chunks_per_stage * p_count
    stretch = 1.0 + (p_count - 1) / chunks
    model = work_model(cost, pipeline, s)
    sync = exposed_sync_s(cost, pipeline) if sync_exposed_s is None else sync_exposed_s
    return SimulatedWork(
        sp_degree=s,
        work=model,
        recompute_per_layer=_quadratic(xs, recompute),
        held_bytes_per_token=held / probe,
        saved_bytes_per_token_layer=max(saved, 0.0) / probe,
        budget_bytes=budget,
        num_layers=layers,
        stretch=stretch,
        chunk_overhead_s=max(model.c, 0.0) * chunks * stretch,
        sync_exposed_s=sync,
    )


@dataclass(frozen=True, slots=True)
class ChunkCostFit:
    """Forward + backward seconds of a chunk on one stage as alpha * attention pairs + beta * tokens + gamma.

    The cost model is linear in a chunk's attention pairs and tokens (whole multiples of s), so three
    evaluations fit it exactly; estimates then price thousands of chunks with numpy instead of one call each."""

    alpha: float
    beta: float
    gamma: float

    def __call__(self, pairs: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return self.alpha * pairs + self.beta * tokens + self.gamma


def chunk_cost_fit(
    cost: CostModel, *, sp_degree: int, num_layers: int, is_last_stage: bool, recompute_layers: int = 0
) -> ChunkCostFit:
    """`ChunkCostFit` of `cost.chunk_cost_s` for chunks on a lane of SP degree s (all-to-alls included)."""
    s = sp_degree
    spans = s > cost.cluster.devices_per_node
    t1, t2 = 1024 * s, 4096 * s
    pairs = float(t1) * t1

    def at(tokens: int, attn_pairs: float) -> float:
        return cost.chunk_cost_s(
            ChunkShape(num_tokens=tokens, attn_pairs=attn_pairs),
            sp_degree=s,
            num_layers=num_layers,
            is_last_stage=is_last_stage,
            spans_nodes=spans,
            recompute_layers=recompute_layers,
        )

    base = at(t1, 0.0)
    beta = (at(t2, 0.0) - base) / (t2 - t1)
    return ChunkCostFit(alpha=(at(t1, pairs) - base) / pairs, beta=beta, gamma=base - beta * t1)
