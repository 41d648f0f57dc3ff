"""`helix train`: train a model on a corpus with a parallel plan per step (planner service or in-process).

Run directly, it checks the arguments, then starts a local torchrun with the cluster's device count (or
`--nproc-per-node`) that runs this same command once per rank. Under torchrun (several nodes:
`torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m executor.train ...`)
it runs as one rank. User mistakes (no such corpus, an empty one, a malformed planner URL, a missing
checkpoint) exit with code 2 and one line; nothing is started.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from executor.cli_launch import EXIT_USER_ERROR, launch_local_torchrun, under_torchrun, user_error
from executor.data.corpus import CorpusError, open_corpus
from executor.data.tokenizer import TokenizerError
from executor.train.checkpoint import CheckpointError, find_latest_checkpoint
from executor.train.config import LOCAL_PLANNER, ResumeMode, TrainConfig
from executor.train.summary import run_table
from proto import ModelSpec, PlanOptions, RecomputeScope, ZeroStage

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8


def register(app: typer.Typer) -> None:
    """Entry point of the `helix.commands` group: add `helix train` to the CLI."""
    app.command("train")(train_command)


def train_command(
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="Cluster preset (e.g. cpu-2x2) or YAML/JSON file.")],
    data: Annotated[Path, typer.Option("--data", help="Corpus: folder of text files, or .jsonl (text or input_ids).")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model preset, JSON file or HF config.json (default: --init's).")
    ] = None,
    planner: Annotated[str, typer.Option("--planner", help="'local', or the planner service URL.")] = LOCAL_PLANNER,
    strategy: Annotated[str, typer.Option("--strategy", "-s", help="Planning strategy.")] = "helix",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps.")] = 100,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", min=1, help="Sequences per batch.")] = None,
    token_budget: Annotated[
        int | None, typer.Option("--token-budget", min=2, help="Tokens per batch (instead of --batch-size).")
    ] = None,
    max_len: Annotated[int, typer.Option("--max-len", min=2, help="Split longer documents into windows.")] = 4096,
    seed: Annotated[int, typer.Option("--seed", help="Seed of weights and data order.")] = 0,
    stages: Annotated[int | None, typer.Option("--stages", min=1, help="Fix the pipeline degree P.")] = None,
    zero: Annotated[int, typer.Option("--zero", min=0, max=3, help="ZeRO stage 0-3 over each stage's devices.")] = 0,
    recompute_scope: Annotated[
        RecomputeScope,
        typer.Option("--recompute-scope", help="What a recomputed layer reruns: 'layer' (all), 'mlp' (its MLP half)."),
    ] = RecomputeScope.LAYER,
    init: Annotated[
        Path | None, typer.Option("--init", help="Start from a Hugging Face Llama checkpoint folder.")
    ] = None,
    time_limit: Annotated[float, typer.Option("--time-limit", min=0.01, help="Planner limit per step (s).")] = 2.0,
    solver: Annotated[str, typer.Option("--solver", help="cpsat, pulp-cbc or pulp-highs.")] = "cpsat",
    plan_deadline: Annotated[
        float | None, typer.Option("--plan-deadline", min=0.1, help="Wait this long for the service (s).")
    ] = None,
    profile: Annotated[
        Path | None, typer.Option("--profile", help="Cost profile (`helix profile` document or CostProfile JSON).")
    ] = None,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate/--no-calibrate",
            help="With --planner local: refine the cost profile from each step's measurement (a service run is "
            "calibrated by the service).",
        ),
    ] = True,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate.")] = 3e-3,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Warm-up steps.")] = 10,
    grad_clip: Annotated[float, typer.Option("--grad-clip", min=0.0, help="Global norm clip (0: off).")] = 1.0,
    dtype: Annotated[str, typer.Option("--dtype", help="float32, float64, or bfloat16 (CUDA autocast).")] = "float32",
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="A tokenizer.json to use.")] = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Tokenizer and token cache.")] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option("--checkpoint-dir", help="Where checkpoints go.")] = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=0, help="Save every K steps.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Resume from the latest checkpoint (must exist).")] = False,
    auto_resume: Annotated[
        bool, typer.Option("--auto-resume", help="Resume when a checkpoint exists (for torchrun restarts).")
    ] = False,
    metrics: Annotated[Path | None, typer.Option("--metrics", help="Per-step metrics (JSONL).")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="PNG of loss and step time at the end.")] = None,
    nproc_per_node: Annotated[
        int | None, typer.Option("--nproc-per-node", min=1, help="Local ranks (default: the cluster's devices).")
    ] = None,
    max_restarts: Annotated[
        int, typer.Option("--max-restarts", min=0, help="Restart all ranks after a failure (with --auto-resume).")
    ] = 0,
) -> None:
    """Train with a parallel layout planned for every step's batch.

    Example: helix train --cluster cpu-2x2 --model tiny --data corpus/ --planner http://127.0.0.1:8000
    --strategy helix --steps 6 --batch-size 8 --max-len 2048 --seed 1 --metrics run.jsonl
    """
    from planner_service.cost_model.profile_document import ProfileFileError, load_profile_for
    from planner_service.presets import resolve_cluster

    cluster_spec, model_spec = resolve_cluster(cluster), _model(model, init)
    try:
        measured = load_profile_for(profile, cluster_spec, model_spec) if profile is not None else None
    except ProfileFileError as exc:
        raise user_error(str(exc), param_hint="--profile") from None
    config = TrainConfig(
        cluster=cluster_spec,
        model=model_spec,
        init=init,
        data=data,
        tokenizer=tokenizer,
        cache_dir=cache_dir,
        max_len=max_len,
        batch_size=None if token_budget is not None else batch_size or DEFAULT_BATCH_SIZE,
        token_budget=token_budget,
        seed=seed,
        steps=steps,
        planner=_planner_url(planner),
        strategy=_strategy(strategy),
        solver=solver,
        time_limit_s=time_limit,
        options=PlanOptions(zero_stage=ZeroStage(zero), recompute_scope=recompute_scope),
        stages=stages,
        plan_deadline_s=plan_deadline,
        profile=measured,
        calibrate=calibrate,
        lr=lr,
        warmup_steps=warmup,
        grad_clip=grad_clip,
        dtype=_choice(dtype, ("float32", "float64", "bfloat16"), "--dtype"),  # type: ignore[arg-type]
        device=_choice(device, ("cpu", "cuda"), "--device"),  # type: ignore[arg-type]
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=_resume_mode(resume, auto_resume, checkpoint_dir),
        metrics=metrics,
        plot=plot,
    )
    if batch_size is not None and token_budget is not None:
        raise user_error("give --batch-size or --token-budget, not both", param_hint="--token-budget")
    if config.device == "cuda" and config.dtype == "float64":
        raise user_error("float64 is for CPU exactness checks; use bfloat16 or float32 on CUDA")
    try:
        open_corpus(config.data)  # cheap: lists the files; catches a missing or empty corpus before any launch
    except CorpusError as exc:
        raise user_error(str(exc), param_hint="--data") from None
    if config.resume == "must" and find_latest_checkpoint(config.checkpoint_dir) is None:  # type: ignore[arg-type]
        raise user_error(f"no complete checkpoint in {config.checkpoint_dir}", param_hint="--resume")
    if under_torchrun():
        raise typer.Exit(_run_rank(config))
    raise typer.Exit(_launch_local(config, nproc_per_node or config.cluster.num_devices, max_restarts))


def _run_rank(config: TrainConfig) -> int:
    import torch.distributed as dist

    from executor.train.trainer import init_distributed, run_training

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("executor.train").setLevel(logging.INFO)
    init_distributed(config)
    rank = dist.get_rank()
    try:
        summary = run_training(config)
    except (CorpusError, TokenizerError, CheckpointError) as exc:
        if rank == 0:
            Console(stderr=True).print(f"error: {exc}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if summary is not None:
        title = f"helix train: {config.model.name} on {config.cluster.name}"
        Console(width=80).print(run_table(summary.records, title=title, wall_s=summary.seconds))
    return 0


def _launch_local(config: TrainConfig, nproc: int, max_restarts: int) -> int:
    """torchrun on this machine, one process per local rank, each re-running this command as a rank (with
    `--auto-resume`, `--max-restarts` restarts continue from the latest checkpoint)."""
    return launch_local_torchrun(
        module="executor.train", command="train", nproc=nproc, max_restarts=max_restarts, activity="training"
    )


def _model(name: str | None, init: Path | None) -> ModelSpec:
    """--model, else the shape of the --init checkpoint; with both, they must agree."""
    from executor.interop.hf_llama import CheckpointFormatError, check_compatible, read_spec
    from planner_service.presets import resolve_model

    if name is None and init is None:
        raise user_error("give --model (or --init with a checkpoint's config.json)", param_hint="--model")
    try:
        checkpoint = read_spec(init, name=init.name) if init is not None else None
        spec = resolve_model(name) if name is not None else checkpoint
        if checkpoint is not None and spec is not None:
            check_compatible(spec, checkpoint, init)  # type: ignore[arg-type]
    except CheckpointFormatError as exc:
        raise user_error(str(exc), param_hint="--init") from None
    assert spec is not None
    return spec


def _planner_url(value: str) -> str:
    if value == LOCAL_PLANNER:
        return value
    import httpx

    try:
        url = httpx.URL(value)
    except Exception:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise user_error(
            f"{value!r} is not a planner URL: give 'local' or http(s)://HOST[:PORT]", param_hint="--planner"
        )
    return value.rstrip("/")


def _strategy(name: str) -> str:
    from planner_service.strategies.registry import STRATEGIES

    if name not in STRATEGIES:
        choices = ", ".join(STRATEGIES)
        raise user_error(f"unknown strategy {name!r}; choose one of: {choices}", param_hint="--strategy")
    return name


def _choice(value: str, allowed: tuple[str, ...], hint: str) -> str:
    if value not in allowed:
        raise user_error(f"{value!r}; choose one of {', '.join(allowed)}", param_hint=hint)
    return value


def _resume_mode(resume: bool, auto_resume: bool, checkpoint_dir: Path | None) -> ResumeMode:
    if (resume or auto_resume) and checkpoint_dir is None:
        raise user_error("resuming needs --checkpoint-dir", param_hint="--resume")
    if resume and auto_resume:
        raise user_error("give --resume or --auto-resume, not both", param_hint="--resume")
    return "must" if resume else "auto" if auto_resume else "never"
