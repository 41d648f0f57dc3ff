"""Token-level pipelining inside one process (no process group): a stage running a lane's schedule with
sliced sequences, K/V cache leaves and recompute gives the whole-sequence gradients, and its measured
activation memory follows what the schedule holds."""

from __future__ import annotations

import pytest
import torch

from executor.model import build_stage, named_gradients
from executor.parallel.pipeline.runtime import StageRunSettings, StageRuntime
from executor.parallel.pipeline.shards import total_targets
from executor.role import RankRole
from executor.verify.reference import reference_step
from executor.verify.synthetic_tokens import SyntheticTokens
from planner_service.schedules import build_schedule
from proto.batch import Batch
from proto.plan import Chunk, Lane, Segment
from tests.executor.executor_fixtures import tiny_model

pytestmark = pytest.mark.timeout(120)

SEED, TOKEN_SEED = 3, 11


def _lane(chunks: list[list[tuple[int, int, int]]], recompute: list[int]) -> Lane:
    built = [Chunk(segments=[Segment(seq_id=q, start=a, end=b) for q, a, b in spec]) for spec in chunks]
    return Lane(
        lane_id=0, sp_degree=1, ranks=[[0]], chunks=built, schedule=build_schedule(built, 1), recompute=[recompute]
    )


def _run_lane(batch: Batch, lane: Lane, num_layers: int = 3) -> tuple[float, dict[str, torch.Tensor], int]:
    model = tiny_model(num_layers=num_layers)
    module = build_stage(model, seed=SEED, dtype=torch.float64)
    runtime = StageRuntime(
        module=module,
        lane=lane,
        role=RankRole(rank=0, lane_id=0, lane_index=0, stage=0, num_stages=1, sp_rank=0, sp_ranks=(0,)),
        sp_group=None,
        lengths=batch.length_of(),
        tokens=SyntheticTokens(TOKEN_SEED, model.vocab_size),
        loss_norm=total_targets(batch.length_of()),
        settings=StageRunSettings(dtype=torch.float64, device="cpu", attention_backend="sdpa", recv_timeout_s=5),
    )
    result = runtime.run()
    return result.local_loss, dict(named_gradients(module)), result.peak_activation_bytes


@pytest.mark.parametrize("recompute", [[0, 0, 0, 0], [3, 3, 3, 3], [1, 3, 0, 2]], ids=["none", "all", "mixed"])
def test_sliced_sequence_matches_whole_sequence(recompute: list[int]) -> None:
    """Sequence 1 in 3 uneven slices across chunks (the last one a hybrid chunk with a short sequence),
    backward last-first: loss and every gradient equal the whole-sequence reference."""
    batch = Batch(seq_ids=[1, 2, 3], lengths=[70, 5, 9])
    lane = _lane([[(3, 0, 9)], [(1, 0, 31)], [(1, 31, 40)], [(1, 40, 70), (2, 0, 5)]], recompute)
    loss, grads, _ = _run_lane(batch, lane)
    ref = reference_step(tiny_model(num_layers=3), batch, seed=SEED, token_seed=TOKEN_SEED)
    assert abs(loss - ref.loss) <= 1e-12 * abs(ref.loss)
    for name, g in ref.grads.items():
        assert torch.allclose(grads[name], g, rtol=0, atol=1e-12 * float(g.abs().max())), name


def test_measured_memory_grows_with_held_slices() -> None:
    """The probe sees the K/V leaves of earlier slices: slicing with full recompute holds more than the
    checkpoints alone (the leaves), and recompute holds less than no recompute."""
    batch = Batch(seq_ids=[1], lengths=[64])
    whole = _run_lane(batch, _lane([[(1, 0, 64)]], [0]))[2]
    chunks = [[(1, 0, 32)], [(1, 32, 64)]]
    sliced = _run_lane(batch, _lane(chunks, [0, 0]))[2]
    recomputed = _run_lane(batch, _lane(chunks, [3, 3]))[2]
    assert recomputed < sliced
    assert abs(sliced - whole) <= 0.05 * whole  # same tokens held at once: both slices are in flight together
