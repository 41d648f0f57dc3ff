"""Executor accuracy: predicted vs measured step time and peak memory of every strategy, before and after calibration.

On this machine's CPU ranks (gloo), for a CPU cluster and a small model:

1. profile: `helix profile`'s measurement (`executor.profile`) on the same ranks, threads and core pinning the
   steps use (the profile is cached per cluster, model, software and settings);
2. batches: K evaluation and K' calibration batches of real lengths (the Python standard library's sources,
   `planner_service.workloads.stdlib_lengths`), every strategy planned with the measured profile;
3. run 1 (one launch, cases round-robin): every evaluation and calibration plan, `warmup` + `repeats` steps each
   (`executor.profile.step_timing`); measured = the median step;
4. calibration: the calibration batches' steps go through `Calibrator.observe`; the evaluation steps never do;
5. run 2: the evaluation batches re-planned with the calibrated profile, timed the same way, round-robin with the
   calibration plans again; those calibrate run 2's predictions (another machine load, another level: the online
   calibration of a real job follows such drift through its window the same way).

Reported: per (batch, strategy) predicted vs measured time and memory; MAPE before calibration (run-1 plans with
the measured profile), after calibration on the same measured steps (the run-1 plans re-predicted with the
calibrated profile) and on the re-planned run 2; per strategy the measured speedup over static next to the
predicted one, and whether the measured order of strategies is the predicted order.

    .venv/bin/python bench/executor_accuracy.py            # ~15-25 min on 2 busy cores
    .venv/bin/python bench/executor_accuracy.py --quick    # 2+2 batches, 2 repeats

Writes bench/results/executor_accuracy.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

from bench_common import RESULTS, machine, predicted_time_and_saved_peak

from executor.profile.grid import GRIDS, ProfileSettings
from executor.profile.profile_run import ProfileTarget, cached_document, run_profile_rank
from executor.profile.step_timing import PlanCase, StepTiming, StepTimingSettings, time_plans
from executor.profile.timing import Statistic, summarize
from executor.verify.launch import launch_local
from planner_service.calibration.calibrator import CalibrationSettings, Calibrator, mape
from planner_service.cost_model import CostModel
from planner_service.cost_model.profile_document import ProfileDocument, default_cache_dir
from planner_service.planner import make_plan
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.report import batch_of_plan
from planner_service.workloads import load_workload
from proto import Batch, ClusterSpec, CostProfile, Feedback, ModelSpec, Plan

STRATEGIES = ("static", "flexsp", "infinipipe", "helix", "greedy")
SPEEDUP_OF = ("helix", "flexsp", "infinipipe")
EVAL_SEED, CALIBRATION_SEED = 100, 200


@dataclass(frozen=True)
class Measured:
    seconds: float
    """The run's statistic (min or median) over the timed steps."""
    spread: float
    """(max - min) / median of the timed steps: how noisy this case was."""
    peaks: tuple[float, ...]
    """Per rank: model states + activations."""

    @property
    def peak_bytes(self) -> float:
        return max(self.peaks)


def measured_of(timing: StepTiming, statistic: Statistic) -> Measured:
    median = statistics.median(timing.seconds)
    spread = (max(timing.seconds) - min(timing.seconds)) / median
    return Measured(summarize(list(timing.seconds), statistic), spread, timing.peak_memory_bytes)


def batches(args: argparse.Namespace, seed: int, count: int) -> list[Batch]:
    return [
        load_workload(
            lengths_path=None, dataset="stdlib", batch_size=args.batch_size, seed=seed + i, max_len=args.max_len
        )
        for i in range(count)
    ]


def plan_all(
    batch_list: list[Batch], cluster: ClusterSpec, model: ModelSpec, profile: CostProfile, args: argparse.Namespace,
    tag: str,
) -> list[PlanCase]:  # fmt: skip
    cases = []
    for b, batch in enumerate(batch_list):
        for strategy in STRATEGIES:
            plan = make_plan(
                batch=batch, cluster=cluster, model=model, strategy=strategy, profile=profile,
                time_limit_s=args.time_limit, step=b,
            )  # fmt: skip
            cases.append(PlanCase(key=f"{tag}/{b}/{strategy}", batch=batch, plan=plan, token_seed=b + 1))
    return cases


def run_steps(
    cluster: ClusterSpec, model: ModelSpec, cases: list[PlanCase], args: argparse.Namespace
) -> list[Measured]:
    settings = StepTimingSettings(warmup=args.warmup, repeats=args.repeats, pin_cores=True)
    results = launch_local(time_plans, (cluster, model, cases, settings), world_size=cluster.num_devices)
    timings: list[StepTiming] = results[0]
    return [measured_of(t, args.statistic) for t in timings]


def profile(cluster: ClusterSpec, model: ModelSpec, args: argparse.Namespace) -> ProfileDocument:
    settings = ProfileSettings(
        grid=GRIDS["cpu"], grid_name="cpu", repeats=args.profile_repeats, statistic=args.statistic, pin_cores=True
    )
    target = ProfileTarget(
        cluster=cluster, model=model, settings=settings, out=RESULTS / "executor_accuracy_profile.json",
        cache_dir=default_cache_dir(),
    )  # fmt: skip
    doc = None if args.refresh_profile else cached_document(target)
    if doc is None:
        doc = launch_local(run_profile_rank, (target,), world_size=cluster.num_devices)[0]
    return doc


def calibrate(
    cluster: ClusterSpec, model: ModelSpec, base: CostProfile, cases: list[PlanCase], measured: list[Measured]
) -> Calibrator:
    """A calibrator fed the calibration batches' steps (the evaluation batches never reach it)."""
    calibrator = Calibrator(cluster=cluster, model=model, base=base, settings=CalibrationSettings(window=len(cases)))
    for step, (case, m) in enumerate(zip(cases, measured, strict=True)):
        plan = case.plan.model_copy(update={"step": step}).with_id()
        feedback = Feedback(
            step=step, plan_id=plan.plan_id, measured_iteration_s=m.seconds, peak_memory_bytes=list(m.peaks),
            peak_memory_source="saved_tensors",  # the CPU probe: model states + tensors held for backward
        )  # fmt: skip
        calibrator.observe(plan, feedback, batch=case.batch)
    return calibrator


def predict(plan: Plan, cluster: ClusterSpec, model: ModelSpec, profile: CostProfile) -> tuple[float, float]:
    """(iteration seconds, largest rank's peak less the reserve) of `plan` priced with `profile`. The peak is the one
    without op transients: what the CPU probe measures (model states + tensors held for backward)."""
    return predicted_time_and_saved_peak(plan, batch_of_plan(plan), CostModel.from_specs(cluster, model, profile))


def strategy_summary(rows: list[dict[str, Any]], predicted_key: str, measured_key: str) -> dict[str, dict[str, float]]:
    """Per strategy: total predicted and measured seconds over the batches, and speedups over static."""
    totals = {s: (sum(r[predicted_key] for r in rows if r["strategy"] == s),
                  sum(r[measured_key] for r in rows if r["strategy"] == s)) for s in STRATEGIES}  # fmt: skip
    static_p, static_m = totals["static"]
    return {
        s: {"predicted_s": p, "measured_s": m, "predicted_speedup": static_p / p, "measured_speedup": static_m / m}
        for s, (p, m) in totals.items()
    }


def order(summary: dict[str, dict[str, float]], key: str) -> list[str]:
    return sorted(summary, key=lambda s: summary[s][key])


def order_disagreements(summary: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Pairs the prediction orders one way and the measurement the other, with both gaps: how much faster the
    prediction says the first is, and how much slower it measured."""
    ranked = order(summary, "predicted_s")
    pairs = []
    for i, a in enumerate(ranked):
        for b in ranked[i + 1 :]:
            pa, pb = summary[a]["predicted_s"], summary[b]["predicted_s"]
            ma, mb = summary[a]["measured_s"], summary[b]["measured_s"]
            if ma > mb:
                pairs.append({"predicted_faster": a, "measured_faster": b,
                              "predicted_gap": pb / pa - 1.0, "measured_gap": ma / mb - 1.0})  # fmt: skip
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", default="cpu-2x2")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batches", type=int, default=4, help="evaluation batches")
    parser.add_argument("--calibration-batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile-repeats", type=int, default=5)
    parser.add_argument("--time-limit", type=float, default=1.0)
    parser.add_argument("--refresh-profile", action="store_true")
    parser.add_argument(
        "--statistic",
        choices=("min", "median"),
        default="min",
        help="of a case's timed steps and of the profile's repeats: min (default; this machine is shared, and load "
        "from elsewhere only adds time) or median",
    )
    parser.add_argument("--quick", action="store_true", help="2 + 2 batches, 2 repeats")
    parser.add_argument(
        "--render", action="store_true", help="rewrite the .md from the last run's .json (no measurement)"
    )
    args = parser.parse_args()
    if args.render:
        write_report(json.loads((RESULTS / "executor_accuracy.json").read_text()))
        return
    if args.quick:
        args.batches, args.calibration_batches, args.repeats, args.profile_repeats = 2, 2, 2, 3
    cluster, model = resolve_cluster(args.cluster), resolve_model(args.model)
    began = time.perf_counter()
    loads = {"start": os.getloadavg()}

    doc = profile(cluster, model, args)
    measured_profile = doc.profile
    loads["after profile"] = os.getloadavg()
    print(f"profile: {doc.profile.name} ({time.perf_counter() - began:.0f} s)", flush=True)

    evaluation, calibration = (
        batches(args, EVAL_SEED, args.batches),
        batches(args, CALIBRATION_SEED, args.calibration_batches),
    )
    before_cases = plan_all(evaluation, cluster, model, measured_profile, args, "eval")
    calibration_cases = plan_all(calibration, cluster, model, measured_profile, args, "calibration")
    run1 = run_steps(cluster, model, before_cases + calibration_cases, args)
    loads["after run 1"] = os.getloadavg()
    before, calibration_measured = run1[: len(before_cases)], run1[len(before_cases) :]
    print(f"run 1: {len(run1)} cases ({time.perf_counter() - began:.0f} s)", flush=True)

    calibrator = calibrate(cluster, model, measured_profile, calibration_cases, calibration_measured)
    after_cases = plan_all(evaluation, cluster, model, calibrator.profile, args, "eval-calibrated")
    run2 = run_steps(cluster, model, calibration_cases + after_cases, args)
    loads["after run 2"] = os.getloadavg()
    print(f"run 2: {len(run2)} cases ({time.perf_counter() - began:.0f} s)", flush=True)
    # run 2's own calibration steps calibrate its predictions: the level of a busy machine drifts between launches
    calibrator2 = calibrate(cluster, model, measured_profile, calibration_cases, run2[: len(calibration_cases)])
    after = run2[len(calibration_cases) :]
    calibrated, calibrated2 = calibrator.profile, calibrator2.profile

    rows = []
    for case, m, case2, m2 in zip(before_cases, before, after_cases, after, strict=True):
        _, batch_index, strategy = case.key.split("/")
        pred0, mem0 = predict(case.plan, cluster, model, measured_profile)
        pred1_same, _ = predict(case.plan, cluster, model, calibrated)
        pred1, mem1 = predict(case2.plan, cluster, model, calibrated2)
        rows.append({
            "batch": int(batch_index), "tokens": case.batch.num_tokens, "strategy": strategy,
            "plan_key_before": _plan_key(case.plan), "plan_key_calibrated": _plan_key(case2.plan),
            "layout": _layout(case.plan), "predicted_s": pred0, "measured_s": m.seconds, "spread": m.spread,
            "recalibrated_s": pred1_same,
            "layout_calibrated": _layout(case2.plan), "predicted_calibrated_s": pred1,
            "measured_calibrated_s": m2.seconds, "spread_calibrated": m2.spread,
            "predicted_peak_mib": mem0 / 2**20, "measured_peak_mib": m.peak_bytes / 2**20,
            "predicted_peak_calibrated_mib": mem1 / 2**20, "measured_peak_calibrated_mib": m2.peak_bytes / 2**20,
        })  # fmt: skip
    report = build_report(rows, doc, calibrator, args, cluster, loads, time.perf_counter() - began)
    write_report(report)


def _plan_key(plan: Plan) -> str:
    """What the executor runs (pipeline, lanes, chunks, schedules, recompute), without the strategy's name."""
    from proto.fingerprint import fingerprint

    return fingerprint({"pipeline": plan.pipeline.model_dump(), "lanes": [lane.model_dump() for lane in plan.lanes]})


def _layout(plan: Plan) -> str:
    lanes = "+".join(str(lane.sp_degree) for lane in plan.lanes)
    chunks = max(len(lane.chunks) for lane in plan.lanes)
    recompute = sum(sum(sum(r) for r in lane.recompute) for lane in plan.lanes)
    return f"P{plan.pipeline.num_stages} SP[{lanes}] {chunks}ch" + (f" rc{recompute}" if recompute else "")


def build_report(
    rows: list[dict[str, Any]], doc: ProfileDocument, calibrator: Calibrator, args: argparse.Namespace,
    cluster: ClusterSpec, loads: dict[str, tuple[float, float, float]], seconds: float,
) -> dict[str, Any]:  # fmt: skip
    def err(pred: str, meas: str) -> float | None:
        return mape([r[pred] for r in rows], [r[meas] for r in rows])

    before = strategy_summary(rows, "predicted_s", "measured_s")
    after = strategy_summary(rows, "predicted_calibrated_s", "measured_calibrated_s")
    accuracy = {
        "step_time_mape_before": err("predicted_s", "measured_s"),
        "step_time_mape_after_same_steps": err("recalibrated_s", "measured_s"),
        "step_time_mape_after_replanned": err("predicted_calibrated_s", "measured_calibrated_s"),
        "peak_memory_mape_before": err("predicted_peak_mib", "measured_peak_mib"),
        "peak_memory_mape_after": err("predicted_peak_calibrated_mib", "measured_peak_calibrated_mib"),
        "median_step_spread": statistics.median(r["spread"] for r in rows),
        "order_before": {"predicted": order(before, "predicted_s"), "measured": order(before, "measured_s")},
        "order_after": {"predicted": order(after, "predicted_s"), "measured": order(after, "measured_s")},
    }
    accuracy["order_matches_after"] = accuracy["order_after"]["predicted"] == accuracy["order_after"]["measured"]
    accuracy["identical_plans"] = identical_plan_gaps(rows)
    m = doc.measurements
    return {
        "meta": {
            **machine(),
            "cluster": cluster.name,
            "model": doc.model.name,
            "ranks_to_cores": m.cores,
            "threads_per_rank": m.threads_per_rank,
            "batches": f"{args.batches} evaluation + {args.calibration_batches} calibration, stdlib lengths, "
            f"{args.batch_size} sequences, max_len {args.max_len}",
            "steps": f"{args.warmup} warm-up + {args.repeats} timed per case, round-robin; measured = the "
            f"{args.statistic} (profile: the {args.statistic} of {args.profile_repeats} repeats)",
            "load_average_1_5_15": {k: [round(x, 2) for x in v] for k, v in loads.items()},
            "seconds": round(seconds),
            "profile_cache_key": doc.cache_key,
        },
        "accuracy": accuracy,
        "strategies_before": before,
        "strategies_after": after,
        "calibration": calibrator.summary().model_dump(mode="json", exclude={"recent"}),
        "fits": [f.model_dump(mode="json") for f in doc.fits],
        "efficiency": doc.efficiency.model_dump(mode="json"),
        "rows": rows,
    }


def identical_plan_gaps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs of strategies that made the same layout for a batch: their measured times differ only by noise."""
    gaps = []
    for phase, layout_key, key in (("before", "layout", "measured_s"), ("calibrated", "layout_calibrated",
                                   "measured_calibrated_s")):  # fmt: skip
        for i, a in enumerate(rows):
            for b in rows[i + 1 :]:
                if a["batch"] == b["batch"] and a["plan_key_" + phase] == b["plan_key_" + phase]:
                    gap = abs(a[key] - b[key]) / min(a[key], b[key])
                    gaps.append({"phase": phase, "batch": a["batch"], "strategies": [a["strategy"], b["strategy"]],
                                 "layout": a[layout_key], "gap": gap})  # fmt: skip
    return gaps


def _identical(gaps: list[dict[str, Any]]) -> str:
    return "; ".join(f"{g['phase']} batch {g['batch']} {'='.join(g['strategies'])}: {_pct(g['gap'])}" for g in gaps)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def write_report(report: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "executor_accuracy.json").write_text(json.dumps(report, indent=1))
    a, meta = report["accuracy"], report["meta"]
    lines = ["# Executor accuracy: predicted vs measured step time and memory (CPU, gloo)", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += [
        "",
        "## Accuracy",
        "",
        "| | before calibration | after calibration (same steps) | after calibration (re-planned) |",
        "|---|---|---|---|",
        f"| step-time MAPE | {_pct(a['step_time_mape_before'])} | {_pct(a['step_time_mape_after_same_steps'])} | "
        f"{_pct(a['step_time_mape_after_replanned'])} |",
        f"| peak-memory MAPE | {_pct(a['peak_memory_mape_before'])} | - | {_pct(a['peak_memory_mape_after'])} |",
        "",
        "Peak memory on CPU is the executor's probe: model states plus the tensors held for backward, without the "
        "ops' transient working memory (CPU has no allocator statistic). It is compared with the prediction without "
        "op transients (`simulate(..., saved_tensor_peaks=True)`), and the calibration is fed it as "
        "`peak_memory_source='saved_tensors'`.",
        "",
        f"Median spread of a case's timed steps ((max - min) / median): {_pct(a['median_step_spread'])}.",
        "Strategies that produced the same layout for a batch (only noise separates their measured times): "
        + (_identical(a["identical_plans"]) or "none"),
        f"Order of strategies (fastest first), after calibration: predicted {a['order_after']['predicted']}, "
        f"measured {a['order_after']['measured']} ({'match' if a['order_matches_after'] else 'differ'}); "
        f"before: predicted {a['order_before']['predicted']}, measured {a['order_before']['measured']}.",
        "Pairs ordered differently after calibration (predicted gap / measured gap, against the median step spread "
        f"{_pct(a['median_step_spread'])}): "
        + (
            "; ".join(
                f"{d['predicted_faster']} predicted {_pct(d['predicted_gap'])} faster than {d['measured_faster']}, "
                f"measured {_pct(d['measured_gap'])} slower"
                for d in order_disagreements(report["strategies_after"])
            )
            or "none"
        )
        + ".",
        "",
        "## Speedup over static (total time over the evaluation batches)",
        "",
        "| strategy | predicted (before) | measured (before) | predicted (calibrated) | measured (calibrated) |",
        "|---|---|---|---|---|",
    ]
    for s in STRATEGIES:
        b, c = report["strategies_before"][s], report["strategies_after"][s]
        lines.append(
            f"| {s} | {b['predicted_speedup']:.3f} | {b['measured_speedup']:.3f} | {c['predicted_speedup']:.3f} | "
            f"{c['measured_speedup']:.3f} |"
        )
    lines += ["", "## Per batch and strategy", "",
              "| batch | tokens | strategy | layout | predicted s | measured s | error | re-predicted s | "
              "layout (calibrated) | predicted s | measured s | error | memory pred/meas MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["rows"]:
        e0 = r["predicted_s"] / r["measured_s"] - 1
        e1 = r["predicted_calibrated_s"] / r["measured_calibrated_s"] - 1
        lines.append(
            f"| {r['batch']} | {r['tokens']} | {r['strategy']} | {r['layout']} | {r['predicted_s']:.3f} | "
            f"{r['measured_s']:.3f} | {100 * e0:+.1f}% | {r['recalibrated_s']:.3f} | {r['layout_calibrated']} | "
            f"{r['predicted_calibrated_s']:.3f} | {r['measured_calibrated_s']:.3f} | {100 * e1:+.1f}% | "
            f"{r['predicted_peak_calibrated_mib']:.1f} / {r['measured_peak_calibrated_mib']:.1f} |"
        )
    c = report["calibration"]
    probe = next((f for f in report["fits"] if f["name"] == "per-op overhead"), None)
    measured_op = (probe or {}).get("coefficients", {}).get("op_overhead_s")
    measured_text = f"{1e3 * measured_op:.2f} ms" if measured_op is not None else "not measured"
    lines += ["", "## Calibration", "", "Scales (calibrated / measured profile): "
              + ", ".join(f"{k} {v:.3f}" for k, v in c["scales"].items())
              + f"; fixed overhead per pipeline op {1e3 * c.get('op_overhead_s', 0.0):.2f} ms (`helix profile`'s "
              f"probe: {measured_text}); uniform {c['uniform_scale']:.3f}, residual σ {_pct(c['residual_scale'])}.",
              ""]  # fmt: skip
    lines += ["## Profile fits", "", "| fit | rows | rms error | max error |", "|---|---|---|---|"]
    for f in report["fits"]:
        lines.append(
            f"| {f['name']} | {f['rows']} | {_pct(f['rms_relative_error'])} | {_pct(f['max_relative_error'])} |"
        )
    e = report["efficiency"]
    lines += [
        "",
        f"GEMM efficiency {_pct(e['gemm_efficiency'])} and attention efficiency {_pct(e['attention_efficiency'])} of "
        f"the cluster's nominal peak ({e['peak_flops'] / 1e9:.0f} GFLOP/s, {e['peak_source']}); the layer's GEMMs "
        f"reach {_pct(e['gemm_fraction_of_measured_peak'])} of a square GEMM measured on one rank under the same "
        f"concurrency ({(e['measured_gemm_peak_flops'] or 0) / 1e9:.1f} GFLOP/s).",
    ]
    (RESULTS / "executor_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:20]))


if __name__ == "__main__":
    main()
