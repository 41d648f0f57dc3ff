"""Recompute counts per (lane, stage, chunk): how many of a stage's layers drop activations for a chunk.

One policy for the whole lane (none, or every layer: the static baselines and flexsp), or per chunk: the
fewest recomputed layers that keep every point of the stage's 1F1B schedule within memory, by the
recompute ILP (`solvers.recompute_ilp`) or its greedy while searching.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

from planner_service.budget import solver_units
from planner_service.context import PlanningContext
from planner_service.cost_model import CostModel
from planner_service.schedules import build_schedule
from planner_service.simulator.memory_timeline import stage_memory
from planner_service.solvers.recompute_ilp import choose_recompute, greedy_recompute
from proto import Chunk, Lane, PipelineSpec

RecomputeMode = Literal["adaptive", "lane-uniform"]
"""adaptive: per (stage, chunk) counts; lane-uniform: none or every layer for the whole (lane, stage)."""


def uniform_recompute(pipeline: PipelineSpec, num_chunks: int, full: bool) -> tuple[tuple[int, ...], ...]:
    """No recompute, or every layer of every stage recomputed (one policy for the whole lane)."""
    return tuple(
        tuple(pipeline.layers_of(p) if full else 0 for _ in range(num_chunks)) for p in range(pipeline.num_stages)
    )


def no_recompute_bound(
    cost: CostModel, pipeline: PipelineSpec, stage: int, sp_degree: int, chunks: Sequence[Chunk]
) -> float:
    """An upper bound on a lane's activation-side peak on `stage` without recompute: every chunk held at once
    (with the prefix K/V its attention saves), dK/dV accumulators for every token, and the largest chunk's working
    memory (`StageMemory.peak` <= this)."""
    layers = pipeline.layers_of(stage)
    last = stage == pipeline.num_stages - 1
    held = sum(
        cost.chunk_activation_bytes(c, sp_degree=sp_degree, num_layers=layers, is_last_stage=last)
        + cost.kv_bytes(c.num_tokens, sp_degree, layers)
        for c in chunks
    )
    working = max((cost.transient_bytes(c, sp_degree=sp_degree, is_last_stage=last) for c in chunks), default=0.0)
    return held + working


def lane_recompute(
    ctx: PlanningContext,
    pipeline: PipelineSpec,
    *,
    sp_degree: int,
    offset: int,
    chunks: list[Chunk],
    lengths: dict[int, int],
    budgets: list[float],
    mode: RecomputeMode,
    exact: bool,
    time_limit_s: float,
    deterministic_s: float = math.inf,
    charge: Callable[[float], None] | None = None,
    warmup_groups: int = 0,
) -> tuple[tuple[int, ...], ...] | None:
    """Recompute counts per stage of one lane, or None when even full recompute does not fit.

    `budgets[p]`: bytes left for activations on stage p; `exact`: the recompute ILP rather than its greedy,
    each (lane, stage) program within `deterministic_s` CP-SAT time and `time_limit_s` wall seconds, its
    deterministic time passed to `charge` in work units; `warmup_groups`: the schedule's warm-up depth.
    """
    cost = ctx.cost
    p_count = pipeline.num_stages
    tokens = [c.num_tokens for c in chunks]
    zero = (0,) * len(chunks)
    if all(
        no_recompute_bound(cost, pipeline, p, sp_degree, chunks) <= budgets[p] for p in range(p_count)
    ):  # every chunk held at once still fits: no need to walk the schedule
        return tuple(zero for _ in range(p_count))
    lane = Lane(
        lane_id=0,
        sp_degree=sp_degree,
        ranks=[[offset + i for i in range(sp_degree)] for _ in range(p_count)],
        chunks=chunks,
        schedule=build_schedule(chunks, p_count, warmup_groups),
        recompute=[[0] * len(chunks) for _ in range(p_count)],
    )
    spans = sp_degree > ctx.cluster.devices_per_node
    layer_s = [cost.layer_terms(c, sp_degree=sp_degree, spans_nodes=spans).recompute_s for c in chunks]
    out = []
    for p in range(p_count):
        memory = stage_memory(lane, pipeline, p, cost, lengths, tokens)
        if memory.peak(zero) <= budgets[p]:
            out.append(zero)
            continue
        full = (pipeline.layers_of(p),) * len(chunks)
        if memory.peak(full) > budgets[p]:
            return None
        if mode == "lane-uniform":
            out.append(full)
        elif exact:
            result = choose_recompute(
                memory,
                layer_s,
                budgets[p],
                backend=ctx.solver,
                time_limit_s=time_limit_s,
                deterministic_s=deterministic_s,
            )
            if charge is not None:
                charge(solver_units(result.deterministic_s, 1 if result.entries else 0, result.entries))
            out.append(result.counts)
        else:
            out.append(greedy_recompute(memory, layer_s, budgets[p]) or full)
    return tuple(out)
