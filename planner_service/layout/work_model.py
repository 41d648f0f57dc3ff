"""The work model: per-stage forward+backward seconds of a whole sequence on a lane of SP degree s.

Strategies rank layouts by it before building anything (building and simulating a plan is far costlier),
and the lane ILP and longest-processing-time dealing balance lanes with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner_service.cost_model import ChunkShape, CostModel
from proto import PipelineSpec


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
    """Fit the quadratic exactly from three evaluations of the cost model (its terms are quadratic in L)."""
    layers = max(pipeline.layers_of(p) for p in range(pipeline.num_stages))
    spans = sp_degree > cost.cluster.devices_per_node
    xs = [1024.0 * sp_degree, 2048.0 * sp_degree, 4096.0 * sp_degree]
    ys = [
        cost.chunk_cost_s(
            ChunkShape.from_segments([(0, int(x))]), sp_degree=sp_degree, num_layers=layers, spans_nodes=spans
        )
        for x in xs
    ]
    a, b, c = np.polyfit(xs, ys, 2)
    return WorkModel(sp_degree, float(a), float(b), float(c))


def pipelined_estimate_s(per_stage_s: float, num_stages: int, chunks_per_stage: int) -> float:
    """Per-stage work stretched by the 1F1B fill and drain: (P - 1) of the m = chunks_per_stage * P chunks."""
    return per_stage_s * (1 + (num_stages - 1) / (chunks_per_stage * num_stages))
