"""Small hand-made plans for proto tests (kept next to them so each test reads on its own)."""

from __future__ import annotations

from proto import Batch, Chunk, ClusterSpec, Lane, ModelSpec, Op, PipelineSpec, Plan, Predicted, Segment
from proto.fingerprint import fingerprint

CLUSTER = ClusterSpec(
    name="t-1x4",
    num_nodes=1,
    devices_per_node=4,
    device_memory_bytes=2**30,
    peak_flops=1e12,
    intra_node_bandwidth=1e10,
    inter_node_bandwidth=1e9,
)
MODEL = ModelSpec(
    name="t", num_layers=4, hidden_size=64, num_heads=8, num_kv_heads=2, ffn_hidden_size=128, vocab_size=256
)
BATCH = Batch.from_lengths([100, 30, 20])


def one_f_one_b(num_chunks: int, num_stages: int, stage: int) -> list[Op]:
    warmup = min(num_stages - stage - 1, num_chunks)
    ops = [Op(kind="F", chunk=c) for c in range(warmup)]
    for c in range(warmup, num_chunks):
        ops += [Op(kind="F", chunk=c), Op(kind="B", chunk=c - warmup)]
    ops += [Op(kind="B", chunk=c) for c in range(num_chunks - warmup, num_chunks)]
    return ops


def two_stage_plan() -> Plan:
    """P=2 over 4 ranks: lane 0 (s=1, ranks 0 and 2) holds sequence 0 in two slices; lane 1 the rest."""
    lane0_chunks = [
        Chunk(segments=[Segment(seq_id=0, start=0, end=60)]),
        Chunk(segments=[Segment(seq_id=0, start=60, end=100)]),
    ]
    lane1_chunks = [Chunk(segments=[Segment(seq_id=1, start=0, end=30), Segment(seq_id=2, start=0, end=20)])]
    lanes = [
        Lane(
            lane_id=0,
            sp_degree=1,
            ranks=[[0], [2]],
            chunks=lane0_chunks,
            # a sliced sequence: every slice forward first, backward last slice first
            schedule=[[Op(kind="F", chunk=0), Op(kind="F", chunk=1), Op(kind="B", chunk=1), Op(kind="B", chunk=0)]] * 2,
            recompute=[[0, 2], [1, 0]],
        ),
        Lane(
            lane_id=1,
            sp_degree=1,
            ranks=[[1], [3]],
            chunks=lane1_chunks,
            schedule=[one_f_one_b(1, 2, 0), one_f_one_b(1, 2, 1)],
            recompute=[[0], [0]],
        ),
    ]
    return Plan(
        strategy="hand",
        cluster_fingerprint=fingerprint(CLUSTER),
        model_fingerprint=fingerprint(MODEL),
        batch_fingerprint=BATCH.fingerprint,
        pipeline=PipelineSpec.even(MODEL.num_layers, 2),
        lanes=lanes,
        predicted=Predicted(iteration_s=1.0, ideal_s=0.5, peak_memory_bytes=[1e6] * 4),
    ).with_id()
