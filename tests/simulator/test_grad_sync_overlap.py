"""Where the simulator puts data-parallel collectives (the executor contract of `cost_model.data_parallel`).

Guards against the review's findings: the gradient sync assumed hidden under the last backward although the same
links carry that backward's all-to-alls, and ZeRO-3's per-chunk parameter gathers and gradient reduce-scatters
not priced at all (nor the rounds a lane with fewer chunks still joins). Every number below is worked out by hand
from round coefficients (latencies 0); the Gantt events must show the collectives where the times put them.
"""

from __future__ import annotations

import pytest

from planner_service.cost_model import CostModel
from planner_service.simulator import simulate
from proto import (
    Batch,
    Chunk,
    ClusterSpec,
    CostProfile,
    Lane,
    ModelSpec,
    PipelineSpec,
    Plan,
    PlanOptions,
    Segment,
    ZeroStage,
)
from tests.cost_model.hand_specs import hand_cluster, hand_plan, hand_profile, ops

# MHA, 2 layers of 4 x 64^2 + 3 x 64 x 128 + 2 x 64 = 41,088 parameters, embedding 256 x 64 = 16,384, final norm
# 64 + LM head 16,384: 115,008 parameters; fp32 gradients 460,032 bytes, bf16 parameters 230,016 bytes.
MODEL = ModelSpec(
    name="t", num_layers=2, hidden_size=64, num_heads=8, num_kv_heads=8, ffn_hidden_size=128, vocab_size=256
)
PARAMS = 115_008


def cluster(devices: int) -> ClusterSpec:
    return hand_cluster(1, devices, intra_node_latency_s=0.0, inter_node_latency_s=0.0)


def profile(**overrides: float) -> CostProfile:
    """4 ms per token per layer of GEMMs (no attention term, no overhead), k_lin 2, no LM head time."""
    fields: dict[str, float] = {
        "linear_s_per_token": 4e-3,
        "linear_backward_to_forward": 2.0,
        "alltoall_bw_intra": 96_000.0,
        "alltoall_bw_inter": 96_000.0,
        "p2p_bw_intra": 1e12,
        "allreduce_bw_intra": 115_008.0,
        "allreduce_bw_inter": 115_008.0,
        "grad_bucket_bytes": float(PARAMS),  # 460,032 bytes of fp32 gradients: exactly 4 buckets
    }
    fields.update(overrides)
    return hand_profile(**fields)


def plan_of(devices: int, lanes: list[Lane], batch: Batch, zero: ZeroStage) -> Plan:
    return hand_plan(cluster(devices), MODEL, batch, PipelineSpec.even(2, 1), lanes, PlanOptions(zero_stage=zero))


def sp4_lane() -> tuple[Plan, Batch]:
    """One 1000-token sequence on one SP-4 lane over the whole 4-device stage block (so d = 4)."""
    batch = Batch.from_lengths([1000])
    lane = Lane(
        lane_id=0,
        sp_degree=4,
        ranks=[[0, 1, 2, 3]],
        chunks=[Chunk(segments=[Segment(seq_id=0, start=0, end=1000)])],
        schedule=[ops("F0 B0")],
        recompute=[[0]],
    )
    return plan_of(4, [lane], batch, ZeroStage.NONE), batch


def test_zero0_sync_shares_nvlink_with_the_last_backwards_alltoalls() -> None:
    """Per layer: GEMMs 1000 x 4 ms / 4 = 1 s forward, 2 s backward; all-to-alls 250 tokens x 4 x 64 widths x 2 B x
    3/4 sent = 96,000 B at 96,000 B/s = 1 s (NVLink). F0 = 2 x (1 + 1) = [0, 4], B0 = 2 x (2 + 1) = [4, 10].
    The all-reduce of 460,032 B over 4 devices: 2 phases x 3/4 x 460,032 / 115,008 = 6 s of NVLink, in 4 buckets;
    the first is final a quarter into B0, at 5.5. Alone it would end at max(5.5 + 6, 10 + 6/4) = 11.5; but B0's
    all-to-alls hold NVLink for 2 s, 3/4 of them after 5.5: 5.5 + 6 + 1.5 = 13."""
    plan, batch = sp4_lane()
    cost = CostModel.from_specs(cluster(4), MODEL, profile(allreduce_bw_intra=115_008.0))
    result = simulate(plan, batch, cost)
    assert result.predicted.iteration_s == pytest.approx(13.0)
    assert result.predicted.grad_sync_s == pytest.approx(6.0)
    bars = {(e.kind, e.chunk): (e.start_s, e.end_s) for e in result.events if e.kind in ("F", "B", "SYNC")}
    assert bars[("F", 0)] == (pytest.approx(0.0), pytest.approx(2.0))
    assert bars[("B", 0)] == (pytest.approx(4.0), pytest.approx(8.0))
    assert bars[("SYNC", -1)] == (pytest.approx(5.5), pytest.approx(13.0))


def test_zero1_reduce_scatter_then_exposed_parameter_all_gather() -> None:
    """ZeRO-1: the bucketed reduction is a reduce-scatter, one phase: 3/4 x 460,032 / 115,008 = 3 s, first bucket
    at 5.5: max(10 + 3/4, 5.5 + 3, 5.5 + 3 + 1.5) = 10.75. Then the bf16 parameters are all-gathered after the
    optimizer step: 3/4 x 230,016 / 115,008 = 1.5 s, exposed: the step ends at 12.25."""
    plan, batch = sp4_lane()
    plan = plan.model_copy(update={"options": PlanOptions(zero_stage=ZeroStage.OPTIMIZER)})
    cost = CostModel.from_specs(cluster(4), MODEL, profile())
    result = simulate(plan, batch, cost)
    assert result.predicted.iteration_s == pytest.approx(12.25)
    syncs = sorted((e.start_s, e.end_s) for e in result.events if e.kind == "SYNC")
    assert syncs == [(pytest.approx(5.5), pytest.approx(10.75)), (pytest.approx(10.75), pytest.approx(12.25))]


def test_zero3_per_chunk_gathers_and_the_idle_rounds_of_a_shorter_lane() -> None:
    """Two SP-1 lanes on 2 devices (d = 2); lane 0 runs two 1000-token chunks, lane 1 one. ZeRO-3 units: 2 layers
    + 1 (embedding, final norm, head) = 3. At 76,672 B/s, a chunk's forward all-gathers 1/2 x 230,016 B = 1.5 s
    (0.5 s per unit); its backward gathers again (1.5 s) and reduce-scatters 1/2 x 460,032 B = 3 s (1 s per unit).
    F: compute 2 x 4 s = 8 s, waits for the first unit's gather: 0.5 + 8 = 8.5 s. B: compute 16 s between the
    first unit's gather (0.5 s) and the last unit's reduce-scatter (1 s): 17.5 s. Lane 0: 2 x (8.5 + 17.5) = 52 s.
    Lane 1 ends its ops at 26 s and then joins lane 0's second round of collectives without compute, 1.5 + 4.5 s:
    a SYNC bar [26, 32]. The step ends at 52 s."""
    batch = Batch.from_lengths([1000, 1000, 1000])
    chunks = [Chunk(segments=[Segment(seq_id=i, start=0, end=1000)]) for i in range(3)]
    busy = Lane(
        lane_id=0, sp_degree=1, ranks=[[0]], chunks=chunks[:2], schedule=[ops("F0 B0 F1 B1")], recompute=[[0, 0]]
    )
    short = Lane(lane_id=1, sp_degree=1, ranks=[[1]], chunks=chunks[2:], schedule=[ops("F0 B0")], recompute=[[0]])
    plan = plan_of(2, [busy, short], batch, ZeroStage.PARAMETERS)
    cost = CostModel.from_specs(cluster(2), MODEL, profile(allreduce_bw_intra=76_672.0), plan.options)
    result = simulate(plan, batch, cost)
    assert result.predicted.iteration_s == pytest.approx(52.0)
    assert result.predicted.lane_s == [pytest.approx(52.0), pytest.approx(26.0)]
    lane1 = {(e.kind, e.chunk): (e.start_s, e.end_s) for e in result.events if e.lane_id == 1}
    assert lane1[("F", 0)] == (pytest.approx(0.5), pytest.approx(8.5))
    assert lane1[("SYNC", 0)] == (pytest.approx(8.5), pytest.approx(26.0))  # B0's gathers and reduce-scatters
    assert lane1[("SYNC", -1)] == (pytest.approx(26.0), pytest.approx(32.0))
    # every rank takes part in the busiest lane's 2 rounds: 2 x (3 + 3) all-gathers, 2 x 3 reduce-scatters
    (counts,) = cost.stage_collectives(plan.pipeline, max_chunks=2)
    assert (counts.all_gathers, counts.reduce_scatters, counts.all_reduces) == (12, 6, 0)
