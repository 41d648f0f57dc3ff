"""The no-recompute shortcut of the dynamic strategies must stay an upper bound of the memory walk.

Guards against: a bound priced from token counts alone, which misses the concatenated prefix K/V that fused
attention saves for slices (and its working copies), so a lane was given no recompute, then failed to fit.
"""

from __future__ import annotations

from planner_service.cost_model import CostModel
from planner_service.layout.recompute import no_recompute_bound
from planner_service.presets import CLUSTERS, MODELS
from planner_service.schedules import build_schedule
from planner_service.simulator.memory_timeline import stage_memory
from proto import Chunk, Lane, PipelineSpec, Segment


def test_bound_covers_the_prefix_kv_of_slices() -> None:
    """One 64K-token sequence of llama2-7b in 8 slices of 8K on a 4-rank lane, P = 2."""
    cost = CostModel.from_specs(CLUSTERS["a800-80g-4x8"], MODELS["llama2-7b"])
    pipeline = PipelineSpec.even(32, 2)
    chunks = [Chunk(segments=[Segment(seq_id=0, start=a, end=a + 8192)]) for a in range(0, 65_536, 8192)]
    lane = Lane(
        lane_id=0,
        sp_degree=4,
        ranks=[[0, 1, 2, 3], [16, 17, 18, 19]],
        chunks=chunks,
        schedule=build_schedule(chunks, 2),
        recompute=[[0] * 8, [0] * 8],
    )
    tokens = [c.num_tokens for c in chunks]
    for stage in (0, 1):
        walk = stage_memory(lane, pipeline, stage, cost, {0: 65_536}, tokens).peak([0] * 8)
        token_only = sum(
            cost.chunk_activation_bytes(n, sp_degree=4, num_layers=16, is_last_stage=stage == 1)
            + cost.kv_bytes(n, 4, 16)
            for n in tokens
        ) + cost.transient_bytes(8192, sp_degree=4, is_last_stage=stage == 1)
        assert token_only < walk  # what the bound was: no longer a bound
        assert walk <= no_recompute_bound(cost, pipeline, stage, 4, chunks)
