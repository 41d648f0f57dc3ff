"""Executor II cases for the distributed equivalence suite: pipeline stages (P = 2, 4), sliced sequences,
hybrid chunks, recompute, planner plans (infinipipe, helix) and randomly perturbed plans.

Every case is one `EquivalenceCase`; the suite's launch runs them next to the single-stage cases.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from executor.verify.equivalence import EquivalenceCase, StepInput
from planner_service.planner import make_plan as make_planner_plan
from planner_service.presets import resolve_cluster, resolve_model
from proto.batch import Batch
from proto.model import ModelSpec
from proto.plan import PipelineSpec, RecomputeScope
from tests.executor.executor_fixtures import (
    at_zero_stage,
    cpu_cluster,
    make_pipeline_plan,
    make_plan,
    perturb_plan,
    random_batch,
    tiny_model,
    with_deferred_weight_grads,
    with_full_weight_grad_tail,
    with_recompute_scope,
)

SKEWED = (
    Batch.from_lengths([600, 200, 40, 30, 20, 10, 5, 1]),
    Batch.from_lengths([300, 60, 50, 40, 30, 8, 3, 2, 1]),
)
"""Batches on which the planner slices the longest sequence into 2-4 slices."""

NUM_PERTURBED = 3


@dataclass(frozen=True)
class RecomputePair:
    """Cases with the same batch and plan except recompute: none, every layer, and every layer's MLP half only."""

    without: str
    with_all: str
    mlp_only: str


def tiny_preset(num_layers: int) -> ModelSpec:
    model = resolve_model("tiny")
    if num_layers == model.num_layers:
        return model
    return model.model_copy(update={"num_layers": num_layers, "name": f"tiny-{num_layers}l"})


def planner_cases(world: int) -> list[EquivalenceCase]:
    """infinipipe and helix plans from the planner at P = 2 (and P = 4 on 8 ranks, with 4 layers)."""
    cluster = resolve_cluster(f"cpu-2x{world // 2}")
    cases = []
    configs = [("infinipipe", 2, 2), ("helix", 2, 2)] + ([("helix", 4, 4)] if world >= 8 else [])
    for strategy, stages, layers in configs:
        model = tiny_preset(layers)
        steps = tuple(
            StepInput(
                batch=batch,
                plan=make_planner_plan(
                    batch=batch, cluster=cluster, model=model, strategy=strategy, num_stages=stages, step=k
                ),
                token_seed=10 + k,
            )
            for k, batch in enumerate(SKEWED)
        )
        cases.append(
            EquivalenceCase(name=f"planner-{strategy}-P{stages}", cluster=cluster, model=model, steps=steps, seed=5)
        )
    return cases


def slice_cases(world: int) -> tuple[list[EquivalenceCase], RecomputePair]:
    """A sequence in 3 uneven slices across chunks, a hybrid chunk (tail slice + short sequences), a
    head slice packed with a short sequence, under Ulysses over the whole stage block (kv heads 2 < s on
    8 ranks), on an uneven 4-layer split; once without and once with recompute of every layer (whole layers,
    and their MLP halves only with the attention halves' activations kept), once with
    the deep schedule warm-up (stage 0 forwards the second slice group before the first one's backwards), and
    once with deferred weight gradients where stage 1 recomputes one of its three layers in some chunks (its
    other layers' weight gradients wait for their W ops, the recomputed one's are computed in the backward)."""
    cluster, model = cpu_cluster(2, world // 2), tiny_model(num_layers=4)
    pipeline = PipelineSpec(num_stages=2, layer_ranges=[(0, 1), (1, 4)])
    batch = Batch(seq_ids=[7, 3, 11, 5, 2], lengths=[57, 6, 3, 31, 9])
    chunks = [
        [(7, 0, 25)],
        [(7, 25, 44)],
        [(7, 44, 57), (3, 0, 6), (11, 0, 3)],  # hybrid: tail slice + two short sequences
        [(2, 0, 9), (5, 0, 12)],  # a head slice after a whole sequence
        [(5, 12, 31)],
    ]
    lanes = [(0, world // 2, chunks)]
    every = [[[pipeline.layers_of(p)] * len(chunks) for p in range(2)]]
    some = [[[0] * len(chunks), [1, 0, 1, 0, 0]]]
    cases = []
    variants = (
        ("slices", None, 0, False),
        ("slices-recompute", every, 0, False),
        ("slices-recompute-mlp", every, 0, False),
        ("slices-deep-warmup", None, 2, False),
        ("slices-deferred-weight-grads", some, 0, True),
    )
    for name, recompute, depth, defer in variants:
        plan = make_pipeline_plan(batch, cluster, model, pipeline, lanes, recompute=recompute, warmup_groups=depth)
        plan = with_deferred_weight_grads(plan, batch, cluster, model, queue=False) if defer else plan
        plan = with_recompute_scope(plan, RecomputeScope.MLP) if name.endswith("-mlp") else plan
        cases.append(
            EquivalenceCase(
                name=name,
                cluster=cluster,
                model=model,
                steps=(StepInput(batch=batch, plan=plan, token_seed=3),),
                seed=2,
            )
        )
    return cases, RecomputePair("slices", "slices-recompute", "slices-recompute-mlp")


def perturbed_cases(world: int, seed: int) -> list[EquivalenceCase]:
    """Random variants of valid plans: lane layouts, slice points, hybrid chunks, recompute, P = 2 and 4 with
    random (uneven) layer splits; two steps on the same pipeline for the first one. The first two defer weight
    gradients, at ZeRO-0 in W ops right after their B ops and at ZeRO-1 in W ops placed in the gaps (the bucketed
    sync then hears of them from the W ops, the last one arming it)."""
    rng = random.Random(seed)
    cluster = cpu_cluster(2, world // 2)
    cases = []
    for i in range(NUM_PERTURBED):
        stages = (2, 4, 2)[i % 3]
        model = tiny_model(num_layers=4, num_kv_heads=(2, 1, 8)[i % 3])
        cuts = sorted(rng.sample(range(1, 4), stages - 1))
        pipeline = PipelineSpec(num_stages=stages, layer_ranges=list(zip([0, *cuts], [*cuts, 4], strict=True)))
        steps = []
        for k in range(2 if i == 0 else 1):
            batch = random_batch(rng, num_seqs=rng.randint(world // 2, world + 2), max_len=40, first_id=100 * k)
            base = make_plan(batch, cluster, model, [(list(range(world)), [batch.seq_ids])])
            plan = perturb_plan(rng, base, batch, cluster, model, pipeline=pipeline)
            if i < 2:  # ZeRO-0: each W op right after its B; ZeRO-1: W ops placed in the gaps
                plan = at_zero_stage(with_deferred_weight_grads(plan, batch, cluster, model, queue=i == 1), i)
            steps.append(StepInput(batch=batch, plan=plan, token_seed=rng.randrange(1 << 30)))
        zero_stage = i if i < 2 else 0
        case = EquivalenceCase(
            name=f"perturbed{i}", cluster=cluster, model=model, steps=tuple(steps), seed=i, zero_stage=zero_stage
        )
        cases.append(case)
    return cases


def weight_grad_tail_cases(world: int, seed: int) -> list[EquivalenceCase]:
    """Every chunk's weight gradients in its stage's trailing group of W ops (`weight_grad_tail`), run with the
    stage's last B op layer by layer while the bucketed sync reduces what is final: on the sliced P = 2 layout
    at ZeRO-1 with recompute of one of stage 1's three layers in some chunks (the first stage flushes the group
    inside its last backward, stage 1 after its send), and on random P = 1 lanes at ZeRO-0."""
    cluster, model = cpu_cluster(2, world // 2), tiny_model(num_layers=4)
    sliced = next(c for c in slice_cases(world)[0] if c.name == "slices-deferred-weight-grads")
    steps = tuple(
        StepInput(batch=s.batch, plan=at_zero_stage(with_full_weight_grad_tail(s.plan), 1), token_seed=s.token_seed)
        for s in sliced.steps
    )
    cases = [
        EquivalenceCase(name="slices-weight-grad-tail", cluster=cluster, model=model, steps=steps, seed=2, zero_stage=1)
    ]
    rng = random.Random(seed)
    batch = random_batch(rng, num_seqs=world + 2, max_len=40)
    plan = perturb_plan(
        rng, make_plan(batch, cluster, model, [(list(range(world)), [batch.seq_ids])]), batch, cluster, model
    )
    step = StepInput(batch=batch, plan=with_full_weight_grad_tail(plan), token_seed=rng.randrange(1 << 30))
    cases.append(
        EquivalenceCase(name="single-stage-weight-grad-tail", cluster=cluster, model=model, steps=(step,), seed=3)
    )
    return cases


def executor2_cases(world: int, seed: int) -> tuple[list[EquivalenceCase], RecomputePair]:
    slices, pair = slice_cases(world)
    return planner_cases(world) + slices + perturbed_cases(world, seed) + weight_grad_tail_cases(world, seed), pair
