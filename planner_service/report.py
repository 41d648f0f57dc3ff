"""Strategy comparisons and plan summaries, shared by `helix compare`/`helix inspect` and `make demo`.

Pure functions from plans to report objects (dicts that serialise as the CLI's `--json` output) and to
rich renderables; printing and argument handling stay in `cli.py`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import RenderableType
from rich.table import Table

from planner_service.budget import PlanningBudget
from planner_service.cost_model import CostModel
from planner_service.errors import PlanningError
from planner_service.job_layout import tune_fixed_layout
from planner_service.planner import make_plan
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.schedules import max_in_flight
from planner_service.workloads import load_workload
from proto import Batch, ClusterSpec, CostProfile, ModelSpec, Plan, PlanOptions, RecomputeScope, ZeroStage

JOB_SAMPLE_BATCHES = 3
"""Batches (other seeds of the same source) a `megatron` job is tuned on before the compared batch is planned."""


@dataclass(frozen=True, slots=True)
class Workload:
    """What a comparison plans: the specs, the batch, and a description that goes into the report."""

    cluster: ClusterSpec
    model: ModelSpec
    batch: Batch
    description: dict[str, Any]
    other_batch: Callable[[int], Batch] | None = field(default=None, compare=False)
    """Another batch of the same source and size for a seed (a job's sample for `megatron`), when known."""

    def job_sample(self, count: int = JOB_SAMPLE_BATCHES) -> list[Batch]:
        """Batches a job would see besides this one: the same source with the seeds after this batch's."""
        if self.other_batch is None:
            return [self.batch]
        seed = int(self.description.get("seed", 0))
        return [self.other_batch(seed + 1 + k) for k in range(count)]


def load_named_workload(
    cluster: str, model: str, lengths: Path | None, dataset: str | None, batch_size: int, seed: int, max_len: int | None
) -> Workload:
    """Cluster and model from preset names or files, and a batch sampled from a lengths file or a dataset."""
    cluster_spec = resolve_cluster(cluster)
    model_spec = resolve_model(model)

    batch_for = functools.partial(
        load_workload, lengths_path=str(lengths) if lengths else None, dataset=dataset, batch_size=batch_size,
        max_len=max_len,
    )  # fmt: skip
    batch = batch_for(seed=seed)
    description = {
        "cluster": cluster_spec.name,
        "num_devices": cluster_spec.num_devices,
        "model": model_spec.name,
        "source": str(lengths) if lengths else dataset,
        "batch_size": batch_size,
        "seed": seed,
        "max_len": max_len,
        "num_tokens": batch.num_tokens,
        "longest": max(batch.lengths),
    }
    return Workload(
        cluster=cluster_spec,
        model=model_spec,
        batch=batch,
        description=description,
        other_batch=lambda other_seed: batch_for(seed=other_seed),
    )


def job_options(
    work: Workload,
    strategy: str,
    options: PlanOptions,
    time_limit: float,
    *,
    units_only: bool = False,
    profile: CostProfile | None = None,
) -> PlanOptions:
    """The options a job running `strategy` plans this batch with: for `megatron`, its fixed layout tuned on
    the job's sample (other batches of the same source), as a user tunes once before training."""
    if strategy != "megatron" or options.fixed_layout is not None:
        return options
    layout = tune_fixed_layout(
        cluster=work.cluster,
        model=work.model,
        samples=work.job_sample(),
        options=options,
        profile=profile,
        time_limit_s=time_limit,
        budget=PlanningBudget.units_only(time_limit) if units_only else None,
    )
    return options.model_copy(update={"fixed_layout": layout})


def compare_results(
    work: Workload,
    strategies: list[str],
    time_limit: float,
    solver: str,
    zero: int,
    profile: CostProfile | None = None,
    *,
    units_only: bool = False,
    recompute_scope: RecomputeScope = RecomputeScope.LAYER,
) -> tuple[dict[str, Any], dict[str, Plan]]:
    """The comparison report (the `--json` object) and the plans of the feasible strategies (priced with
    `profile`, or the preset).

    `units_only`: every strategy gets the work units of `time_limit` and no wall-clock net, i.e. what it plans on
    the reference machine whatever this one's load (benchmarks of plan quality)."""
    options = PlanOptions(zero_stage=ZeroStage(zero), recompute_scope=recompute_scope)
    ideal = CostModel.from_specs(work.cluster, work.model, profile=profile, options=options).ideal_s(work.batch)
    results = []
    plans: dict[str, Plan] = {}
    for name in strategies:
        try:
            strategy_options = job_options(work, name, options, time_limit, units_only=units_only, profile=profile)
        except PlanningError as exc:
            results.append(result_row(name, None, f"infeasible: {exc}", 0.0, ideal))
            continue
        started = time.perf_counter()  # a job tunes its layout once: not part of planning this batch
        try:
            made = make_plan(
                batch=work.batch,
                cluster=work.cluster,
                model=work.model,
                strategy=name,
                options=strategy_options,
                profile=profile,
                time_limit_s=time_limit,
                solver=solver,
                budget=PlanningBudget.units_only(time_limit) if units_only else None,
            )
            plan: Plan | None = made
            plans[name] = made
            status: str = made.solver.status.value
        except PlanningError as exc:
            plan, status = None, f"infeasible: {exc}"
        results.append(result_row(name, plan, status, time.perf_counter() - started, ideal))
    return {"ideal_s": ideal, "workload": work.description, "results": results}, plans


def result_row(strategy: str, plan: Plan | None, status: str, plan_s: float, ideal: float) -> dict[str, Any]:
    """One strategy's row of the comparison (`plan` None: it produced no plan, `status` says why)."""
    return {
        "strategy": strategy,
        "feasible": plan is not None,
        "iteration_s": plan.predicted.iteration_s if plan else None,
        "ratio_to_ideal": plan.predicted.iteration_s / ideal if plan and ideal > 0 else None,
        "peak_memory_gib": max(plan.predicted.peak_memory_bytes) / 2**30 if plan else None,
        "plan_s": plan_s,
        "status": status,
        "gap": plan.solver.gap if plan else None,
    }


def render_comparison(report: dict[str, Any]) -> Table:
    """The comparison as a table: time, ratio to ideal, speedup over static, memory, planning time, status."""
    static = next((r for r in report["results"] if r["strategy"] == "static" and r["feasible"]), None)
    table = Table(title=f"ideal {report['ideal_s']:.3f} s/iteration")
    columns = ("strategy", "iteration s", "x ideal", "speedup vs static", "peak GiB", "plan s", "status", "gap")
    for column in columns:
        table.add_column(column, justify="left" if column in ("strategy", "status") else "right")
    for r in report["results"]:
        if not r["feasible"]:
            table.add_row(r["strategy"], "-", "-", "-", "-", f"{r['plan_s']:.2f}", r["status"].split(":")[0], "-")
            continue
        speedup = f"{static['iteration_s'] / r['iteration_s']:.2f}x" if static else "-"
        table.add_row(
            r["strategy"],
            f"{r['iteration_s']:.3f}",
            f"{r['ratio_to_ideal']:.2f}",
            speedup,
            f"{r['peak_memory_gib']:.1f}",
            f"{r['plan_s']:.2f}",
            r["status"],
            f"{r['gap']:.1%}" if r["gap"] is not None else "-",
        )
    infeasible = [f"{r['strategy']}: {r['status'].partition(': ')[2]}" for r in report["results"] if not r["feasible"]]
    if infeasible:
        table.caption = "\n".join(infeasible)
    return table


def batch_of_plan(plan: Plan) -> Batch:
    """The batch a plan covers (valid plans cover every token once, so the max segment end is the length)."""
    lengths: dict[int, int] = {}
    for lane in plan.lanes:
        for chunk in lane.chunks:
            for seg in chunk.segments:
                lengths[seg.seq_id] = max(lengths.get(seg.seq_id, 0), seg.end)
    ids = sorted(lengths)
    return Batch(seq_ids=ids, lengths=[lengths[i] for i in ids])


def plan_summary(plan: Plan) -> dict[str, Any]:
    """Lanes, SP degrees, chunks, recompute and predictions of a plan (the `helix inspect --json` object)."""
    p = plan.predicted
    lanes = [
        {
            "lane": lane.lane_id,
            "sp_degree": lane.sp_degree,
            "ranks": [lane.ranks[0][0], lane.ranks[-1][-1]],
            "chunks": len(lane.chunks),
            "tokens": sum(c.num_tokens for c in lane.chunks),
            "sliced_sequences": len({s.seq_id for c in lane.chunks for s in c.segments if s.start > 0}),
            "recomputed_layers": sum(sum(r) for r in lane.recompute),
            "max_in_flight": max((max_in_flight(ops) for ops in lane.schedule), default=0),
            "predicted_s": p.lane_s[lane.lane_id] if lane.lane_id < len(p.lane_s) else None,
        }
        for lane in plan.lanes
    ]
    return {
        "plan_id": plan.plan_id,
        "strategy": plan.strategy,
        "cluster": plan.cluster_name,
        "model": plan.model_name,
        "pipeline_stages": plan.pipeline.num_stages,
        "layer_ranges": plan.pipeline.layer_ranges,
        "num_lanes": len(plan.lanes),
        "sp_degrees": sorted({lane.sp_degree for lane in plan.lanes}),
        "iteration_s": p.iteration_s,
        "ideal_s": p.ideal_s,
        "ratio_to_ideal": p.ratio_to_ideal,
        "bubble_fraction": p.bubble_fraction,
        "comm_s": p.comm_s,
        "recompute_s": p.recompute_s,
        "recompute_scope": plan.options.recompute_scope.value,
        "grad_sync_s": p.grad_sync_s,
        "peak_memory_gib": max(p.peak_memory_bytes, default=0.0) / 2**30,
        "solver": plan.solver.model_dump(),
        "lanes": lanes,
    }


def render_summary(summary: dict[str, Any]) -> list[RenderableType]:
    """The `plan_summary` for a terminal: a header, a table of lanes, and where the Gantt chart went."""
    mlp_note = " (MLP halves only)" if summary.get("recompute_scope") == "mlp" else ""
    header = (
        f"[bold]plan {summary['plan_id']}[/] strategy={summary['strategy']} cluster={summary['cluster']} "
        f"model={summary['model']}\n"
        f"P={summary['pipeline_stages']} layers={summary['layer_ranges']} lanes={summary['num_lanes']} "
        f"SP degrees={summary['sp_degrees']}\n"
        f"predicted {summary['iteration_s']:.3f} s "
        f"({summary['ratio_to_ideal']:.2f}x ideal {summary['ideal_s']:.3f} s), "
        f"bubbles {summary['bubble_fraction']:.1%}, comm {summary['comm_s']:.3f} s, "
        f"recompute {summary['recompute_s']:.3f} s{mlp_note}, grad sync {summary['grad_sync_s']:.3f} s, "
        f"peak {summary['peak_memory_gib']:.1f} GiB; solver {summary['solver']['backend']} "
        f"{summary['solver']['status']}"
    )
    table = Table()
    for column in (
        "lane", "SP", "ranks", "chunks", "tokens", "sliced seqs", "in flight", "recomputed layers", "predicted s",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for lane in summary["lanes"]:
        table.add_row(
            str(lane["lane"]),
            str(lane["sp_degree"]),
            f"{lane['ranks'][0]}-{lane['ranks'][1]}",
            str(lane["chunks"]),
            str(lane["tokens"]),
            str(lane["sliced_sequences"]),
            str(lane["max_in_flight"]),
            str(lane["recomputed_layers"]),
            f"{lane['predicted_s']:.3f}" if lane["predicted_s"] is not None else "-",
        )
    out: list[RenderableType] = [header, table]
    if "gantt" in summary:
        out.append(f"Gantt chart written to {summary['gantt']}")
    return out


def draw_plan_gantt(plan: Plan, cluster: ClusterSpec, model: ModelSpec, path: Path) -> Path:
    """Re-simulate `plan` on the batch it covers and draw its Gantt chart to `path` (PNG/SVG/PDF)."""
    from planner_service.plots.gantt import draw_gantt  # matplotlib only when a chart is asked for
    from planner_service.simulator import simulate

    cost = CostModel.from_specs(cluster, model, options=plan.options)
    return draw_gantt(plan, simulate(plan, batch_of_plan(plan), cost), path)
