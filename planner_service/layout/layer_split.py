"""Which layers each pipeline stage runs: the even split, and the split that gives the LM head's stage fewer layers.

The last stage runs the LM head and the loss besides its layers. With a large vocabulary the head costs as much as
several layers (llama3-8b: 128K vocabulary, ~2.4 layers' forward+backward on short sequences), so under an even
split the last stage is the pipeline's bottleneck and every other stage waits for it. `head_balanced_split`
moves layers off the last stage to the stages before it, as far as that lowers the busiest stage's work on this
batch (the head is linear in tokens, a layer's attention quadratic, so long sequences call for fewer moves).
Megatron-LM users set the same thing by hand, once per job (`--decoder-last-pipeline-num-layers`).
"""

from __future__ import annotations

from collections.abc import Callable

from planner_service.context import PlanningContext
from planner_service.cost_model import CostModel, compute_model
from proto import Batch, PipelineSpec


def layer_and_head_work_s(cost: CostModel, batch: Batch) -> tuple[float, float]:
    """(one layer, the LM head and loss): forward + backward compute seconds of the whole batch on one device."""
    tokens = float(sum(batch.lengths))
    pairs = float(sum(n * n for n in batch.lengths))
    with_head = compute_model.training_s(cost.profile, attn_pairs=pairs, num_tokens=tokens, num_layers=1)
    without_head = compute_model.training_s(cost.profile, attn_pairs=pairs, num_tokens=tokens, num_layers=0)
    return with_head - without_head, without_head


def split_with_last(num_layers: int, num_stages: int, last_layers: int) -> PipelineSpec:
    """`last_layers` on the last stage and the rest as even as possible before it, the remainder on the stages
    nearest the last (an early stage holds the most chunks in flight under 1F1B, so it gets no extra layers)."""
    if num_stages == 1:
        return PipelineSpec.even(num_layers, 1)
    if not 1 <= last_layers <= num_layers - (num_stages - 1):
        raise ValueError(f"last stage of {last_layers} layers leaves no layer for some of {num_stages} stages")
    base, extra = divmod(num_layers - last_layers, num_stages - 1)
    counts = [base + (1 if p >= num_stages - 1 - extra else 0) for p in range(num_stages - 1)] + [last_layers]
    ranges, lo = [], 0
    for n in counts:
        ranges.append((lo, lo + n))
        lo += n
    return PipelineSpec(num_stages=num_stages, layer_ranges=ranges)


def stage_loads(pipeline: PipelineSpec, layer_s: float, head_s: float) -> list[float]:
    """Each stage's compute under the split: its layers, and the head on the last stage."""
    last = pipeline.num_stages - 1
    return [pipeline.layers_of(p) * layer_s + (head_s if p == last else 0.0) for p in range(pipeline.num_stages)]


def head_balanced_split(cost: CostModel, batch: Batch, num_stages: int) -> PipelineSpec:
    """The split whose busiest stage has the least compute for `batch` (layers and head), among those that keep
    the other stages as even as possible; the even split when it is as good (ties keep the most layers last)."""
    num_layers = cost.model.num_layers
    even = PipelineSpec.even(num_layers, num_stages)
    if num_stages == 1:
        return even
    layer_s, head_s = layer_and_head_work_s(cost, batch)
    best, best_load = even, max(stage_loads(even, layer_s, head_s))
    for last in range(num_layers - (num_stages - 1), 0, -1):
        split = split_with_last(num_layers, num_stages, last)
        load = max(stage_loads(split, layer_s, head_s))
        if load < best_load * (1 - 1e-9):
            best, best_load = split, load
    return best


def candidate_splits(cost: CostModel, batch: Batch, num_stages: int) -> list[PipelineSpec]:
    """The splits a search tries at P = `num_stages`: the even one, and the head-balanced one when it differs."""
    even = PipelineSpec.even(cost.model.num_layers, num_stages)
    balanced = head_balanced_split(cost, batch, num_stages)
    return [even] if balanced == even else [even, balanced]


SplitChoice = Callable[[PlanningContext, int], list[PipelineSpec]]
"""The layer splits a strategy builds at a pipeline degree P (its lower bound takes the smallest over them)."""


def job_split(ctx: PlanningContext, num_stages: int) -> list[PipelineSpec]:
    """The one split the context gives: the job's own when it fixes one, else the even split (what static,
    infinipipe, flexsp, dcp and greedy build)."""
    return [ctx.split_for(num_stages)]


def searched_splits(ctx: PlanningContext, num_stages: int) -> list[PipelineSpec]:
    """helix's splits at P: the job's own when it fixes one (its executors built their stage modules from it),
    else the even one and the head-balanced one."""
    if ctx.layer_split is not None:
        return job_split(ctx, num_stages)
    return candidate_splits(ctx.cost, ctx.batch, num_stages)
