"""Shared builders for executor tests: tiny specs, random batches, and random valid single-stage plans.

Plans are built by hand (not by the planner) so the executor is tested on layouts no solver would pick:
random power-of-two lane layouts, random packing of sequences into chunks, random op orders.
"""

from __future__ import annotations

import random

from proto.batch import Batch
from proto.cluster import ClusterSpec
from proto.fingerprint import fingerprint
from proto.model import ModelSpec
from proto.plan import Chunk, Lane, Op, PipelineSpec, Plan, Predicted, Segment
from proto.validation import sp_degree_problem, validate_plan


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
    return ModelSpec(**fields)  # type: ignore[arg-type]


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
