"""`helix`: offline planning, strategy comparison and plan inspection.

Commands from other installed packages (e.g. `helix verify` from the executor) are loaded from
the `helix.commands` entry-point group, so this module never imports the executor.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import click
import typer
import typer.exceptions
from pydantic import ValidationError
from rich.console import Console

from planner_service.cost_model.profile_document import load_profile_for, read_profile_file
from planner_service.errors import PlanningError
from planner_service.planner import make_plan
from planner_service.presets import PresetError, list_clusters, list_models, resolve_cluster, resolve_model
from planner_service.report import (
    compare_results,
    draw_plan_gantt,
    load_named_workload,
    plan_summary,
    render_comparison,
    render_summary,
)
from planner_service.store import StoreError
from planner_service.store.commands import register as register_store_commands
from planner_service.strategies.registry import STRATEGIES
from planner_service.workloads import WorkloadError
from proto import ClusterSpec, ModelSpec, Plan, PlanOptions, RecomputeScope, ZeroStage

USER_ERRORS = (
    PlanningError,
    PresetError,
    WorkloadError,
    ValidationError,
    FileNotFoundError,
    json.JSONDecodeError,
    StoreError,
)
USAGE_ERRORS = (typer.exceptions.TyperException, click.exceptions.ClickException)
"""Typer (>= 0.29, bounded in pyproject) raises its own vendored click exceptions, all `TyperException`s; plain
click ones are caught too in case a plugin command raises them."""
EXIT_USER_ERROR = 2

app = typer.Typer(
    name="helix",
    help=(
        "HelixTrain: per-iteration 3D parallel plans (flexible SP x elastic PP x DP) for long-context training.\n\n"
        "Examples:\n\n"
        "  helix plan --cluster a100-40g-8x8 --model gpt-7b --dataset github --batch-size 512 --out plan.json\n\n"
        "  helix compare --cluster a800-80g-4x8 --model llama2-7b --lengths lengths.txt --batch-size 512 --json\n\n"
        "  helix inspect plan.json --gantt plan.png\n\n"
        "  helix serve --port 8000 --db plans.db\n\n"
        "  helix presets"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)
out_console = Console()


class UserError(Exception):
    """Raised by commands for a bad argument; printed as one line, exit code 2."""


ClusterOpt = Annotated[str, typer.Option("--cluster", "-c", help="Cluster preset name or a YAML/JSON file.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model preset name or a HF config.json / JSON file.")]
LengthsOpt = Annotated[
    Path | None, typer.Option("--lengths", help="File with one sequence length per line to sample from.")
]
DatasetOpt = Annotated[
    str | None, typer.Option("--dataset", help="Synthetic corpus: github, commoncrawl, wikipedia; or stdlib.")
]
INT64_MAX = 2**63 - 1
"""Lengths, seeds and sizes are 64-bit integers in the sampler (numpy): larger values are usage errors."""
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", "-b", help="Sequences in the global batch.", min=1, max=INT64_MAX)
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Sampling seed.", min=0, max=INT64_MAX)]
MaxLenOpt = Annotated[
    int | None, typer.Option("--max-len", help="Truncate sequences to this many tokens.", min=1, max=INT64_MAX)
]
ZeroOpt = Annotated[int, typer.Option("--zero", help="ZeRO stage 0-3: shard optimizer/grads/params per stage.")]
RecomputeScopeOpt = Annotated[
    RecomputeScope,
    typer.Option(
        "--recompute-scope",
        help="What a recomputed layer reruns: 'layer' (all of it) or 'mlp' (its MLP half; keeps attention's "
        "activations, no attention or all-to-all rerun: cheaper on long sequences, frees about half the bytes).",
    ),
]
StagesOpt = Annotated[int | None, typer.Option("--stages", help="Fix the pipeline degree P (default: search).")]
MAX_TIME_LIMIT_S = 600.0
"""The longest planning call the CLI accepts (the wire contract's `PlanRequest.time_limit_s` cap)."""


def positive_time_limit(value: float) -> float:
    """`--time-limit` must be a positive number of seconds, at most `MAX_TIME_LIMIT_S`."""
    if not 0 < value <= MAX_TIME_LIMIT_S:
        raise typer.BadParameter(f"must be > 0 and <= {MAX_TIME_LIMIT_S:g} seconds, got {value:g}")
    return value


TimeLimitOpt = Annotated[
    float,
    typer.Option(
        "--time-limit", help="Bound on one planning call's wall time, in seconds.", callback=positive_time_limit
    ),
]
SolverOpt = Annotated[str, typer.Option("--solver", help="Solver backend: cpsat, pulp-cbc, pulp-highs.")]
ProfileOpt = Annotated[
    Path | None,
    typer.Option("--profile", help="Cost profile: a `helix profile` document or a CostProfile JSON (default: preset)."),
]


@app.command("plan")
def plan_command(
    cluster: ClusterOpt,
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the plan JSON.")],
    lengths: LengthsOpt = None,
    dataset: DatasetOpt = None,
    batch_size: BatchSizeOpt = 512,
    seed: SeedOpt = 0,
    max_len: MaxLenOpt = None,
    strategy: Annotated[str, typer.Option("--strategy", "-s", help="Planning strategy.")] = "static",
    zero: ZeroOpt = 0,
    recompute_scope: RecomputeScopeOpt = RecomputeScope.LAYER,
    stages: StagesOpt = None,
    time_limit: TimeLimitOpt = 2.0,
    solver: SolverOpt = "cpsat",
    profile: ProfileOpt = None,
) -> None:
    """Plan one global batch and write the plan as JSON.

    Example: helix plan --cluster a100-40g-8x8 --model gpt-7b --dataset github --batch-size 512 --out plan.json
    """
    work = load_named_workload(cluster, model, lengths, dataset, batch_size, seed, max_len)
    started = time.perf_counter()
    plan = make_plan(
        batch=work.batch,
        cluster=work.cluster,
        model=work.model,
        strategy=strategy,
        options=PlanOptions(zero_stage=ZeroStage(zero), recompute_scope=recompute_scope),
        profile=load_profile_for(profile, work.cluster, work.model) if profile else None,
        time_limit_s=time_limit,
        solver=solver,
        num_stages=stages,
    )
    elapsed = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(plan.model_dump_json(indent=1))
    p = plan.predicted
    err_console.print(
        f"[bold]{strategy}[/]: {p.iteration_s:.3f} s/iteration ({p.iteration_s / p.ideal_s:.2f}x ideal), "
        f"peak {max(p.peak_memory_bytes) / 2**30:.1f} GiB, {len(plan.lanes)} lanes, P={plan.pipeline.num_stages}, "
        f"planned in {elapsed:.2f} s -> {out}"
    )


@app.command("compare")
def compare_command(
    cluster: ClusterOpt,
    model: ModelOpt,
    lengths: LengthsOpt = None,
    dataset: DatasetOpt = None,
    batch_size: BatchSizeOpt = 512,
    seed: SeedOpt = 0,
    max_len: MaxLenOpt = None,
    strategies: Annotated[str, typer.Option("--strategies", help="Comma-separated strategies.")] = ",".join(STRATEGIES),
    zero: ZeroOpt = 0,
    recompute_scope: RecomputeScopeOpt = RecomputeScope.LAYER,
    time_limit: TimeLimitOpt = 2.0,
    solver: SolverOpt = "cpsat",
    profile: ProfileOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object.")] = False,
) -> None:
    """Plan the same batch with several strategies and compare predicted iteration time and memory.

    Example: helix compare --cluster a100-40g-8x8 --model gpt-7b --dataset wikipedia --batch-size 512 --json
    """
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise UserError(f"--strategies: unknown {unknown or 'empty list'}; choose from {', '.join(STRATEGIES)}")
    work = load_named_workload(cluster, model, lengths, dataset, batch_size, seed, max_len)
    measured = load_profile_for(profile, work.cluster, work.model) if profile else None
    report, _ = compare_results(
        work, names, time_limit, solver, zero, profile=measured, recompute_scope=recompute_scope
    )
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        out_console.print(render_comparison(report))


def resolve_plan_specs(plan: Plan, cluster: str | None, model: str | None) -> tuple[ClusterSpec, ModelSpec]:
    """The specs a stored plan was made for: from options, else from the preset names it records."""
    from proto.fingerprint import fingerprint

    cluster_spec = resolve_cluster(cluster or plan.cluster_name)
    model_spec = resolve_model(model or plan.model_name)
    if fingerprint(cluster_spec) != plan.cluster_fingerprint:
        raise UserError(f"--cluster: {cluster_spec.name} is not the cluster this plan was made for")
    if fingerprint(model_spec) != plan.model_fingerprint:
        raise UserError(f"--model: {model_spec.name} is not the model this plan was made for")
    return cluster_spec, model_spec


@app.command("inspect")
def inspect_command(
    plan_file: Annotated[
        Path | None, typer.Argument(help="A plan JSON written by `helix plan` (or use --server/--job/--step).")
    ] = None,
    server: Annotated[str | None, typer.Option("--server", help="Planner service URL to fetch the plan from.")] = None,
    job: Annotated[str | None, typer.Option("--job", help="Job id on --server.")] = None,
    step: Annotated[int | None, typer.Option("--step", help="Step number on --server.")] = None,
    gantt: Annotated[Path | None, typer.Option("--gantt", help="Write a Gantt chart (PNG/SVG/PDF).")] = None,
    cluster: Annotated[str | None, typer.Option("--cluster", help="Cluster, when not a preset.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model, when not a preset.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """Summarise a plan (lanes, SP degrees, chunks, recompute, predictions) and draw its Gantt chart.

    Examples: helix inspect plan.json --gantt plan.png;
    helix inspect --server http://127.0.0.1:8000 --job J --step 3 (token from HELIX_API_TOKEN)
    """
    remote = (server, job, step)
    if plan_file is not None and any(x is not None for x in remote):
        raise UserError("give either a plan file or --server/--job/--step, not both")
    if plan_file is None:
        if any(x is None for x in remote):
            raise UserError("give a plan file, or all of --server URL --job ID --step N to fetch a stored plan")
        assert server is not None and job is not None and step is not None
        plan = _fetch_plan(server, job, step)
    else:
        try:
            plan = Plan.model_validate_json(plan_file.read_text())
        except OSError as exc:
            raise UserError(f"{plan_file}: cannot read ({exc.strerror})") from None
        except ValidationError as exc:
            raise UserError(f"{plan_file}: not a plan ({_first_error(exc)})") from None
    summary = plan_summary(plan)
    if gantt is not None:
        cluster_spec, model_spec = resolve_plan_specs(plan, cluster, model)
        draw_plan_gantt(plan, cluster_spec, model_spec, gantt)
        summary["gantt"] = str(gantt)
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    for part in render_summary(summary):
        out_console.print(part)


def _fetch_plan(server: str, job: str, step: int) -> Plan:
    """A stored plan from the planner service (`GET /v1/jobs/{job}/plans/{step}`)."""
    import os

    from planner_service.client import PlannerApiError, PlannerClient

    with PlannerClient(server, token=os.environ.get("HELIX_API_TOKEN") or None, retries=1, timeout=30.0) as client:
        try:
            return client.get_plan(job, step)
        except PlannerApiError as exc:
            raise UserError(f"--server {server}: {exc}") from None


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve anywhere


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option("--host", help="Address to bind (non-loopback needs HELIX_API_TOKEN).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="TCP port.", min=0, max=65535)] = 8000,
    db: Annotated[
        str | None, typer.Option("--db", help="SQLite file or postgresql:// URL (default: HELIX_DB).")
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option(
            "--profile",
            help="Cost profile for jobs that bring none (default: HELIX_PROFILE); a `helix profile` document "
            "applies to its own cluster and model only.",
        ),
    ] = None,
) -> None:
    """Run the planner service (REST API, plan store, Prometheus /metrics) under uvicorn.

    Settings come from HELIX_* environment variables (HELIX_API_TOKEN, HELIX_DB, HELIX_SOLVER_TIME_LIMIT_S,
    HELIX_DEADLINE_MARGIN_S, HELIX_MAX_CONCURRENT_SOLVES, HELIX_MAX_QUEUED_SOLVES, ...; see the README).

    Example: HELIX_API_TOKEN=$(openssl rand -hex 24) helix serve --host 0.0.0.0 --port 8000 --db plans.db
    """
    try:
        from planner_service.api.settings import Settings
    except ImportError as exc:  # the service extra is not installed
        raise UserError(f"helix serve needs the service extra: pip install 'helixtrain[service]' ({exc})") from None
    overrides = {key: value for key, value in (("db", db), ("profile", profile)) if value is not None}
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise UserError(f"settings: {_first_error(exc)}") from None
    if settings.profile is not None:
        read_profile_file(settings.profile)  # a bad file is a one-line error now, not a failed startup
    if settings.token is None and not _is_loopback(host):
        raise UserError(f"--host {host} is not a loopback address; set HELIX_API_TOKEN to serve it with auth")
    import uvicorn

    from planner_service.api.app import create_app, open_store
    from planner_service.api.server import uvicorn_config

    open_store(settings).close()  # a damaged store is refused here, in one line, before uvicorn starts
    uvicorn.Server(uvicorn_config(create_app(settings), settings, host=host, port=port, log_level="info")).run()


@app.command("presets")
def presets_command() -> None:
    """List the cluster and model presets."""
    out_console.print("clusters: " + ", ".join(list_clusters()))
    out_console.print("models:   " + ", ".join(list_models()))


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(x) for x in err.get("loc", ())) or "input"
    return f"{where}: {err.get('msg', 'invalid')}"


def _load_plugins() -> None:
    if not any(group.name == "store" for group in app.registered_groups):
        register_store_commands(app)
    for ep in entry_points(group="helix.commands"):
        try:
            ep.load()(app)
        except ImportError as exc:  # an optional extra (e.g. torch) is missing
            logging.getLogger(__name__).debug("helix command %s unavailable: %s", ep.name, exc)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _load_plugins()
    try:
        result = app(args=argv, standalone_mode=False)
    except USAGE_ERRORS as exc:  # typer's vendored click (and click itself): one line, its exit code (2)
        show_help = getattr(exc, "show", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and show_help is not None:  # `helix` alone: the help
            show_help()
        else:
            err_console.print(f"error: {exc.format_message()}", highlight=False, soft_wrap=True, markup=False)
        return int(getattr(exc, "exit_code", EXIT_USER_ERROR))
    except (typer.exceptions.Abort, click.exceptions.Abort):
        return 130
    except ValidationError as exc:
        err_console.print(f"error: {_first_error(exc)}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    except (UserError, *USER_ERRORS) as exc:
        field = getattr(exc, "field", None)
        prefix = f"{field}: " if field and field not in str(exc) else ""
        err_console.print(f"error: {prefix}{exc}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
