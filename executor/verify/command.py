"""`helix verify`: train K steps across gloo CPU ranks and check against the single-process reference.

Loaded by `planner_service.cli` from the `helix.commands` entry-point group (the CLI never imports the
executor). Each step draws a new batch (seed + step), plans it with the in-process planner, runs it on
`cluster.num_devices` spawned ranks, and compares the step's loss and every parameter gradient (before
the optimizer step), and the parameters after the last step, with `ReferenceTrainer` on the same batches.
Exit code 0 only when every relative error is within tolerance.

Each step also reports every rank's measured peak activation memory next to the planner's memory model
for that rank (`memory_prediction`, profile with this executor's coefficients at the run dtype).
`--stages P` forces the pipeline degree (the planner otherwise picks it, often P = 1 on tiny CPU clusters).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from executor.verify.equivalence import DTYPES, CaseReport, EquivalenceCase, StepInput, run_and_compare
from proto.batch import Batch
from proto.cluster import ClusterSpec
from proto.model import ModelSpec
from proto.plan import Plan, PlanOptions, RecomputeScope, ZeroStage
from proto.validation import PlanValidationError, validate_plan

log = logging.getLogger(__name__)

MAX_LOCAL_RANKS = 16
"""verify starts one CPU process per device; more than this on one machine is a mistake, not a test."""


def register(app: typer.Typer) -> None:
    """Entry point of the `helix.commands` group: add `helix verify` to the CLI."""
    app.command("verify")(verify_command)


def token_seed_of(seed: int, step: int) -> int:
    """Seed of the synthetic token ids of a step (distinct from the weight seed and the batch seed)."""
    return seed * 1_000_003 + step + 1


def verify_command(
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="Cluster preset (e.g. cpu-2x2) or YAML/JSON file.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model preset (e.g. tiny) or JSON file.")],
    strategy: Annotated[str, typer.Option("--strategy", "-s", help="Planning strategy.")] = "static",
    lengths: Annotated[Path | None, typer.Option("--lengths", help="Lengths file to sample batches from.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Dataset name to sample batches from.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Sequences per global batch.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of batches (seed + step), weights and tokens.")] = 0,
    max_len: Annotated[int | None, typer.Option("--max-len", help="Truncate sequences to this many tokens.")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Training steps to run and compare.", min=1)] = 1,
    dtype: Annotated[str, typer.Option("--dtype", help="float64 (tolerance 1e-9) or float32 (1e-3).")] = "float64",
    zero: Annotated[
        int,
        typer.Option(
            "--zero",
            help="ZeRO stage per stage block: 0 replicated, 1 AdamW state sharded, 2 + gradients, 3 + parameters.",
        ),
    ] = 0,
    recompute_scope: Annotated[
        RecomputeScope,
        typer.Option("--recompute-scope", help="What a recomputed layer reruns: 'layer' (all), 'mlp' (its MLP half)."),
    ] = RecomputeScope.LAYER,
    plan_file: Annotated[
        Path | None, typer.Option("--plan-file", help="Verify this plan (for the --seed batch, every step).")
    ] = None,
    tolerance: Annotated[float | None, typer.Option("--tolerance", help="Override the dtype's tolerance.")] = None,
    time_limit: Annotated[float, typer.Option("--time-limit", help="Planner time limit per step (s).")] = 2.0,
    stages: Annotated[
        int | None, typer.Option("--stages", help="Pipeline degree P for the planner (default: its choice).", min=1)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
) -> None:
    """Check that executing plans across ranks reproduces single-device training exactly.

    Example: helix verify --cluster cpu-2x4 --model tiny --strategy static --dataset github --batch-size 32
    --max-len 2048 --seed 3 --steps 3 --json
    """
    # planner imports stay inside the command: the executor package must import without the planner
    from planner_service.presets import resolve_cluster, resolve_model

    if dtype not in DTYPES:
        raise typer.BadParameter(f"{dtype!r}; choose one of {', '.join(DTYPES)}", param_hint="--dtype")
    if zero not in (0, 1, 2, 3):
        raise typer.BadParameter(f"ZeRO stage {zero} does not exist: choose 0, 1, 2 or 3", param_hint="--zero")
    cluster_spec, model_spec = resolve_cluster(cluster), resolve_model(model)
    if cluster_spec.num_devices > MAX_LOCAL_RANKS:
        raise typer.BadParameter(
            f"cluster {cluster_spec.name} has {cluster_spec.num_devices} devices; verify starts one CPU process per "
            f"device on this machine (at most {MAX_LOCAL_RANKS}): use a cpu-* preset",
            param_hint="--cluster",
        )
    planned_at = time.perf_counter()
    inputs = _step_inputs(
        cluster=cluster_spec,
        model=model_spec,
        strategy=strategy,
        lengths=lengths,
        dataset=dataset,
        batch_size=batch_size,
        seed=seed,
        max_len=max_len,
        steps=steps,
        zero=zero,
        plan_file=plan_file,
        time_limit=time_limit,
        stages=stages,
        recompute_scope=recompute_scope,
    )
    log.info("planned %d steps in %.2f s", steps, time.perf_counter() - planned_at)
    case = EquivalenceCase(
        name=f"verify-{strategy}",
        cluster=cluster_spec,
        model=model_spec,
        steps=tuple(inputs),
        seed=seed,
        dtype=dtype,
        zero_stage=zero,
    )
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="helix-verify-") as out_dir:
        try:
            (report,) = run_and_compare(
                [case], world_size=cluster_spec.num_devices, out_dir=out_dir, tolerance=tolerance
            )
        except RuntimeError as err:  # a plan refused by the ranks
            Console(stderr=True).print(f"error: {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=1) from err
    seconds = time.perf_counter() - began
    memory = memory_rows(case, report)
    if as_json:
        typer.echo(json.dumps(report_json(report, memory)))
    else:
        _print_table(report, memory, cluster_spec, model_spec, strategy, seconds)
    if not report.ok:
        raise typer.Exit(code=1)


@dataclass(frozen=True)
class StepMemory:
    """Per rank (index = rank): measured peak activation bytes and the planner model's held peak."""

    pipeline: tuple[tuple[int, int], ...]
    measured: tuple[int, ...]
    predicted: tuple[float, ...]

    @property
    def max_ratio(self) -> float:
        return max((m / p for m, p in zip(self.measured, self.predicted, strict=True) if p > 0), default=0.0)


def memory_rows(case: EquivalenceCase, report: CaseReport) -> list[StepMemory]:
    from executor.verify.memory_prediction import memory_profile, predict_activation_memory

    profile = memory_profile(case.cluster, case.model, DTYPES[case.dtype], "executor")
    rows = []
    for step, result in zip(case.steps, report.steps, strict=True):
        predicted = predict_activation_memory(step.plan, step.batch, case.cluster, case.model, profile)
        rows.append(
            StepMemory(
                pipeline=tuple(step.plan.pipeline.layer_ranges),
                measured=result.peak_activation_bytes,
                predicted=tuple(predicted[r].held_peak_bytes for r in range(len(result.peak_activation_bytes))),
            )
        )
    return rows


def report_json(report: CaseReport, memory: list[StepMemory] | None = None) -> dict[str, object]:
    steps = []
    for k, s in enumerate(report.steps):
        row: dict[str, object] = {
            "step": s.step,
            "loss": s.loss,
            "ref_loss": s.ref_loss,
            "max_rel_grad_err": s.max_rel_grad_err,
        }
        if memory is not None:
            row["num_stages"] = len(memory[k].pipeline)
            row["peak_activation_bytes"] = list(memory[k].measured)
            row["predicted_activation_bytes"] = [round(p) for p in memory[k].predicted]
        steps.append(row)
    return {
        "steps": steps,
        "max_rel_param_err": report.max_rel_param_err,
        "tolerance": report.tolerance,
        "ok": report.ok,
    }


def _step_inputs(
    *,
    cluster: ClusterSpec,
    model: ModelSpec,
    strategy: str,
    lengths: Path | None,
    dataset: str | None,
    batch_size: int,
    seed: int,
    max_len: int | None,
    steps: int,
    zero: int,
    plan_file: Path | None,
    time_limit: float,
    stages: int | None = None,
    recompute_scope: RecomputeScope = RecomputeScope.LAYER,
) -> list[StepInput]:
    from planner_service.pipeline_degree import choose_pipeline_degree
    from planner_service.planner import make_plan
    from planner_service.workloads import load_workload

    def batch_for(batch_seed: int) -> Batch:
        return load_workload(
            lengths_path=str(lengths) if lengths else None,
            dataset=dataset,
            batch_size=batch_size,
            seed=batch_seed,
            max_len=max_len,
        )

    if plan_file is not None:
        plan = Plan.model_validate_json(plan_file.read_text())
        batch = batch_for(seed)
        try:
            validate_plan(plan, batch, cluster, model)
        except PlanValidationError as err:
            raise typer.BadParameter(
                f"{plan_file} does not fit this workload (--cluster/--model/--lengths/--dataset/--batch-size/--seed/"
                f"--max-len must be those the plan was made for): {err}",
                param_hint="--plan-file",
            ) from err
        return [StepInput(batch=batch, plan=plan, token_seed=token_seed_of(seed, k)) for k in range(steps)]
    options = PlanOptions(zero_stage=ZeroStage(zero), max_zero_stage=ZeroStage(zero), recompute_scope=recompute_scope)

    def plan_at(batch: Batch, num_stages: int | None, step: int = 0) -> Plan:
        return make_plan(
            batch=batch,
            cluster=cluster,
            model=model,
            strategy=strategy,
            options=options,
            time_limit_s=time_limit,
            num_stages=num_stages,
            step=step,
        )

    batches = [batch_for(seed + k) for k in range(steps)]
    # P is a job-level decision (changing it would move weights): chosen once, from the first batch, exactly
    # as the service and `helix train` choose it, and then every step is planned at that P.
    job_stages = choose_pipeline_degree(
        cluster=cluster, model=model, strategy=strategy, plan_at=plan_at, sample_lengths=batches[0].lengths,
        num_stages=stages,
    ).num_stages  # fmt: skip
    return [
        StepInput(batch=batch, plan=plan_at(batch, job_stages, k), token_seed=token_seed_of(seed, k))
        for k, batch in enumerate(batches)
    ]


def _print_table(
    report: CaseReport,
    memory: list[StepMemory],
    cluster: ClusterSpec,
    model: ModelSpec,
    strategy: str,
    seconds: float,
) -> None:
    where = f"{cluster.name} ({cluster.num_devices} ranks)"
    table = Table(title=f"helix verify: {strategy} on {where}, model {model.name}, {seconds:.1f} s")
    columns = ("step", "P", "loss", "reference loss", "max rel grad err", "max act MiB", "measured/predicted")
    for column in columns:
        table.add_column(column, justify="right")
    for s, m in zip(report.steps, memory, strict=True):
        table.add_row(
            str(s.step),
            str(len(m.pipeline)),
            f"{s.loss:.12g}",
            f"{s.ref_loss:.12g}",
            f"{s.max_rel_grad_err:.3e}",
            f"{max(m.measured, default=0) / 2**20:.2f}",
            f"<= {m.max_ratio:.3f}",
        )
    console = Console()
    console.print(table)
    verdict = "[green]OK[/]" if report.ok else "[red]FAILED[/]"
    console.print(
        f"max rel param err after {len(report.steps)} AdamW steps: {report.max_rel_param_err:.3e}; "
        f"tolerance {report.tolerance:.0e}: {verdict}"
    )
