"""Lanes as the layout sees them: an SP degree and the (seq_id, length) pairs it runs.

Two ways to fill lanes of one size (longest-processing-time dealing by the work model), and where each lane
sits inside the stage block (aligned offsets for power-of-two sizes).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from planner_service.context import PlanningContext
from planner_service.layout.work_model import WorkModel
from proto import PipelineSpec

Items = tuple[tuple[int, int], ...]
"""(seq_id, length) pairs of one lane."""


@dataclass(frozen=True, slots=True)
class LaneSpec:
    sp_degree: int
    items: Items


def deal_longest_first(
    ctx: PlanningContext, indices: Sequence[int], sp_degree: int, model: WorkModel, num_lanes: int
) -> list[LaneSpec]:
    """LPT: the batch's sequences `indices`, costliest first, each to the least-loaded of `num_lanes` lanes."""
    lengths = ctx.batch.lengths
    work = model(np.array([lengths[i] for i in indices], dtype=np.float64)) if indices else np.zeros(0)
    heap = [(0.0, lane) for lane in range(num_lanes)]
    dealt: list[list[tuple[int, int]]] = [[] for _ in range(num_lanes)]
    for j in np.argsort(-work, kind="stable"):
        load, lane = heapq.heappop(heap)
        i = indices[int(j)]
        dealt[lane].append((ctx.batch.seq_ids[i], lengths[i]))
        heapq.heappush(heap, (load + float(work[j]), lane))
    return [LaneSpec(sp_degree, tuple(items)) for items in dealt]


def uniform_lanes(ctx: PlanningContext, pipeline: PipelineSpec, sp_degree: int, model: WorkModel) -> list[LaneSpec]:
    """Every lane of size s; sequences dealt longest-processing-time first."""
    num_lanes = ctx.cost.dp_size(pipeline) // sp_degree
    return deal_longest_first(ctx, range(len(ctx.batch.lengths)), sp_degree, model, num_lanes)


def buddy_offsets(sizes: Sequence[int]) -> list[int]:
    """Aligned offsets for power-of-two lane sizes: place the biggest first, consecutively."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    offsets = [0] * len(sizes)
    pos = 0
    for i in order:
        offsets[i] = pos
        pos += sizes[i]
    return offsets
