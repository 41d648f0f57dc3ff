"""Sharded model states, bucketed sync and tied embeddings for the distributed equivalence suite.

- `uneven-zero{0..3}`: one P = 2 plan whose two lanes in each stage block run different chunk counts (3 and 1)
  and SP degrees, with a sliced sequence, under every ZeRO stage, with small gradient buckets so a stage has
  several; their collectives are counted (`contract_counts`). Also at ZeRO-3 with every layer recomputing its
  MLP half (`uneven-zero3-mlp-recompute`).
- `tied-zero{0..3}`: a tied-embedding model at P = 2 (the first and the last stage both hold the embedding),
  planner plans, gradients clipped to a global norm (exactness of clipping across stages and shards).
- `helix-zero3`: the planner's helix plans at P = 2 on two batches (the lanes change between the steps).
"""

from __future__ import annotations

from dataclasses import dataclass

from executor.model import build_stage
from executor.parallel.zero.block_rounds import block_placements
from executor.verify.equivalence import EquivalenceCase, StepInput
from planner_service.cost_model.data_parallel import StageGroup, contract_calls, stage_collectives
from planner_service.planner import make_plan as make_planner_plan
from planner_service.presets import resolve_cluster
from proto.batch import Batch
from proto.model import ModelSpec
from proto.plan import PipelineSpec, Plan, PlanOptions, RecomputeScope, ZeroStage
from tests.executor.executor_fixtures import (
    at_zero_stage,
    cpu_cluster,
    make_pipeline_plan,
    tiny_model,
    with_recompute_scope,
)
from tests.executor.verify.pipeline_cases import SKEWED, tiny_preset

SMALL_BUCKET_BYTES = 64 * 2**10
"""64 KiB: float64 stages of the tiny models hold 0.4-0.7 MiB of gradients, so each has several buckets."""
CLIP_NORM = 0.5
"""Below the tiny models' gradient norms (~1-40), so clipping really scales."""


def uneven_cases(world: int) -> list[EquivalenceCase]:
    block = world // 2
    sp = block // 2
    cluster, model = cpu_cluster(2, world // 2), tiny_model(num_layers=3)
    pipeline = PipelineSpec(num_stages=2, layer_ranges=[(0, 1), (1, 3)])
    batch = Batch(seq_ids=[4, 9, 1, 6], lengths=[23, 9, 14, 17])
    lanes = [
        (0, sp, [[(4, 0, 12)], [(4, 12, 23), (9, 0, 9)], [(1, 0, 14)]]),  # 3 chunks, a sliced sequence
        (sp, sp, [[(6, 0, 17)]]),  # 1 chunk: joins the other lane's remaining per-chunk rounds idle
    ]
    plan = make_pipeline_plan(batch, cluster, model, pipeline, lanes)
    every = [[[pipeline.layers_of(p)] * len(chunks) for p in range(2)] for _, _, chunks in lanes]
    recomputed = make_pipeline_plan(batch, cluster, model, pipeline, lanes, recompute=every)
    mlp_plan = at_zero_stage(with_recompute_scope(recomputed, RecomputeScope.MLP), 3)
    return [
        EquivalenceCase(
            name=f"uneven-zero{zero}",
            cluster=cluster,
            model=model,
            steps=(StepInput(batch=batch, plan=at_zero_stage(plan, zero), token_seed=4),),
            seed=6,
            zero_stage=zero,
            grad_bucket_bytes=SMALL_BUCKET_BYTES,
            count_collectives=True,
        )
        for zero in range(4)
    ] + [  # FSDP2 units whose blocks checkpoint their MLP halves
        EquivalenceCase(
            name="uneven-zero3-mlp-recompute",
            cluster=cluster,
            model=model,
            steps=(StepInput(batch=batch, plan=mlp_plan, token_seed=4),),
            seed=6,
            zero_stage=3,
            grad_bucket_bytes=SMALL_BUCKET_BYTES,
        )
    ]


def tied_model() -> ModelSpec:
    return tiny_preset(2).model_copy(update={"name": "tiny-tied", "tie_embeddings": True})


def tied_cases(world: int) -> list[EquivalenceCase]:
    cluster, model = resolve_cluster(f"cpu-2x{world // 2}"), tied_model()

    def plan(zero: int) -> Plan:
        options = PlanOptions(zero_stage=ZeroStage(zero), max_zero_stage=ZeroStage(zero))
        return make_planner_plan(
            batch=SKEWED[1], cluster=cluster, model=model, strategy="helix", options=options, num_stages=2, step=0
        )

    return [
        EquivalenceCase(
            name=f"tied-zero{zero}",
            cluster=cluster,
            model=model,
            steps=(StepInput(batch=SKEWED[1], plan=plan(zero), token_seed=8),),
            seed=7,
            zero_stage=zero,
            max_grad_norm=CLIP_NORM,
            count_collectives=True,
        )
        for zero in range(4)
    ]


ZERO3 = PlanOptions(zero_stage=ZeroStage.PARAMETERS, max_zero_stage=ZeroStage.PARAMETERS)


def helix_cases(world: int) -> list[EquivalenceCase]:
    cluster, model = resolve_cluster(f"cpu-2x{world // 2}"), tiny_preset(2)
    steps = tuple(
        StepInput(
            batch=batch,
            plan=make_planner_plan(
                batch=batch, cluster=cluster, model=model, strategy="helix", options=ZERO3, num_stages=2, step=k
            ),
            token_seed=20 + k,
        )
        for k, batch in enumerate(SKEWED)
    )
    return [
        EquivalenceCase(name=f"helix-zero{zero}", cluster=cluster, model=model, steps=steps, seed=9, zero_stage=zero)
        for zero in (3,)  # ZeRO-2 with lanes changing per step: the random single-stage cases
    ]


def zero_cases(world: int) -> list[EquivalenceCase]:
    return uneven_cases(world) + tied_cases(world) + helix_cases(world)


# --- the contract's collective counts ------------------------------------------------------------------------


@dataclass(frozen=True)
class StageShape:
    """What the contract's counts depend on for one stage."""

    num_params: int
    tied_params: int
    """Elements of the tied embedding when this stage holds it at P > 1 (else 0)."""
    num_units: int
    """FSDP units under ZeRO-3: the layers, plus one for the other parameters when there are any."""


def stage_shape(model: ModelSpec, pipeline: PipelineSpec, stage: int) -> StageShape:
    module = build_stage(model, seed=0, layer_range=pipeline.layer_ranges[stage])
    layer_params = sum(p.numel() for p in module.layers.parameters())
    total = sum(p.numel() for p in module.parameters())
    tied = module.embed.weight.numel() if model.tie_embeddings and pipeline.num_stages > 1 and module.embed else 0
    return StageShape(total, tied, len(module.layers) + (1 if total > layer_params else 0))


def contract_counts(
    *,
    zero_stage: int,
    num_params: int,
    elem_bytes: int,
    bucket_bytes: float,
    dp_size: int,
    max_chunks: int,
    units: int,
    rounds: tuple[int, int] | None = None,
) -> dict[str, int]:
    """Per rank per step on the stage block, as the COST MODEL prices them: the calls come from
    `planner_service.cost_model.data_parallel.contract_calls` (the executor contract the planner charges for),
    counted once per step or once per forward/backward round. `rounds` (forward, backward) defaults to the busiest
    lane's chunk count, which is what the cost model assumes (`stage_collectives`)."""
    group = StageGroup(num_params=num_params, num_units=units, dp_size=dp_size, nodes=1)
    calls = contract_calls(
        group,
        zero_stage=ZeroStage(zero_stage),
        bucket_bytes=bucket_bytes,
        grad_bytes=elem_bytes,
        param_bytes=elem_bytes,
    )
    forward, backward = rounds if rounds is not None else (max_chunks, max_chunks)
    per_occasion = {"last_backward": 1, "after_step": 1, "forward": forward, "backward": backward}
    counts = {"all_reduce": 0, "reduce_scatter": 0, "all_gather": 0}
    for call in calls:
        counts[call.kind] += per_occasion[call.occasion] * call.count
    if rounds is None:  # the same numbers as the cost model's own step count
        priced = stage_collectives(0, calls, max_chunks=max_chunks)
        assert (priced.all_reduces, priced.reduce_scatters, priced.all_gathers) == (
            counts["all_reduce"],
            counts["reduce_scatter"],
            counts["all_gather"],
        )
    return counts


def expected_counts(case: EquivalenceCase, stage: int, *, step: int = 0) -> dict[str, int]:
    """The contract's counts for `stage`, plus the executor's one documented addition for a tied holder under
    ZeRO-0/1/2: the tied embedding is reduced in buckets of its own once per step (after the two holders summed
    it), so its buckets and (ZeRO-1/2) one all-gather come on top of the other parameters' counts. ZeRO-3 runs as
    many F and B rounds as the block's common rounds (`block_placements`): the busiest lane's chunk count when
    the other lanes' schedules nest in it (the contract), more when they do not."""
    plan = case.steps[step].plan
    shape = stage_shape(case.model, plan.pipeline, stage)
    kinds, _ = block_placements(["".join(op.kind for op in lane.schedule[stage]) for lane in plan.lanes])
    common = {
        "elem_bytes": 8,
        "bucket_bytes": case.grad_bucket_bytes,
        "dp_size": case.cluster.num_devices // plan.pipeline.num_stages,
        "max_chunks": max(len(lane.chunks) for lane in plan.lanes),
        "units": shape.num_units,
        # ZeRO-3 gathers per block round; ZeRO-2 reduces once per chunk of the busiest lane, the others
        # joining with idle reductions after their last backward (`finish_step`), whatever the rounds.
        "rounds": (kinds.count("F"), kinds.count("B")) if case.zero_stage == 3 else None,
    }
    if case.zero_stage == 3 or shape.tied_params == 0:
        return contract_counts(zero_stage=case.zero_stage, num_params=shape.num_params, **common)
    main = contract_counts(zero_stage=case.zero_stage, num_params=shape.num_params - shape.tied_params, **common)
    tied = contract_counts(zero_stage=min(case.zero_stage, 1), num_params=shape.tied_params, **common)
    return {kind: main[kind] + tied[kind] for kind in main}
