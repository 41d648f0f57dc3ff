"""`helix profile`: measure the cluster's devices for a model and write the fitted cost profile.

Run directly, it checks the arguments, looks in the cache (one document per cluster, model, software and settings)
and, unless one is there (or `--refresh`), starts a local torchrun with the cluster's device count (or
`--nproc-per-node`) that runs this same command once per rank. On several nodes run it under torchrun yourself:
`torchrun --nnodes 2 --nproc-per-node 8 ... -m executor.profile --cluster c.yaml --model llama2-7b --device cuda`.
The document (`--out`, and the cache) is what `--profile FILE` takes on `helix plan`, `compare`, `serve` and `train`,
and its `profile` is the body of `PUT /v1/jobs/{id}/profile`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from executor.cli_launch import EXIT_USER_ERROR, launch_local_torchrun, under_torchrun, user_error
from executor.profile.grid import GRIDS, ProfileSettings
from executor.profile.profile_run import ProfileTarget, cache_file, cached_document, init_rank, run_profile_rank

if TYPE_CHECKING:
    from planner_service.cost_model.profile_document import ProfileDocument

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Entry point of the `helix.commands` group: add `helix profile` to the CLI."""
    app.command("profile")(profile_command)


def profile_command(
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="Cluster preset (e.g. cpu-2x2) or YAML/JSON file.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model preset, JSON file or HF config.json.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the profile document here.")] = None,
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="Profile cache (default: $HELIX_PROFILE_CACHE or ~/.cache).")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the cache.")] = False,
    refresh: Annotated[bool, typer.Option("--refresh", help="Measure even when the cache has a profile.")] = False,
    grid: Annotated[str | None, typer.Option("--grid", help="tiny, cpu or gpu (default: by --device).")] = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed calls before each measurement.")] = 1,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed calls per measurement.")] = 3,
    statistic: Annotated[
        str, typer.Option("--statistic", help="median, or min on a machine shared with other work.")
    ] = "median",
    dtype: Annotated[str, typer.Option("--dtype", help="float32, float64, or bfloat16 (autocast).")] = "float32",
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    attention_backend: Annotated[
        str, typer.Option("--attention-backend", help="auto, sdpa, flash or torch_varlen.")
    ] = "auto",
    pin_cores: Annotated[
        bool, typer.Option("--pin-cores", help="Pin ranks to cores, contiguous ranks together (CPU).")
    ] = False,
    nproc_per_node: Annotated[
        int | None, typer.Option("--nproc-per-node", min=1, help="Local ranks (default: the cluster's devices).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the fits and efficiency as one JSON object.")] = False,
) -> None:
    """Measure one transformer layer, the LM head and the collectives on the cluster's devices and fit the profile.

    Example: helix profile --cluster cpu-2x2 --model tiny --out profile.json; then
    helix plan --cluster cpu-2x2 --model tiny --profile profile.json ...
    """
    from planner_service.cost_model.profile_document import default_cache_dir
    from planner_service.presets import PresetError, resolve_cluster, resolve_model

    try:
        cluster_spec, model_spec = resolve_cluster(cluster), resolve_model(model)
    except (PresetError, ValueError, OSError) as exc:
        raise user_error(str(exc)) from None
    if device not in ("cpu", "cuda"):
        raise user_error(f"{device!r}; choose cpu or cuda", param_hint="--device")
    if dtype not in ("float32", "float64", "bfloat16"):
        raise user_error(f"{dtype!r}; choose float32, float64 or bfloat16", param_hint="--dtype")
    grid_name = grid or ("gpu" if device == "cuda" else "cpu")
    if grid_name not in GRIDS:
        raise user_error(f"{grid_name!r}; choose one of {', '.join(GRIDS)}", param_hint="--grid")
    if statistic not in ("median", "min"):
        raise user_error(f"{statistic!r}; choose median or min", param_hint="--statistic")
    if no_cache and out is None:
        raise user_error("with --no-cache, give --out FILE (the profile would be written nowhere)", param_hint="--out")
    settings = ProfileSettings(
        grid=GRIDS[grid_name],
        grid_name=grid_name,
        warmup=warmup,
        repeats=repeats,
        statistic=statistic,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
        device=device,  # type: ignore[arg-type]
        attention_backend=attention_backend,
        pin_cores=pin_cores,
    )
    target = ProfileTarget(
        cluster=cluster_spec,
        model=model_spec,
        settings=settings,
        out=out,
        cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
    )
    if under_torchrun():
        raise typer.Exit(_run_rank(target))
    doc = None if refresh else cached_document(target)
    cached = doc is not None
    if doc is None:
        code = launch_local_torchrun(
            module="executor.profile",
            command="profile",
            nproc=nproc_per_node or cluster_spec.num_devices,
            activity="profiling",
        )
        if code != 0:
            raise typer.Exit(code)
        doc = _written(target)
    elif out is not None:
        from planner_service.cost_model.profile_document import write_document

        write_document(out, doc)
    where = out or cache_file(target)
    if as_json:
        sys.stdout.write(json.dumps(summary_json(doc, where, cached=cached)) + "\n")
    else:
        Console(width=120).print(summary_table(doc, where, cached=cached))


def _run_rank(target: ProfileTarget) -> int:
    import torch.distributed as dist

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    init_rank(target.settings.device)
    try:
        if dist.get_world_size() != target.cluster.num_devices:
            if dist.get_rank() == 0:
                Console(stderr=True).print(
                    f"error: --cluster {target.cluster.name} has {target.cluster.num_devices} devices but "
                    f"{dist.get_world_size()} ranks were started",
                    highlight=False,
                )
            return EXIT_USER_ERROR
        run_profile_rank(target)
    finally:
        dist.destroy_process_group()
    return 0


def _written(target: ProfileTarget) -> ProfileDocument:
    from planner_service.cost_model.profile_document import read_profile_file

    path = target.out or cache_file(target)
    assert path is not None, "a profile run writes to --out or the cache"
    _, doc = read_profile_file(path)
    assert doc is not None, f"{path} is not a profile document"
    return doc


def summary_json(doc: ProfileDocument, where: Path | None, *, cached: bool) -> dict[str, object]:
    return {
        "path": str(where) if where else None,
        "cached": cached,
        "profile": doc.profile.model_dump(mode="json"),
        "fits": [f.model_dump(mode="json") for f in doc.fits],
        "efficiency": doc.efficiency.model_dump(mode="json"),
        "cores": doc.measurements.cores,
        "notes": doc.measurements.notes,
    }


def summary_table(doc: ProfileDocument, where: Path | None, *, cached: bool) -> Table:
    """Each fit's error, the measured efficiency, and where the document is."""
    m, e = doc.measurements, doc.efficiency
    table = Table(title=f"helix profile: {doc.model.name} on {doc.cluster.name} ({m.device}, {m.backend})")
    for column in ("fit", "rows", "rms rel. error", "max rel. error", "coefficients / note"):
        table.add_column(column)
    for fit in doc.fits:
        coefficients = ", ".join(f"{k}={v:.4g}" for k, v in fit.coefficients.items())
        table.add_row(
            fit.name,
            str(fit.rows),
            _pct(fit.rms_relative_error),
            _pct(fit.max_relative_error),
            "; ".join(x for x in (coefficients, fit.note) if x),
        )
    lines = [
        f"GEMM: {_flops(e.gemm_flops_per_s)} = {_pct(e.gemm_efficiency)} of peak {_flops(e.peak_flops)} "
        f"({e.peak_source})",
        f"attention (forward, causal FLOPs): {_flops(e.attention_flops_per_s)} = {_pct(e.attention_efficiency)} of "
        "that peak",
    ]
    if e.measured_gemm_peak_flops:
        lines.append(
            f"a square GEMM reaches {_flops(e.measured_gemm_peak_flops)} here; the layer's GEMMs "
            f"{_pct(e.gemm_fraction_of_measured_peak)} of it"
        )
    if m.cores:
        lines.append(f"cores: {m.cores}")
    lines += [f"note: {n}" for n in m.notes]
    lines.append(f"profile document: {where}" + (" (from the cache; --refresh measures again)" if cached else ""))
    table.caption = "\n".join(lines)
    return table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _flops(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e9:.3g} GFLOP/s"
