"""Pipeline simulator: hand-checked timelines and hypothesis properties on random valid plans.

Guards against: an iteration time below the compute lower bound, recompute that raises memory, a simulator
that disagrees with the closed form on a plan without pipelining, overlapping ops on one device, and lost
cross-stage dependencies.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from dataclasses import replace

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from planner_service.cost_model import CostModel
from planner_service.simulator import SimulationError, SimulationResult, TimelineEvent, simulate
from planner_service.simulator.weight_grad_placement import place_weight_grads, without_weight_grad_ops
from proto import (
    Batch,
    Chunk,
    CostProfile,
    Lane,
    ModelSpec,
    Op,
    PipelineSpec,
    Plan,
    PlanOptions,
    Segment,
    validate_plan,
)
from tests.cost_model.hand_specs import hand_cluster, hand_plan, ops

MODEL = ModelSpec(
    name="t", num_layers=4, hidden_size=64, num_heads=8, num_kv_heads=2, ffn_hidden_size=128, vocab_size=256
)
COMPUTE_STREAM = {"F", "B", "W", "R", "A2A"}
"""Event kinds that occupy the devices' compute stream; P2P sends and the gradient SYNC run beside it."""


# ---- random valid plans --------------------------------------------------------------------------------
def backward_order(chunks: list[Chunk]) -> list[int]:
    """Forward order with each sequence's slice chain reversed (B of later slices first)."""
    chain: dict[int, list[int]] = defaultdict(list)
    for c, chunk in enumerate(chunks):
        for seg in chunk.segments:
            chain[seg.seq_id].append(c)
    order = list(range(len(chunks)))
    for cs in chain.values():
        if len(cs) > 1:
            for pos, c in zip(cs, reversed(cs), strict=True):
                order[pos] = c
    return order


def one_f_one_b(chunks: list[Chunk], stage: int, num_stages: int) -> list[Op]:
    """Warm up with P-p-1 forwards, then alternate; run a forward first whenever the next backward's chunk
    has not been forwarded yet (long slice chains)."""
    b_order = backward_order(chunks)
    n = len(chunks)
    warmup = num_stages - stage - 1
    ops: list[Op] = []
    next_f = next_b = 0
    while next_b < n:
        b_ready = b_order[next_b] < next_f
        if next_f < n and (next_f - next_b <= warmup or not b_ready):
            ops.append(Op(kind="F", chunk=next_f))
            next_f += 1
        else:
            ops.append(Op(kind="B", chunk=b_order[next_b]))
            next_b += 1
    return ops


def all_f_then_all_b(chunks: list[Chunk], lifo: bool) -> list[Op]:
    n = len(chunks)
    b = list(range(n - 1, -1, -1)) if lifo else backward_order(chunks)
    return [Op(kind="F", chunk=c) for c in range(n)] + [Op(kind="B", chunk=c) for c in b]


def lane_blocks(rng: random.Random, size: int, max_sp: int) -> list[int]:
    """Random partition of `size` (a power of two) into aligned power-of-two blocks, each <= max_sp."""
    if size <= max_sp and (size == 1 or rng.random() < 0.5):
        return [size]
    return lane_blocks(rng, size // 2, max_sp) + lane_blocks(rng, size // 2, max_sp)


def lane_chunks(rng: random.Random, seqs: list[tuple[int, int]]) -> list[Chunk]:
    """Slices of long sequences (each its own chunk, the tail maybe packed with short ones), short ones packed."""
    chunks: list[list[Segment]] = []
    open_chunk: list[Segment] | None = None
    for seq_id, length in seqs:
        if length >= 4 and rng.random() < 0.4:
            cuts = sorted(rng.sample(range(1, length), k=min(rng.randint(1, 3), length - 1)))
            bounds = [0, *cuts, length]
            for lo, hi in itertools.pairwise(bounds):
                chunks.append([Segment(seq_id=seq_id, start=lo, end=hi)])
            open_chunk = chunks[-1] if rng.random() < 0.5 else None  # tail slice + short sequences
        elif open_chunk is not None and rng.random() < 0.6:
            open_chunk.append(Segment(seq_id=seq_id, start=0, end=length))
        else:
            chunks.append([Segment(seq_id=seq_id, start=0, end=length)])
            open_chunk = chunks[-1]
    return [Chunk(segments=segs) for segs in chunks]


def random_plan(seed: int, *, num_stages: int | None = None, single_lane: bool = False):
    """A plan that passes validate_plan (memory left unpredicted), with its cluster, batch and cost model."""
    rng = random.Random(seed)
    num_nodes, dpn = rng.choice([(1, 1), (1, 2), (1, 4), (2, 2), (2, 4)])
    cluster = hand_cluster(num_nodes, dpn)
    n = cluster.num_devices
    p_choices = [p for p in (1, 2) if n % p == 0]
    num_stages = num_stages if num_stages is not None else rng.choice(p_choices)
    model = MODEL.model_copy(update={"num_kv_heads": rng.choice([2, 8])})
    pipeline = PipelineSpec.even(model.num_layers, num_stages)
    batch = Batch.from_lengths([rng.randint(1, 300) for _ in range(rng.randint(1, 10))])
    block = n // num_stages
    sizes = [block] if single_lane else lane_blocks(rng, block, max_sp=model.num_heads)
    owner = [rng.randrange(len(sizes)) for _ in batch.lengths]
    lanes, offset = [], 0
    for lane_id, s in enumerate(sizes):
        seqs = [(i, length) for i, length in enumerate(batch.lengths) if owner[i] == lane_id]
        rng.shuffle(seqs)
        chunks = lane_chunks(rng, seqs)
        style = rng.choice(["1f1b", "fifo", "lifo"])
        if style == "1f1b":
            schedule = [one_f_one_b(chunks, p, num_stages) for p in range(num_stages)]
        else:
            schedule = [all_f_then_all_b(chunks, lifo=style == "lifo") for _ in range(num_stages)]
        recompute = [[rng.randint(0, pipeline.layers_of(p)) for _ in chunks] for p in range(num_stages)]
        ranks = [list(range(p * block + offset, p * block + offset + s)) for p in range(num_stages)]
        lanes.append(
            Lane(lane_id=lane_id, sp_degree=s, ranks=ranks, chunks=chunks, schedule=schedule, recompute=recompute)
        )
        offset += s
    plan = hand_plan(cluster, model, batch, pipeline, lanes)
    try:
        validate_plan(plan, batch, cluster, model)
    except ValueError:  # a 1F1B order that deadlocks across stages: fall back to all-F-then-all-B
        lanes = [
            lane.model_copy(update={"schedule": [all_f_then_all_b(lane.chunks, lifo=False)] * num_stages})
            for lane in lanes
        ]
        plan = hand_plan(cluster, model, batch, pipeline, lanes)
        validate_plan(plan, batch, cluster, model)
    return plan, batch, cluster, model, CostModel.from_specs(cluster, model)


def assert_no_overlap(events: tuple[TimelineEvent, ...]) -> None:
    rows: dict[tuple[int, int], list[TimelineEvent]] = defaultdict(list)
    for e in events:
        assert e.end_s >= e.start_s
        if e.kind in COMPUTE_STREAM:
            rows[(e.lane_id, e.stage)].append(e)
    for row in rows.values():
        row.sort(key=lambda e: (e.start_s, e.end_s))
        for a, b in itertools.pairwise(row):
            assert b.start_s >= a.end_s - 1e-12 * max(1.0, a.end_s), (a, b)


seeds = st.integers(min_value=0, max_value=2**32 - 1)


def compute_stream_work(plan: Plan, events: tuple[TimelineEvent, ...], kinds: set[str]) -> float:
    """Device-seconds of the given event kinds: each event occupies every rank of its lane's SP group."""
    sp = {lane.lane_id: lane.sp_degree for lane in plan.lanes}
    return sum((e.end_s - e.start_s) * sp[e.lane_id] for e in events if e.kind in kinds)


@given(seeds)
def test_random_plans_are_valid_and_never_beat_the_ideal(seed: int) -> None:
    """ideal_s is the batch's compute bound (DESIGN §6), checked through the timeline rather than against
    `CostModel.ideal_s`: with no per-call overhead, the F and B work the simulator schedules on all devices
    adds up to exactly ideal_s x N for any valid plan (a sequence's slices telescope, ((C+L)^2 - C^2) summed
    over them is L^2; SP divides work without adding any). Guards against an ideal of the wrong batch, a
    per-lane ideal, or chunks dropped or counted twice by the simulator."""
    plan, batch, cluster, model, cost = random_plan(seed)
    result = simulate(plan, batch, cost)
    pred = result.predicted
    assert pred.iteration_s >= pred.ideal_s * (1 - 1e-9)
    assert 0.0 <= pred.bubble_fraction <= 1.0
    assert len(pred.peak_memory_bytes) == cost.cluster.num_devices
    assert all(m > 0 for m in pred.peak_memory_bytes)
    assert len(pred.lane_s) == len(plan.lanes)
    assert max(pred.lane_s) <= pred.iteration_s
    assert_no_overlap(result.events)

    no_overhead = CostModel.from_specs(cluster, model, cost.profile.model_copy(update={"layer_overhead_s": 0.0}))
    bare = simulate(plan, batch, no_overhead)
    assert bare.predicted.ideal_s == pytest.approx(pred.ideal_s, rel=1e-12)  # the bound excludes overhead
    work = compute_stream_work(plan, bare.events, {"F", "B"})
    assert work == pytest.approx(pred.ideal_s * cluster.num_devices, rel=1e-9)


@given(seeds, seeds)
def test_more_recompute_never_raises_peak_memory(seed: int, extra_seed: int) -> None:
    plan, batch, _, _, cost = random_plan(seed)
    rng = random.Random(extra_seed)
    more = [
        lane.model_copy(
            update={
                "recompute": [
                    [rng.randint(r, plan.pipeline.layers_of(p)) for r in rec] for p, rec in enumerate(lane.recompute)
                ]
            }
        )
        for lane in plan.lanes
    ]
    base = simulate(plan, batch, cost, record_events=False).predicted
    heavier_result = simulate(plan.model_copy(update={"lanes": more}), batch, cost)
    heavier = heavier_result.predicted
    for before, after in zip(base.peak_memory_bytes, heavier.peak_memory_bytes, strict=True):
        assert after <= before * (1 + 1e-12)
    assert heavier.iteration_s >= base.iteration_s * (1 - 1e-12)
    # recompute_s is the recompute (R events) of the busiest (lane, stage), read back from the timeline
    busy: dict[tuple[int, int], float] = defaultdict(float)
    recompute: dict[tuple[int, int], float] = defaultdict(float)
    for e in heavier_result.events:
        if e.kind in COMPUTE_STREAM:
            busy[(e.lane_id, e.stage)] += e.end_s - e.start_s
        if e.kind == "R":
            recompute[(e.lane_id, e.stage)] += e.end_s - e.start_s
    top = max(busy.values(), default=0.0)
    busiest = [key for key, b in busy.items() if b >= top * (1 - 1e-12)]
    assert any(heavier.recompute_s == pytest.approx(recompute[key], rel=1e-9, abs=1e-15) for key in busiest)


@given(seeds)
def test_single_stage_single_lane_matches_closed_form(seed: int) -> None:
    """No pipelining: the lane runs its ops back to back. The ZeRO-0 all-reduce is issued in buckets during the
    final backward op; these tiny models' gradients fit one 25 MiB bucket, which is final only when that op ends,
    so the whole sync follows it (bucketed overlap and link sharing are pinned in test_grad_sync_overlap.py)."""
    plan, batch, cluster, _, cost = random_plan(seed, num_stages=1, single_lane=True)
    lane = plan.lanes[0]
    spans = cluster.spans_nodes(lane.ranks[0])
    layers = plan.pipeline.layers_of(0)
    total = 0.0
    for op in lane.schedule[0]:
        chunk = lane.chunks[op.chunk]
        kw = {"sp_degree": lane.sp_degree, "num_layers": layers, "spans_nodes": spans, "is_last_stage": True}
        if op.kind == "F":
            total += cost.stage_forward_s(chunk, **kw).total_s
        else:
            total += cost.stage_backward_s(chunk, recompute_layers=lane.recompute[0][op.chunk], **kw).total_s
    sync = cost.grad_sync_s(0, plan.pipeline)
    (call,) = cost.collective_calls(0, plan.pipeline) or (None,)
    assert call is None or call.count == 1
    result = simulate(plan, batch, cost)
    expected = total + sync
    assert result.predicted.iteration_s == pytest.approx(expected, rel=1e-12)
    assert result.predicted.lane_s == [pytest.approx(total, rel=1e-12)]
    assert result.predicted.grad_sync_s == pytest.approx(sync)
    assert result.predicted.bubble_fraction == pytest.approx(0.0, abs=1e-9)
    assert_no_overlap(result.events)


# ---- hand-checked two-stage timeline -------------------------------------------------------------------
FLAT = CostProfile(
    name="flat",
    attn_s_per_token2=0.0,
    linear_s_per_token=1e-3,
    linear_backward_to_forward=2.0,
    attention_backward_to_forward=2.0,
    alltoall_bw_intra=1e9,
    alltoall_bw_inter=1e9,
    p2p_bw_intra=1e12,
    p2p_bw_inter=1e12,
    p2p_latency_s=0.5,
    allreduce_bw_intra=1e9,
    allreduce_bw_inter=1e9,
    activation_bytes_per_token_layer=100.0,
    checkpoint_bytes_per_token_layer=10.0,
    kv_bytes_per_token_layer=8.0,
    memory_reserve_bytes=0.0,
)


def two_chunks() -> tuple[Batch, list[Chunk]]:
    """Two sequences of 1000 tokens, one chunk each (the hand-checked two-stage timelines)."""
    batch = Batch.from_lengths([1000, 1000])
    return batch, [Chunk(segments=[Segment(seq_id=i, start=0, end=1000)]) for i in range(2)]


def two_stage(schedule0: list[Op], schedule1: list[Op], chunks: list[Chunk], batch: Batch, recompute=None):
    cluster = hand_cluster(1, 2)
    model = MODEL
    pipeline = PipelineSpec.even(4, 2)
    rec = recompute or [[0] * len(chunks), [0] * len(chunks)]
    lane = Lane(lane_id=0, sp_degree=1, ranks=[[0], [1]], chunks=chunks, schedule=[schedule0, schedule1], recompute=rec)
    plan = hand_plan(cluster, model, batch, pipeline, [lane])
    return plan, CostModel.from_specs(cluster, model, FLAT)


def assert_compute_timeline(
    events: tuple[TimelineEvent, ...], expected: dict[tuple[int, str, int], tuple[float, float]]
) -> None:
    """The F and B bars are exactly `expected`: (stage, kind, chunk) -> (start, end)."""
    timeline = {(e.stage, e.kind, e.chunk): (e.start_s, e.end_s) for e in events if e.kind in {"F", "B"}}
    assert timeline.keys() == expected.keys()
    for key, (lo, hi) in expected.items():
        assert timeline[key] == (pytest.approx(lo), pytest.approx(hi)), key


def test_two_stage_1f1b_timeline_by_hand() -> None:
    """Two chunks of 1000 tokens, 2 layers per stage, 1 ms/token/layer: F = 2 s, B = 4 s, p2p = 0.5 s (latency).

    stage 0: F0 [0,2] F1 [2,4]                                 B0 [9,13]          B1 [15,19]
    stage 1:          F0 [2.5,4.5] B0 [4.5,8.5] F1 [8.5,10.5] B1 [10.5,14.5]
    F1 reaches stage 1 at 4.5 but waits for B0 there (1F1B order); B0 on stage 0 waits for B0 on stage 1 (8.5)
    + 0.5 s; B1 on stage 0 for 14.5 + 0.5. Sends run beside compute and are not busy time.
    """
    batch, chunks = two_chunks()
    plan, cost = two_stage(ops("F0 F1 B0 B1"), ops("F0 B0 F1 B1"), chunks, batch)
    result = simulate(plan, batch, cost)
    expected = {
        (0, "F", 0): (0, 2),
        (0, "F", 1): (2, 4),
        (1, "F", 0): (2.5, 4.5),
        (1, "B", 0): (4.5, 8.5),
        (1, "F", 1): (8.5, 10.5),
        (1, "B", 1): (10.5, 14.5),
        (0, "B", 0): (9, 13),
        (0, "B", 1): (15, 19),
    }
    assert_compute_timeline(result.events, expected)
    pred = result.predicted
    sync0 = cost.grad_sync_s(0, plan.pipeline)
    assert sync0 == 0.0  # one device per stage: nothing to sync
    assert pred.iteration_s == pytest.approx(19)
    assert pred.lane_s == [pytest.approx(19)]
    # busy 12 s on each of 2 ranks over 19 s
    assert pred.bubble_fraction == pytest.approx(1 - 24 / 38)
    assert pred.compute_s == pytest.approx(12)
    assert pred.comm_s == pytest.approx(2 * 0.5)  # the busiest rank sends 2 messages; no all-to-all at s=1
    p2p = [e for e in result.events if e.kind == "P2P"]
    assert len(p2p) == 4


def test_op_overhead_lengthens_every_op_of_the_timeline_by_hand() -> None:
    """The same two chunks with a 1 s fixed overhead per op (`CostProfile.op_overhead_s`): F = 3 s, B = 5 s.

    stage 0: F0 [0,3] F1 [3,6]                                  B0 [12,17]         B1 [20,25]
    stage 1:          F0 [3.5,6.5] B0 [6.5,11.5] F1 [11.5,14.5] B1 [14.5,19.5]
    """
    batch, chunks = two_chunks()
    plan, cost = two_stage(ops("F0 F1 B0 B1"), ops("F0 B0 F1 B1"), chunks, batch)
    cost = replace(cost, profile=FLAT.model_copy(update={"op_overhead_s": 1.0}))
    result = simulate(plan, batch, cost)
    expected = {
        (0, "F", 0): (0, 3),
        (0, "F", 1): (3, 6),
        (1, "F", 0): (3.5, 6.5),
        (1, "B", 0): (6.5, 11.5),
        (1, "F", 1): (11.5, 14.5),
        (1, "B", 1): (14.5, 19.5),
        (0, "B", 0): (12, 17),
        (0, "B", 1): (20, 25),
    }
    assert_compute_timeline(result.events, expected)
    assert result.predicted.iteration_s == pytest.approx(25)


def test_deferred_weight_grads_timeline_by_hand() -> None:
    """The two-chunk timeline with `defer_weight_grads` and each W op of stage 1 right after its B: the B op sends
    its input gradient before the weight gradients, W = `weight_grad_share` (0.5) x the GEMM backward = 1 s per
    layer, 2 s per op.

    stage 0: F0 [0,2] F1 [2,4]                                          B0 [7,11]   B1 [13,17]
    stage 1:          F0 [2.5,4.5] B0 [4.5,6.5] W0 [6.5,8.5] F1 [8.5,10.5] B1 [10.5,12.5] W1 [12.5,14.5]
    B0 reaches stage 0 at 6.5 + 0.5 and B1 at 12.5 + 0.5: the step ends 2 s (stage 1's W) earlier than
    without deferral (19 s). Memory: back-propagating a layer frees its 100 bytes per token of activations and
    queues its W operands, 30 bytes per token of output gradients here: stage 1's peak is the plain one. With
    operands of 130 bytes per token its B ops rise by 30 per token and kept layer (`deferring_backward_bytes`).
    """
    batch, chunks = two_chunks()
    plan, cost = two_stage(ops("F0 F1 B0 B1"), ops("F0 B0 W0 F1 B1 W1"), chunks, batch)
    heavy = replace(cost, profile=FLAT.model_copy(update={"deferred_grad_bytes_per_token_layer": 130.0}))
    cost = replace(cost, profile=FLAT.model_copy(update={"deferred_grad_bytes_per_token_layer": 30.0}))
    plain = simulate(plan.model_copy(update={"lanes": [without_weight_grad_ops(plan.lanes[0])]}), batch, cost).predicted
    result = simulate(plan.model_copy(update={"defer_weight_grads": True}), batch, cost)
    expected = {
        (0, "F", 0): (0, 2),
        (0, "F", 1): (2, 4),
        (1, "F", 0): (2.5, 4.5),
        (1, "B", 0): (4.5, 6.5),
        (1, "F", 1): (8.5, 10.5),
        (1, "B", 1): (10.5, 12.5),
        (0, "B", 0): (7, 11),
        (0, "B", 1): (13, 17),
    }
    assert_compute_timeline(result.events, expected)
    deferred = sorted((e.stage, e.chunk, e.start_s, e.end_s) for e in result.events if e.kind == "W")
    approx = pytest.approx
    assert deferred == [(1, 0, approx(6.5), approx(8.5)), (1, 1, approx(12.5), approx(14.5))]
    sends = sorted(e.start_s for e in result.events if e.kind == "P2P" and e.stage == 1)
    assert sends == [pytest.approx(6.5), pytest.approx(12.5)]
    pred = result.predicted
    assert plain.iteration_s == pytest.approx(19)
    assert pred.iteration_s == pytest.approx(17)
    assert pred.compute_s == pytest.approx(plain.compute_s)  # the same work, sent earlier
    assert pred.peak_memory_bytes[0] == pytest.approx(plain.peak_memory_bytes[0])  # stage 0 never defers
    assert pred.peak_memory_bytes[1] == pytest.approx(plain.peak_memory_bytes[1])
    heavy_peaks = simulate(plan.model_copy(update={"defer_weight_grads": True}), batch, heavy).predicted
    assert heavy_peaks.peak_memory_bytes[1] == pytest.approx(plain.peak_memory_bytes[1] + 1000 * 2 * 30.0)


def test_w_ops_timeline_and_memory_by_hand() -> None:
    """The two-chunk timeline with stage 1 running its weight gradients as W ops at its end (F0 B0 F1 B1 W0 W1):
    its B ops take only B - W = 2 s, so both gradients reach stage 0 sooner than with them after each send.

    stage 0: F0 [0,2] F1 [2,4]                              B0 [7,11]          B1 [11,15]
    stage 1:          F0 [2.5,4.5] B0 [4.5,6.5] F1 [6.5,8.5] B1 [8.5,10.5] W0 [10.5,12.5] W1 [12.5,14.5]
    The step ends at 15 s (17 with W after each send, 19 without deferral). Stage 1 keeps each chunk's W operands
    (1000 tokens x 2 layers x (30 + 20) B) from its B to its W: its activation peak is during B1, chunk 1 held
    (2e5 B) + B0's operands (1e5) + the working memory (1e5); B1's own operands (50 B per token and layer) replace
    the activations (100) its layers free, so they add nothing at its peak.
    """
    batch, chunks = two_chunks()
    plan, cost = two_stage(ops("F0 F1 B0 B1"), ops("F0 B0 F1 B1 W0 W1"), chunks, batch)
    memory = {"deferred_grad_bytes_per_token_layer": 30.0, "deferred_input_bytes_per_token_layer": 20.0}
    cost = replace(cost, profile=FLAT.model_copy(update=memory))
    plain = simulate(plan.model_copy(update={"lanes": [without_weight_grad_ops(plan.lanes[0])]}), batch, cost).predicted
    result = simulate(plan.model_copy(update={"defer_weight_grads": True}), batch, cost)
    expected = {
        (0, "F", 0): (0, 2),
        (0, "F", 1): (2, 4),
        (1, "F", 0): (2.5, 4.5),
        (1, "B", 0): (4.5, 6.5),
        (1, "F", 1): (6.5, 8.5),
        (1, "B", 1): (8.5, 10.5),
        (0, "B", 0): (7, 11),
        (0, "B", 1): (11, 15),
    }
    assert_compute_timeline(result.events, expected)
    w_bars = sorted((e.chunk, e.start_s, e.end_s) for e in result.events if e.kind == "W")
    assert w_bars == [(0, pytest.approx(10.5), pytest.approx(12.5)), (1, pytest.approx(12.5), pytest.approx(14.5))]
    pred = result.predicted
    assert pred.iteration_s == pytest.approx(15)
    states1 = cost.model_state_bytes(1, plan.pipeline, 1)
    assert plain.peak_memory_bytes[1] == pytest.approx(states1 + 2e5 + 1e5)
    assert pred.peak_memory_bytes[1] == pytest.approx(states1 + 2e5 + 1e5 + 1e5)
    assert pred.peak_memory_bytes[0] == pytest.approx(plain.peak_memory_bytes[0])


@given(seeds)
def test_deferring_weight_grads_never_delays_an_op(seed: int) -> None:
    """On random valid plans with a pipeline, W ops right after their B ops only move sends earlier: no chunk's
    work on a stage ends later, the F + B + W work equals the F + B work without them, the devices never
    overlap two ops, and no device holds less memory."""
    assume(random_plan(seed)[2].num_devices % 2 == 0)
    plan, batch, _, _, cost = random_plan(seed, num_stages=2)
    plain = simulate(plan, batch, cost)
    flagged = plan.model_copy(update={"defer_weight_grads": True})
    deferred = simulate(place_weight_grads(flagged, batch, cost, queue=False), batch, cost)
    assert_no_overlap(deferred.events)

    def ends(result: SimulationResult) -> dict[tuple[int, int, int], float]:
        out: dict[tuple[int, int, int], float] = {}
        for e in result.events:
            if e.kind in COMPUTE_STREAM and e.chunk >= 0:
                key = (e.lane_id, e.stage, e.chunk)
                out[key] = max(out.get(key, 0.0), e.end_s)  # B's end is its last bar (A2A or W)
        return out

    before, after = ends(plain), ends(deferred)
    assert before.keys() == after.keys()
    for key, end in after.items():
        assert end <= before[key] * (1 + 1e-12) + 1e-15, key
    for a, b in zip(deferred.predicted.lane_s, plain.predicted.lane_s, strict=True):
        assert a <= b * (1 + 1e-12) + 1e-15
    work = compute_stream_work(plan, deferred.events, {"F", "B", "W"})
    assert work == pytest.approx(compute_stream_work(plan, plain.events, {"F", "B"}), rel=1e-9)
    peaks = zip(deferred.predicted.peak_memory_bytes, plain.predicted.peak_memory_bytes, strict=True)
    for a, b in peaks:
        assert a >= b * (1 - 1e-12)


def test_memory_counts_in_flight_chunks_and_recompute() -> None:
    """Stage 0 holds both chunks' activations before B0 (F0 F1 B0 B1); recomputing all layers keeps inputs only."""
    batch, chunks = two_chunks()
    plan, cost = two_stage(ops("F0 F1 B0 B1"), ops("F0 B0 F1 B1"), chunks, batch)
    pred = simulate(plan, batch, cost).predicted
    states0 = cost.model_state_bytes(0, plan.pipeline, 1)
    states1 = cost.model_state_bytes(1, plan.pipeline, 1)
    # stage 0: 2 chunks x 1000 tokens x 2 layers x 100 B + transient 1000 x 100 B
    assert pred.peak_memory_bytes[0] == pytest.approx(states0 + 2 * 1000 * 200 + 1000 * 100)
    # stage 1 (last, head activations 0 in FLAT): one chunk in flight
    assert pred.peak_memory_bytes[1] == pytest.approx(states1 + 1000 * 200 + 1000 * 100)
    plan_r, _ = two_stage(ops("F0 F1 B0 B1"), ops("F0 B0 F1 B1"), chunks, batch, recompute=[[2, 2], [2, 2]])
    pred_r = simulate(plan_r, batch, cost).predicted
    assert pred_r.peak_memory_bytes[0] == pytest.approx(states0 + 2 * 1000 * 20 + 1000 * 100)
    assert pred_r.recompute_s == pytest.approx(2 * 2.0)  # each B recomputes 2 layers x 1 s


def test_slices_keep_kv_of_recomputed_layers_and_dkv_accumulators() -> None:
    """One sequence in two slices on a single stage: the first slice keeps K/V of its recomputed layers until
    its backward, and dK/dV accumulators appear when the later slice's backward starts."""
    cluster = hand_cluster(1, 1)
    batch = Batch.from_lengths([200])
    chunks = [
        Chunk(segments=[Segment(seq_id=0, start=0, end=100)]),
        Chunk(segments=[Segment(seq_id=0, start=100, end=200)]),
    ]
    lane = Lane(lane_id=0, sp_degree=1, ranks=[[0]], chunks=chunks, schedule=[ops("F0 F1 B1 B0")], recompute=[[4, 4]])
    plan = hand_plan(cluster, MODEL, batch, PipelineSpec.even(4, 1), [lane])
    validate_plan(plan, batch, cluster, MODEL)
    cost = CostModel.from_specs(cluster, MODEL, FLAT)
    pred = simulate(plan, batch, cost).predicted
    states = cost.model_state_bytes(0, plan.pipeline, 1)
    ckpt = 100 * 4 * 10  # per chunk, all 4 layers recomputed
    kv_hold = 100 * 8 * 4  # slice 0's K/V in its 4 recomputed layers (num_kv_heads 2 >= s 1)
    kv_grad = 100 * 8 * 4  # dK/dV accumulators of slice 0, allocated at B1
    # one layer's working memory, plus (slice 1 attends to slice 0) that layer's concatenated [prefix; own] K/V of
    # 100 + 100 rows and its gradient, live in the layer's backward: 2 x 200 x 8 B
    transient = 100 * 100 + 2 * 200 * 8
    # peak at B1: both checkpoints + slice 0's K/V + its dK/dV accumulators + transient
    assert pred.peak_memory_bytes[0] == pytest.approx(states + 2 * ckpt + kv_hold + kv_grad + transient)


def test_lane_without_chunks_and_deadlock() -> None:
    cluster = hand_cluster(1, 2)
    batch = Batch.from_lengths([50])
    pipeline = PipelineSpec.even(4, 1)
    busy = Lane(
        lane_id=0,
        sp_degree=1,
        ranks=[[0]],
        chunks=[Chunk(segments=[Segment(seq_id=0, start=0, end=50)])],
        schedule=[ops("F0 B0")],
        recompute=[[0]],
    )
    idle = Lane(lane_id=1, sp_degree=1, ranks=[[1]], chunks=[], schedule=[[]], recompute=[[]])
    plan = hand_plan(cluster, MODEL, batch, pipeline, [busy, idle])
    validate_plan(plan, batch, cluster, MODEL)
    cost = CostModel.from_specs(cluster, MODEL, FLAT)
    pred = simulate(plan, batch, cost).predicted
    assert pred.lane_s[1] == 0.0
    assert pred.bubble_fraction == pytest.approx(0.5)
    assert pred.peak_memory_bytes[1] == pytest.approx(cost.model_state_bytes(0, pipeline, 2))

    two = [Chunk(segments=[Segment(seq_id=0, start=0, end=25)]), Chunk(segments=[Segment(seq_id=0, start=25, end=50)])]
    stuck = Lane(
        lane_id=0,
        sp_degree=1,
        ranks=[[0], [1]],
        chunks=two,
        schedule=[ops("F0 B1 F1 B0"), ops("F1 F0 B1 B0")],
        recompute=[[0, 0], [0, 0]],
    )
    bad = hand_plan(cluster, MODEL, batch, PipelineSpec.even(4, 2), [stuck])
    with pytest.raises(SimulationError, match="deadlocks"):
        simulate(bad, batch, cost)


def test_inter_node_lane_pays_for_its_alltoalls() -> None:
    """The same sequence on an SP-4 lane inside one node is faster than on an SP-4 lane across two nodes."""
    batch = Batch.from_lengths([4000])
    chunk = Chunk(segments=[Segment(seq_id=0, start=0, end=4000)])
    times = []
    for nodes, dpn in ((1, 4), (2, 2)):
        cluster = hand_cluster(nodes, dpn)
        lane = Lane(
            lane_id=0, sp_degree=4, ranks=[[0, 1, 2, 3]], chunks=[chunk], schedule=[ops("F0 B0")], recompute=[[0]]
        )
        plan = hand_plan(cluster, MODEL.model_copy(update={"num_kv_heads": 8}), batch, PipelineSpec.even(4, 1), [lane])
        cost = CostModel.from_specs(cluster, MODEL.model_copy(update={"num_kv_heads": 8}))
        times.append(simulate(plan, batch, cost).predicted.comm_s)
    assert times[1] > 5 * times[0]


def test_plan_options_zero_stage_shrinks_model_states() -> None:
    """The plan's ZeRO stage is what runs: it overrides the cost model's options."""
    seed = next(i for i in range(100) if random_plan(i, num_stages=1, single_lane=True)[2].num_devices > 1)
    plan, batch, cluster, model, cost = random_plan(seed, num_stages=1, single_lane=True)
    base = simulate(plan, batch, cost, record_events=False).predicted
    zero = simulate(plan.model_copy(update={"options": PlanOptions(zero_stage=2)}), batch, cost).predicted
    d = cluster.num_devices
    n = model.total_params
    saved = 14 * n - 14 * n / d  # grads (2 B) and optimizer (12 B) sharded over the d devices of the stage
    for before, after in zip(base.peak_memory_bytes, zero.peak_memory_bytes, strict=True):
        assert before - after == pytest.approx(saved)


def test_plan_for_a_bigger_cluster_is_refused() -> None:
    seed = next(i for i in range(100) if random_plan(i)[2].num_devices > 2)
    plan, batch, _, model, _ = random_plan(seed)
    tiny = CostModel.from_specs(hand_cluster(1, 1), model.model_copy(update={"num_layers": 4}))
    with pytest.raises(SimulationError, match="devices"):
        simulate(plan, batch, tiny)
