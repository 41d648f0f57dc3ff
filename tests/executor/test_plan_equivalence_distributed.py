"""The strongest executor test: random valid single-stage plans on 4 and 8 gloo ranks (float64) give the
single-process reference's loss, every parameter gradient and the weights after AdamW, to 1e-9 relative.

Each world size is launched once (module fixture) and runs many cases: direct Ulysses checks, random lane
layouts / packings / op orders / recompute, ZeRO-1, several steps, `static` and `flexsp` plans from the
planner, and plans every rank must refuse.
"""

from __future__ import annotations

import random
import time

import pytest
from executor_dist_suite import SuiteResult, UlyssesCheck, run_suite
from executor_fixtures import cpu_cluster, make_plan, random_batch, random_plan, tiny_model

from executor.equivalence import EquivalenceCase, StepInput, compare_case
from executor.launch import launch_local
from planner_service.planner import make_plan as make_planner_plan
from planner_service.presets import resolve_cluster, resolve_model
from proto.batch import Batch
from proto.model import ModelSpec

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TOL = 1e-9
NUM_RANDOM = 10


def _cases(world: int, seed: int) -> list[EquivalenceCase]:
    rng = random.Random(seed)
    cluster = cpu_cluster(2, world // 2)
    cases = []
    models: list[ModelSpec] = [tiny_model(), tiny_model(num_kv_heads=8, gated_mlp=False), tiny_model(num_kv_heads=1)]
    for i in range(NUM_RANDOM):
        model = models[i % len(models)]
        steps = []
        for k in range(1 + (i % 3 == 0)):
            batch = random_batch(rng, num_seqs=rng.randint(2, 3 * world), max_len=48, first_id=100 * k)
            plan = random_plan(rng, batch, cluster, model, random_recompute=i % 4 == 1)
            steps.append(StepInput(batch=batch, plan=plan, token_seed=rng.randrange(1 << 30)))
        cases.append(
            EquivalenceCase(
                name=f"random{i}", cluster=cluster, model=model, steps=tuple(steps), seed=i, zero1=i % 5 == 3
            )
        )
    # plans from the planner itself (static at P = 1, flexsp) on skewed batches: mixed lane sizes
    preset_cluster, preset_model = resolve_cluster(f"cpu-2x{world // 2}"), resolve_model("tiny")
    skewed = [
        Batch.from_lengths([600, 200, 40, 30, 20, 10, 5, 1]),
        Batch.from_lengths([300, 60, 50, 40, 30, 8, 3, 2, 1]),
    ]
    for strategy in ("static", "flexsp"):
        steps = tuple(
            StepInput(
                batch=b,
                plan=make_planner_plan(
                    batch=b, cluster=preset_cluster, model=preset_model, strategy=strategy, num_stages=1, step=k
                ),
                token_seed=k,
            )
            for k, b in enumerate(skewed)
        )
        cases.append(
            EquivalenceCase(name=f"planner-{strategy}", cluster=preset_cluster, model=preset_model, steps=steps, seed=3)
        )
    # one lane over all ranks, chunk lengths not divisible by the SP degree, kv heads (2) < SP degree
    model = tiny_model()
    batch = random_batch(rng, num_seqs=5, max_len=40)
    plan = make_plan(batch, cluster, model, [(list(range(world)), [[s] for s in batch.seq_ids])])
    cases.append(
        EquivalenceCase(
            name="one-lane", cluster=cluster, model=model, steps=(StepInput(batch=batch, plan=plan, token_seed=1),)
        )
    )
    # plans that must be refused on every rank: made for another world size, and for another batch
    other = cpu_cluster(2, 2 * world // 2)
    wrong_world = make_plan(
        batch,
        other,
        model,
        [(list(range(world)), [batch.seq_ids[:2]]), (list(range(world, 2 * world)), [batch.seq_ids[2:]])],
    )
    cases.append(
        EquivalenceCase(
            name="refuse-world",
            cluster=cluster,
            model=model,
            steps=(StepInput(batch=batch, plan=wrong_world, token_seed=1),),
        )
    )
    other_batch = random_batch(rng, num_seqs=4, max_len=20, first_id=5000)
    cases.append(
        EquivalenceCase(
            name="refuse-batch",
            cluster=cluster,
            model=model,
            steps=(StepInput(batch=other_batch, plan=plan, token_seed=1),),
        )
    )
    return cases


def _checks(world: int) -> list[UlyssesCheck]:
    return [
        UlyssesCheck(layout=[list(range(world))], segment_lengths=[5, 1, 3 * world + 1], num_heads=8, num_kv_heads=2),
        UlyssesCheck(layout=[list(range(world))], segment_lengths=[world - 1], num_heads=8, num_kv_heads=1),
        UlyssesCheck(
            layout=[[0, 1], [2, 3]] + ([list(range(4, world))] if world > 4 else []),
            segment_lengths=[7, 2],
            num_heads=8,
            num_kv_heads=4,
        ),
    ]


@pytest.fixture(scope="module", params=[4, 8], ids=["cpu-2x2", "cpu-2x4"])
def suite(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, list, dict[int, SuiteResult], str, float]:
    world = request.param
    out_dir = str(tmp_path_factory.mktemp(f"equivalence{world}"))
    cases = _cases(world, seed=world)
    began = time.perf_counter()
    results = launch_local(run_suite, (_checks(world), cases, out_dir), world_size=world)
    return world, cases, results, out_dir, time.perf_counter() - began


@pytest.mark.timeout(240)
def test_ulysses_matches_whole_chunk_attention(suite) -> None:  # type: ignore[no-untyped-def]
    """Ulysses output and q/k/v gradients on each rank equal the rows of whole-chunk attention (chunk
    lengths not divisible by s; kv heads fewer than s; two lanes of different SP degree at once)."""
    world, _, results, _, _ = suite
    assert sorted(results) == list(range(world))
    for r in results.values():
        assert max(r.ulysses_errors) < 1e-12, (r.rank, r.ulysses_errors)


@pytest.mark.timeout(240)
def test_random_plans_match_reference(suite) -> None:  # type: ignore[no-untyped-def]
    world, cases, results, out_dir, seconds = suite
    worst = 0.0
    for i, case in enumerate(cases):
        if case.name.startswith("refuse"):
            continue
        outcomes = [results[r].outcomes[i] for r in sorted(results)]
        report = compare_case(i, case, outcomes, out_dir, tolerance=TOL)
        assert report.max_rel_grad_err <= TOL, (case.name, report)
        assert report.max_rel_loss_err <= TOL, (case.name, report)
        assert report.max_rel_param_err <= TOL, (case.name, report)
        assert report.ok
        worst = max(worst, report.max_rel_grad_err, report.max_rel_param_err, report.max_rel_loss_err)
    print(f"world {world}: {len(cases)} cases, worst relative error {worst:.3e}, launch+run {seconds:.1f} s")


@pytest.mark.timeout(240)
def test_mismatched_plans_are_refused_on_every_rank(suite) -> None:  # type: ignore[no-untyped-def]
    """A plan for another world size or another batch fails on every rank with a message saying why,
    before any collective (the group then runs the next case, so nothing hung)."""
    world, cases, results, _, _ = suite
    expect = {"refuse-world": f"world size is {world}", "refuse-batch": "plan was made for another batch"}
    for i, case in enumerate(cases):
        if case.name in expect:
            for r in sorted(results):
                outcome = results[r].outcomes[i]
                assert outcome.error is not None and expect[case.name] in outcome.error, (r, outcome.error)
                assert f"rank {r} refuses plan" in outcome.error
                assert outcome.losses == []
