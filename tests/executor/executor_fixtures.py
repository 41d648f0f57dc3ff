"""Shared builders for executor tests: tiny specs, random batches, and random valid single-stage plans.

Plans are built by hand (not by the planner) so the executor is tested on layouts no solver would pick:
random power-of-two lane layouts, random packing of sequences into chunks, random op orders.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import typer

from proto.batch import Batch
from proto.cluster import ClusterSpec
from proto.fingerprint import fingerprint
from proto.model import ModelSpec
from proto.plan import Chunk, Lane, Op, PipelineSpec, Plan, Predicted, RecomputeScope, Segment, ZeroStage
from proto.topology import sp_degree_problem
from proto.validation import validate_plan


def cpu_cluster(num_nodes: int, devices_per_node: int) -> ClusterSpec:
    return ClusterSpec(
        name=f"cpu-{num_nodes}x{devices_per_node}",
        num_nodes=num_nodes,
        devices_per_node=devices_per_node,
        device_memory_bytes=8e9,
        peak_flops=1e11,
        intra_node_bandwidth=1e10,
        inter_node_bandwidth=1e9,
    )


def tiny_model(**overrides: object) -> ModelSpec:
    fields: dict[str, object] = {
        "name": "tiny",
        "num_layers": 2,
        "hidden_size": 64,
        "num_heads": 8,
        "num_kv_heads": 2,
        "ffn_hidden_size": 128,
        "vocab_size": 256,
    }
    fields.update(overrides)
    return ModelSpec.model_validate(fields)


def random_batch(rng: random.Random, *, num_seqs: int, max_len: int, first_id: int = 0) -> Batch:
    lengths = [rng.choice([1, 2, rng.randint(1, max_len), rng.randint(1, max_len)]) for _ in range(num_seqs)]
    ids = rng.sample(range(first_id, first_id + 10 * num_seqs), num_seqs)
    return Batch(seq_ids=ids, lengths=lengths)


def random_lane_layout(rng: random.Random, world: int, model: ModelSpec, split_prob: float = 0.5) -> list[list[int]]:
    """A random partition of range(world) into aligned power-of-two blocks usable as SP groups."""

    def split(lo: int, size: int) -> list[list[int]]:
        allowed = sp_degree_problem(size, model) is None
        if size > 1 and (not allowed or rng.random() < split_prob):
            half = size // 2
            return split(lo, half) + split(lo + half, half)
        return [list(range(lo, lo + size))]

    return split(0, world)


def make_plan(
    batch: Batch,
    cluster: ClusterSpec,
    model: ModelSpec,
    lanes: list[tuple[list[int], list[list[int]]]],
    *,
    interleaved: bool = True,
    recompute: list[list[int]] | None = None,
) -> Plan:
    """A single-stage plan: per lane its ranks and its chunks as lists of whole sequences (by id).

    interleaved: schedule F0,B0,F1,B1,...; otherwise all forwards then all backwards.
    recompute: per lane, per chunk, layers recomputed (zeros by default).
    """
    length = batch.length_of()
    built = []
    for i, (ranks, chunks) in enumerate(lanes):
        n = len(chunks)
        if interleaved:
            ops = [Op(kind=k, chunk=c) for c in range(n) for k in ("F", "B")]
        else:
            ops = [Op(kind="F", chunk=c) for c in range(n)] + [Op(kind="B", chunk=c) for c in reversed(range(n))]
        built.append(
            Lane(
                lane_id=i,
                sp_degree=len(ranks),
                ranks=[list(ranks)],
                chunks=[Chunk(segments=[Segment(seq_id=s, start=0, end=length[s]) for s in chunk]) for chunk in chunks],
                schedule=[ops],
                recompute=[recompute[i] if recompute is not None else [0] * n],
            )
        )
    plan = Plan(
        strategy="hand",
        cluster_fingerprint=fingerprint(cluster),
        model_fingerprint=fingerprint(model),
        batch_fingerprint=batch.fingerprint,
        pipeline=PipelineSpec.even(model.num_layers, 1),
        lanes=built,
        predicted=Predicted(iteration_s=0, ideal_s=0),
    ).with_id()
    validate_plan(plan, batch, cluster, model)
    return plan


def random_plan(
    rng: random.Random, batch: Batch, cluster: ClusterSpec, model: ModelSpec, *, random_recompute: bool = False
) -> Plan:
    """A random valid single-stage plan: random lanes, random assignment and packing, random op order."""
    layout = random_lane_layout(rng, cluster.num_devices, model)
    members: list[list[int]] = [[] for _ in layout]
    for seq in batch.seq_ids:
        members[rng.randrange(len(layout))].append(seq)
    lanes = []
    for ranks, seqs in zip(layout, members, strict=True):
        rng.shuffle(seqs)
        chunks: list[list[int]] = []
        for seq in seqs:
            if not chunks or rng.random() < 0.4:
                chunks.append([])
            chunks[-1].append(seq)
        lanes.append((ranks, chunks))
    recompute = None
    if random_recompute:
        recompute = [[rng.randint(0, model.num_layers) for _ in chunks] for _, chunks in lanes]
    return make_plan(batch, cluster, model, lanes, interleaved=rng.random() < 0.7, recompute=recompute)


# --- pipeline plans (P >= 1) with sliced sequences ------------------------------------------------------------

SegmentSpec = tuple[int, int, int]
"""(seq_id, start, end)"""


def make_pipeline_plan(
    batch: Batch,
    cluster: ClusterSpec,
    model: ModelSpec,
    pipeline: PipelineSpec,
    lanes: list[tuple[int, int, list[list[SegmentSpec]]]],
    *,
    recompute: list[list[list[int]]] | None = None,
    schedule: list[list[list[Op]]] | None = None,
    warmup_groups: int = 0,
) -> Plan:
    """A validated plan: per lane (offset inside the stage block, SP degree, chunks as segment lists).

    Schedules come from the planner's `build_schedule` (1F1B honouring the slice order, at `warmup_groups`) unless
    given;
    recompute[lane][stage][chunk] defaults to zeros.
    """
    from planner_service.schedules import build_schedule

    block = cluster.num_devices // pipeline.num_stages
    built = []
    for i, (offset, sp, chunk_specs) in enumerate(lanes):
        chunks = [Chunk(segments=[Segment(seq_id=q, start=a, end=b) for q, a, b in spec]) for spec in chunk_specs]
        ranks = [[p * block + offset + j for j in range(sp)] for p in range(pipeline.num_stages)]
        built.append(
            Lane(
                lane_id=i,
                sp_degree=sp,
                ranks=ranks,
                chunks=chunks,
                schedule=schedule[i]
                if schedule is not None
                else build_schedule(chunks, pipeline.num_stages, warmup_groups),
                recompute=recompute[i] if recompute is not None else [[0] * len(chunks)] * pipeline.num_stages,
            )
        )
    plan = Plan(
        strategy="hand",
        cluster_fingerprint=fingerprint(cluster),
        model_fingerprint=fingerprint(model),
        batch_fingerprint=batch.fingerprint,
        pipeline=pipeline,
        lanes=built,
        predicted=Predicted(iteration_s=0, ideal_s=0),
    ).with_id()
    validate_plan(plan, batch, cluster, model)
    return plan


def at_zero_stage(plan: Plan, zero_stage: int) -> Plan:
    """A hand-built plan declared for `zero_stage` (the executor runs only plans for its job's own stage); the
    layout is unchanged, so exactness is tested on the same lanes under every stage."""
    stage = ZeroStage(zero_stage)
    options = plan.options.model_copy(update={"zero_stage": stage, "max_zero_stage": stage})
    return plan.model_copy(update={"options": options}).with_id()


def with_recompute_scope(plan: Plan, scope: RecomputeScope) -> Plan:
    """The plan (same layout and recompute counts) declared for `scope`: what its recomputed layers rerun."""
    options = plan.options.model_copy(update={"recompute_scope": scope})
    return plan.model_copy(update={"options": options}).with_id()


def with_deferred_weight_grads(
    plan: Plan, batch: Batch, cluster: ClusterSpec, model: ModelSpec, *, queue: bool
) -> Plan:
    """The plan (same layout) with `defer_weight_grads` and W ops placed by `place_weight_grads` on the preset cost
    model: each right after its B (`queue=False`), or where the stages wait (`queue=True`)."""
    from planner_service.cost_model import CostModel
    from planner_service.simulator.weight_grad_placement import place_weight_grads

    deferred = plan.model_copy(update={"defer_weight_grads": True})
    cost = CostModel.from_specs(cluster, model, options=plan.options)
    return place_weight_grads(deferred, batch, cost, queue=queue).with_id()


def with_full_weight_grad_tail(plan: Plan) -> Plan:
    """The plan (same layout) with `defer_weight_grads` and every chunk's W op in its stage's trailing group (the
    first stage's last B chunk excepted, as `weight_grad_tail` does): the longest groups, every recompute mix."""
    from planner_service.simulator.weight_grad_tail import tail_schedule

    lanes = []
    for lane in plan.lanes:
        everything = [1.0] * len(lane.chunks)
        schedule = [
            tail_schedule(ops, everything, float("inf"), first_stage=p == 0) for p, ops in enumerate(lane.schedule)
        ]
        lanes.append(lane.model_copy(update={"schedule": schedule}))
    return plan.model_copy(update={"defer_weight_grads": True, "lanes": lanes}).with_id()


def random_layer_split(rng: random.Random, num_layers: int, num_stages: int) -> PipelineSpec:
    """A random (possibly uneven) split of the layers into `num_stages` non-empty stages."""
    cuts = sorted(rng.sample(range(1, num_layers), num_stages - 1))
    bounds = [0, *cuts, num_layers]
    return PipelineSpec(num_stages=num_stages, layer_ranges=list(itertools.pairwise(bounds)))


def random_slices(rng: random.Random, length: int, max_slices: int) -> list[tuple[int, int]]:
    """Random cut points: 1..max_slices consecutive [start, end) ranges covering [0, length)."""
    count = rng.randint(1, min(max_slices, length))
    cuts = sorted(rng.sample(range(1, length), count - 1)) if count > 1 else []
    bounds = [0, *cuts, length]
    return list(itertools.pairwise(bounds))


def random_lane_chunks(
    rng: random.Random, seqs: list[int], lengths: dict[int, int], slice_prob: float, max_slices: int
) -> list[list[SegmentSpec]]:
    """Chunks of one lane: sequences sliced at random points (each slice its own chunk), short sequences
    packed, and sometimes packed *after* a tail slice in the same chunk (a hybrid chunk)."""
    chunks: list[list[SegmentSpec]] = []
    open_chunk = False  # the last chunk may take more whole sequences
    for seq in seqs:
        n = lengths[seq]
        pieces = random_slices(rng, n, max_slices) if n > 1 and rng.random() < slice_prob else [(0, n)]
        if len(pieces) == 1:
            if open_chunk and rng.random() < 0.6:
                chunks[-1].append((seq, 0, n))
            else:
                chunks.append([(seq, 0, n)])
            open_chunk = True
            continue
        for a, b in pieces:
            chunks.append([(seq, a, b)])
        open_chunk = True  # the tail slice's chunk may take short sequences: a hybrid chunk
    return chunks


def perturb_plan(
    rng: random.Random,
    plan: Plan,
    batch: Batch,
    cluster: ClusterSpec,
    model: ModelSpec,
    *,
    pipeline: PipelineSpec | None = None,
    slice_prob: float = 0.5,
    max_slices: int = 4,
) -> Plan:
    """A random valid variant of `plan`: random lane layout (per stage block), sequences kept in the plan's
    order but dealt to random lanes, random slice points (hybrid chunks included), random recompute counts,
    `build_schedule` schedules at a random warm-up depth (0-2), and `pipeline` (default: the plan's) for the
    layer split."""
    pipeline = pipeline or plan.pipeline
    lengths = batch.length_of()
    order: list[int] = []
    for lane in plan.lanes:
        for chunk in lane.chunks:
            order += [seg.seq_id for seg in chunk.segments if seg.seq_id not in order]
    block = cluster.num_devices // pipeline.num_stages
    layout = random_lane_layout(rng, block, model)
    while len(layout) > len(order):  # every lane needs a sequence
        layout = random_lane_layout(rng, block, model, split_prob=0.2)
    members: list[list[int]] = [[] for _ in layout]
    firsts = rng.sample(order, len(layout))  # one sequence for each lane, the rest anywhere
    for seq in order:
        lane = firsts.index(seq) if seq in firsts else rng.randrange(len(layout))
        members[lane].append(seq)
    lanes = []
    recompute = []
    for ranks, seqs in zip(layout, members, strict=True):
        lanes.append((ranks[0], len(ranks), random_lane_chunks(rng, seqs, lengths, slice_prob, max_slices)))
        recompute.append(
            [[rng.randint(0, pipeline.layers_of(p)) for _ in lanes[-1][2]] for p in range(pipeline.num_stages)]
        )
    depth = rng.randint(0, 2)  # drawn last: the layouts drawn before it are those of earlier seeds
    return make_pipeline_plan(batch, cluster, model, pipeline, lanes, recompute=recompute, warmup_groups=depth)


def plugin_app(register: Callable[[typer.Typer], None]) -> typer.Typer:
    """A CLI app holding one `helix.commands` plugin, as `planner_service.cli` loads it."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Keep the plugin a subcommand (a one-command typer app would swallow its name)."""

    register(app)
    return app
