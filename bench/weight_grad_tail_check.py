"""A trailing group of W ops, measured: predicted vs measured step time of the same plans with every stage's
gradient reduction after its last backward op ("plain") and behind a trailing group of W ops ("grouped",
`planner_service/simulator/weight_grad_tail.py`), run by the executor on this machine's CPU ranks (gloo).

Each batch is planned by helix at P = 1 on cpu-1x2 (two data-parallel ranks, one core each) for an executor that
cannot defer, then cut into one chunk per sequence (the planner packs a short batch into one chunk per lane,
which leaves no group to form; several chunks per lane is what a long-sequence or pipelined step has). "grouped"
is that plan with the W ops of all but its last chunk after the last backward op: the executor computes their
weight gradients layer by layer inside that op while the bucketed all-reduce sends each finished layer. The
model is wide and the sequences short, so the reduction is a visible share of the step. On CPU the all-reduce
(gloo) also takes CPU time from the compute it overlaps, which the simulator does not model: the measured gain is
the check of that assumption here. The last two columns price the grouped plan with the profile's
`deferred_layer_overhead_s` at 0: on CPU that fit is the median of small differences between noisy layer timings,
and it alone can turn the predicted gain into a loss.

    .venv/bin/python bench/weight_grad_tail_check.py            # ~3 min on 2 cores (the profile is cached)
    .venv/bin/python bench/weight_grad_tail_check.py --quick    # 2 batches, 3 repeats

Writes bench/results/weight_grad_tail_check.md and .json.
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
from planner_service.cost_model import CostModel
from planner_service.planner import make_plan
from planner_service.presets import resolve_model
from planner_service.schedules import build_schedule
from planner_service.simulator import simulate
from planner_service.simulator.weight_grad_tail import with_weight_grad_tail
from proto import Batch, Chunk, ModelSpec, Plan, Segment, validate_plan
from proto.capabilities import TORCH_EXECUTOR

SEED = 6100
WHOLE_GROUP = 1e9
"""`with_weight_grad_tail` share large enough to take every chunk it may (all but the first stage's last one)."""


def wide_model() -> ModelSpec:
    """The CPU test model, wider: 4 layers of hidden 512 (about 11M parameters, 42 MB of float32 gradients), so
    that the reduction is worth hiding next to the compute of a few hundred tokens."""
    tiny = resolve_model("tiny")
    return tiny.model_copy(
        update={"name": "wide-4l", "num_layers": 4, "hidden_size": 1024, "num_heads": 8, "num_kv_heads": 8,
                "ffn_hidden_size": 2048},
    )  # fmt: skip


def one_chunk_per_sequence(plan: Plan, batch: Batch, cost: CostModel) -> Plan:
    """`plan` with each lane's sequences in chunks of their own (1F1B order, no recompute), priced again."""
    lengths = batch.length_of()
    lanes = []
    for lane in plan.lanes:
        seqs = [seg.seq_id for chunk in lane.chunks for seg in chunk.segments if seg.start == 0]
        chunks = [Chunk(segments=[Segment(seq_id=q, start=0, end=lengths[q])]) for q in seqs]
        lanes.append(
            lane.model_copy(
                update={"chunks": chunks, "schedule": build_schedule(chunks, 1), "recompute": [[0] * len(chunks)]}
            )
        )
    cut = plan.model_copy(update={"lanes": lanes})
    return priced(cut, batch, cost)


def priced(plan: Plan, batch: Batch, cost: CostModel) -> Plan:
    return plan.model_copy(update={"predicted": simulate(plan, batch, cost).predicted}).with_id()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cpu_check_arguments(parser, batches=4, batch_size=6)
    parser.set_defaults(max_len=48)
    args = parse_cpu_check_arguments(parser)
    model = wide_model()
    start = start_cpu_check(args, model, "weight_grad_tail_check_profile")
    cluster, profile, cost, began, loads = start.cluster, start.profile, start.cost, start.began, start.loads
    no_deferral = TORCH_EXECUTOR.model_copy(update={"deferred_weight_grads": False})

    no_overhead = CostModel.from_specs(
        cluster, model, profile=profile.model_copy(update={"deferred_layer_overhead_s": 0.0})
    )
    batches = stdlib_batches(args, SEED)
    cases: list[PlanCase] = []
    grouped_free: list[float] = []
    for b, batch in enumerate(batches):
        planned = make_plan(
            batch=batch, cluster=cluster, model=model, strategy="helix", profile=profile,
            time_limit_s=args.time_limit, num_stages=1, executor=no_deferral, step=b,
        )  # fmt: skip
        plain = one_chunk_per_sequence(planned, batch, cost)
        flagged = plain.model_copy(update={"defer_weight_grads": True})
        grouped = priced(with_weight_grad_tail(flagged, cost, share=WHOLE_GROUP), batch, cost)
        grouped_free.append(simulate(grouped, batch, no_overhead).predicted.iteration_s)
        for plan in (plain, grouped):
            validate_plan(plan, batch, cluster, model)
        cases.append(PlanCase(key=f"{b}/plain", batch=batch, plan=plain, token_seed=b + 1))
        cases.append(PlanCase(key=f"{b}/grouped", batch=batch, plan=grouped, token_seed=b + 1))
    run = time_cases_round_robin(cluster, model, cases, args.repeats)
    measured, spreads = run.seconds, run.spreads
    loads["after run"] = os.getloadavg()

    rows = []
    gains: list[tuple[float, float]] = []
    for i in range(0, len(cases), 2):
        b = i // 2
        plain, grouped = cases[i].plan, cases[i + 1].plan
        pp, mp = plain.predicted.iteration_s, measured[i]
        pg, mg = grouped.predicted.iteration_s, measured[i + 1]
        gains.append((pp / pg, mp / mg))
        chunks = max(len(lane.chunks) for lane in plain.lanes)
        free = grouped_free[b]
        rows.append(
            [b, sum(batches[b].lengths), chunks, plain.predicted.grad_sync_s, pp, mp, pg, mg, pp / pg, mp / mg,
             free, pp / free]
        )  # fmt: skip
    meta = cpu_check_meta(
        args,
        script="weight_grad_tail_check",
        model=f"{model.name} ({model.num_layers} layers, hidden {model.hidden_size}), P = 1, data-parallel 2",
        profile=f"{profile.name} (measured by helix profile on these ranks; deferred_layer_overhead_s "
        f"{profile.deferred_layer_overhead_s * 1e3:.2f} ms per deferred layer and chunk, which the last two "
        "columns leave out)",
        spreads=spreads,
        loads=loads,
        began=began,
        batches_note=", one chunk each",
        results={
            "grouped over plain, geometric mean": f"predicted {statistics.geometric_mean(x for x, _ in gains):.3f}x, "
            f"measured {statistics.geometric_mean(y for _, y in gains):.3f}x"
        },
    )
    md = write_table(
        "weight_grad_tail_check",
        "Trailing W-op group: predicted vs measured step time (CPU, gloo)",
        ["batch", "tokens", "chunks per lane", "predicted reduction s", "plain predicted s", "plain measured s",
         "grouped predicted s", "grouped measured s", "predicted speedup", "measured speedup",
         "grouped predicted s, deferral overhead 0", "predicted speedup, deferral overhead 0"],
        rows,
        meta,
    )  # fmt: skip
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
