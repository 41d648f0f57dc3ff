"""Deferred weight gradients, measured: predicted vs measured step time of the same plans with and without
`Plan.defer_weight_grads`, run by the executor on this machine's CPU ranks (gloo).

For each batch, helix plans it at P = 2 for an executor that cannot defer (the plain plan). Two deferred plans
are that plan with W ops (`place_weight_grads`): "after send" (each right after its backward op, which sends its
input gradient first) and "in gaps" (where a stage would wait), each priced again by the simulator. All three run
round-robin on the executor, and the table gives each one's predicted and measured seconds and the speedups over
the plain plan, predicted and measured. The gain is the pipeline drain, about one backward op's weight gradients
per stage boundary for "after send" and two for "in gaps", so it is largest when a stage has few chunks; the
profile's `deferred_layer_overhead_s` is what the bookkeeping costs.

The default cluster, cpu-1x2, gives each stage a core of its own (with more ranks than cores, stages share a
core and a core's load, not the schedule, sets the step time).

    .venv/bin/python bench/deferred_weight_grads_check.py            # ~2 min on 2 cores (the profile is cached)
    .venv/bin/python bench/deferred_weight_grads_check.py --quick    # 2 batches, 3 repeats

Writes bench/results/deferred_weight_grads_check.md and .json.
"""

from __future__ import annotations

import argparse
import os
import statistics

from bench_common import (
    add_cpu_check_arguments,
    cpu_check_meta,
    parse_cpu_check_arguments,
    predicted_time_and_saved_peak,
    start_cpu_check,
    stdlib_batches,
    time_cases_round_robin,
    write_table,
)

from executor.profile.step_timing import PlanCase
from planner_service.planner import make_plan
from planner_service.presets import resolve_model
from planner_service.simulator import simulate
from planner_service.simulator.weight_grad_placement import place_weight_grads
from proto import ModelSpec
from proto.capabilities import TORCH_EXECUTOR

SEED = 5200
NUM_STAGES = 2


def deep_model() -> ModelSpec:
    """The CPU test model with 8 layers (4 per stage), so that a stage's weight gradients are worth deferring."""
    tiny = resolve_model("tiny")
    return tiny.model_copy(update={"name": "tiny-8l", "num_layers": 8})


def memory_errors(memory: list[tuple[float, float]]) -> str:
    """MAPE and worst relative error of (predicted, measured) peak bytes."""
    errors = [abs(p / m - 1) for p, m in memory]
    return f"MAPE {100 * statistics.mean(errors):.1f}%, worst {100 * max(errors):.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cpu_check_arguments(parser, batches=4, batch_size=8)
    args = parse_cpu_check_arguments(parser)
    model = deep_model()
    start = start_cpu_check(args, model, "deferred_weight_grads_check_profile")
    cluster, profile, cost, began, loads = start.cluster, start.profile, start.cost, start.began, start.loads
    no_deferral = TORCH_EXECUTOR.model_copy(update={"deferred_weight_grads": False})

    batches = stdlib_batches(args, SEED)
    cases: list[PlanCase] = []
    for b, batch in enumerate(batches):
        plain = make_plan(
            batch=batch, cluster=cluster, model=model, strategy="helix", profile=profile,
            time_limit_s=args.time_limit, num_stages=NUM_STAGES, executor=no_deferral, step=b,
        )  # fmt: skip
        flagged = plain.model_copy(update={"defer_weight_grads": True})
        after_send = place_weight_grads(flagged, batch, cost, queue=False)
        in_gaps = place_weight_grads(flagged, batch, cost)
        cases.append(PlanCase(key=f"{b}/plain", batch=batch, plan=plain, token_seed=b + 1))
        for name, deferred in (("after send", after_send), ("in gaps", in_gaps)):
            priced = deferred.model_copy(update={"predicted": simulate(deferred, batch, cost).predicted}).with_id()
            cases.append(PlanCase(key=f"{b}/{name}", batch=batch, plan=priced, token_seed=b + 1))
    run = time_cases_round_robin(cluster, model, cases, args.repeats)
    measured, spreads = run.seconds, run.spreads
    loads["after run"] = os.getloadavg()

    rows = []
    gains: dict[str, list[tuple[float, float]]] = {"after send": [], "in gaps": []}
    memory: list[tuple[float, float]] = []  # (predicted, measured) peak bytes of every case
    for i in range(0, len(cases), 3):
        b = i // 3
        plain = cases[i].plan
        pp, mp = plain.predicted.iteration_s, measured[i]
        chunks = max(len(lane.chunks) for lane in plain.lanes)
        row: list[object] = [b, sum(batches[b].lengths), chunks, pp, mp]
        for k, name in enumerate(gains, start=1):
            pd, md = cases[i + k].plan.predicted.iteration_s, measured[i + k]
            gains[name].append((pp / pd, mp / md))
            row += [pd, md, pp / pd, mp / md]
        for k in range(3):  # plain, after send, in gaps
            predicted_peak = predicted_time_and_saved_peak(cases[i + k].plan, batches[b], cost)[1]
            memory.append((predicted_peak, run.peaks[i + k]))
            row.append(f"{predicted_peak / 2**20:.2f} / {run.peaks[i + k] / 2**20:.2f}")
        rows.append(row)
    meta = cpu_check_meta(
        args,
        script="deferred_weight_grads_check",
        model=f"{model.name} ({model.num_layers} layers, hidden {model.hidden_size}), P = {NUM_STAGES}",
        profile=f"{profile.name} (measured by helix profile on these ranks; weight_grad_share "
        f"{profile.weight_grad_share:g})",
        spreads=spreads,
        loads=loads,
        began=began,
        results={
            **{
                f"{name} over plain, geometric mean": f"predicted {statistics.geometric_mean(x for x, _ in g):.3f}x, "
                f"measured {statistics.geometric_mean(y for _, y in g):.3f}x"
                for name, g in gains.items()
            },
            "peak memory, predicted vs measured (states + tensors held for backward, as the CPU probe counts them: "
            "with the operands queued for W ops)": memory_errors(memory),
        },
    )
    md = write_table(
        "deferred_weight_grads_check",
        "Deferred weight gradients: predicted vs measured step time (CPU, gloo)",
        ["batch", "tokens", "chunks per lane", "plain predicted s", "plain measured s",
         "after send predicted s", "after send measured s", "after send predicted speedup",
         "after send measured speedup", "in gaps predicted s", "in gaps measured s", "in gaps predicted speedup",
         "in gaps measured speedup", "plain MiB pred / meas", "after send MiB pred / meas",
         "in gaps MiB pred / meas"],
        rows,
        meta,
    )  # fmt: skip
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
