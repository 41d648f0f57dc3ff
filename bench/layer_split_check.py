"""The head-balanced layer split, measured: predicted vs measured step time of the same batches on the even split and
on the split helix chooses, run by the executor on this machine's CPU ranks (gloo).

The LM head and loss run on the last pipeline stage. A model whose head costs a few layers (here a CPU-sized
Llama-style model of 8 layers whose 8192-token vocabulary makes the head cost several layers; llama3-8b's
128K vocabulary does the same at scale) makes the last stage every pipeline's bottleneck under an even split.
For each pipeline degree P the script plans each batch with helix twice, with the job's split fixed to the even
split and to `head_balanced_split` (from the measured profile), times both plans round-robin on the executor, and
reports each one's predicted and measured seconds and the speedup of the balanced split, predicted and measured.
The default cluster, cpu-1x2, gives each of the two stages a core of its own: with more ranks than cores (cpu-2x2,
four ranks on two cores) two stages share a core, a core's load rather than a stage's sets the step time, and the
check measures the test bed, not the split.

    .venv/bin/python bench/layer_split_check.py            # ~2 min on 2 cores (the profile is cached)
    .venv/bin/python bench/layer_split_check.py --quick    # 2 batches, 3 repeats

Writes bench/results/layer_split_check.md and .json.
"""

from __future__ import annotations

import argparse
import os
import statistics

from bench_common import (
    add_cpu_check_arguments,
    cpu_check_meta,
    parse_cpu_check_arguments,
    start_cpu_check,
    stdlib_batches,
    time_cases_round_robin,
    write_table,
)

from executor.profile.step_timing import PlanCase
from planner_service.layout.layer_split import head_balanced_split
from planner_service.planner import make_plan
from planner_service.presets import resolve_model
from proto import ModelSpec, PipelineSpec

SEED = 4100


def head_heavy_model() -> ModelSpec:
    """The CPU test model with 8 layers and an 8192-token vocabulary: its LM head costs a few layers."""
    tiny = resolve_model("tiny")
    return tiny.model_copy(update={"name": "tiny-8l-8k-vocab", "num_layers": 8, "vocab_size": 8192})


def layers_text(pipeline: PipelineSpec) -> str:
    return "/".join(str(pipeline.layers_of(p)) for p in range(pipeline.num_stages))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cpu_check_arguments(parser, batches=3, batch_size=16)
    args = parse_cpu_check_arguments(parser)
    model = head_heavy_model()
    start = start_cpu_check(args, model, "layer_split_check_profile")
    cluster, profile, cost, began, loads = start.cluster, start.profile, start.cost, start.began, start.loads

    batches = stdlib_batches(args, SEED)
    cases: list[PlanCase] = []
    labels: list[tuple[int, int, str, PipelineSpec]] = []
    for num_stages in (p for p in (2, 4) if p <= cluster.num_devices):
        for b, batch in enumerate(batches):
            even = PipelineSpec.even(model.num_layers, num_stages)
            balanced = head_balanced_split(cost, batch, num_stages)
            for name, split in (("even", even), ("balanced", balanced)):
                plan = make_plan(
                    batch=batch, cluster=cluster, model=model, strategy="helix", profile=profile,
                    time_limit_s=args.time_limit, num_stages=num_stages, layer_ranges=split.layer_ranges, step=b,
                )  # fmt: skip
                cases.append(PlanCase(key=f"P{num_stages}/{b}/{name}", batch=batch, plan=plan, token_seed=b + 1))
                labels.append((num_stages, b, name, split))
    run = time_cases_round_robin(cluster, model, cases, args.repeats)
    measured, spreads = run.seconds, run.spreads
    loads["after run"] = os.getloadavg()

    rows = []
    speedups: dict[int, list[tuple[float, float]]] = {}
    for i in range(0, len(cases), 2):
        (p, b, _, even), (_, _, _, balanced) = labels[i], labels[i + 1]
        pe, pb = cases[i].plan.predicted.iteration_s, cases[i + 1].plan.predicted.iteration_s
        me, mb = measured[i], measured[i + 1]
        speedups.setdefault(p, []).append((pe / pb, me / mb))
        rows.append([
            p, b, sum(batches[b].lengths), layers_text(even), pe, me, layers_text(balanced), pb, mb,
            pe / pb, me / mb,
        ])  # fmt: skip
    summary = {
        f"P={p}: balanced over even, total over the batches": f"predicted {statistics.fmean(x for x, _ in v):.3f}x, "
        f"measured {statistics.fmean(y for _, y in v):.3f}x"
        for p, v in speedups.items()
    }
    meta = cpu_check_meta(
        args,
        script="layer_split_check",
        model=f"{model.name} ({model.num_layers} layers, hidden {model.hidden_size}, vocabulary {model.vocab_size})",
        profile=f"{profile.name}: head {profile.head_s_per_token:.3g} s/token, layer linear "
        f"{profile.linear_s_per_token:.3g} s/token (measured by helix profile on these ranks)",
        spreads=spreads,
        loads=loads,
        began=began,
        results=summary,
    )
    md = write_table(
        "layer_split_check",
        "Head-balanced layer split: predicted vs measured step time (CPU, gloo)",
        ["P", "batch", "tokens", "even layers", "even predicted s", "even measured s", "balanced layers",
         "balanced predicted s", "balanced measured s", "predicted speedup", "measured speedup"],
        rows,
        meta,
    )  # fmt: skip
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
