"""The training loop of one rank: data, a plan per step, the plan executor, optimizer, metrics, checkpoints.

Per step t, on every rank (rank 0 coordinates):
1. every rank draws the same global batch from the sampler (same store, seed and position: nothing is sent);
2. rank 0 takes step t's plan from its source (prefetched during step t-1) and immediately asks for step
   t+1's, then broadcasts the plan's JSON; every rank validates it before any other collective;
3. the plan executor runs the rank's chunks (tokens read from the corpus store by seq_id and offset) and
   sums the stage's gradients; the global gradient norm is clipped; AdamW and the LR schedule step;
4. rank 0 gathers the step's time and per-rank peak memory, writes the metrics line, prints progress and
   posts feedback to the service (in the background); every K steps all ranks checkpoint.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist

from executor.data.batches import BatchSampler, DataPosition, GlobalBatch
from executor.data.dataset import Dataset, prepare_dataset
from executor.parallel.data import AdamWConfig
from executor.parallel.groups import create_process_groups
from executor.parallel.pipeline.shards import TokenSource
from executor.runner import ExecutorConfig, PlanExecutor
from executor.train.checkpoint import (
    CheckpointError,
    TrainState,
    find_latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from executor.train.config import TrainConfig
from executor.train.job_start import JobStart, start_job
from executor.train.lr_schedule import WarmupCosine
from executor.train.progress import ProgressPrinter
from executor.train.run_metrics import MetricsWriter, StepRecord, plot_run, read_metrics
from proto import CostProfile, Feedback, Plan

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.float32}
"""Parameter dtype per `--dtype`; bfloat16 keeps float32 weights and runs bf16 autocast (CUDA)."""


@dataclass(frozen=True)
class RunSummary:
    """What rank 0 reports when the run ends."""

    steps_run: int
    first_loss: float
    last_loss: float
    tokens: int
    seconds: float
    fallbacks: int
    records: list[dict[str, Any]]


def broadcast_object(value: Any, *, src: int = 0) -> Any:
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def run_training(config: TrainConfig, *, job_start: JobStart | None = None) -> RunSummary | None:
    """Train on this rank (the process group must be initialised); rank 0 returns the summary.

    `job_start` (rank 0 only) replaces the job-level decisions and plan source that `start_job` would make
    (tests use it to plan every step with another strategy)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != config.cluster.num_devices:
        raise ValueError(
            f"cluster {config.cluster.name} has {config.cluster.num_devices} devices but {world} ranks were "
            "started: launch as many ranks as the cluster has devices (--nproc-per-node x --nnodes)"
        )
    dataset = _shared_dataset(config, rank)
    tokens = dataset.tokens()
    sampler = BatchSampler(dataset.table, config.seed, batch_size=config.batch_size, token_budget=config.token_budget)

    # --- resume point and job-level decisions (rank 0 decides, everyone follows) --------------------------
    resume_path = broadcast_object(_resume_path(config) if rank == 0 else None)
    resumed: TrainState | None = None
    if resume_path is not None:
        resumed = TrainState.from_json((Path(resume_path) / "train_state.json").read_text(), Path(resume_path))
    position = DataPosition.from_dict(resumed.data_position) if resumed else DataPosition()
    start = None
    if rank == 0:
        start = job_start or start_job(
            config,
            sampler.next_batch(position).batch(),
            resumed_stages=resumed.num_stages if resumed else None,
            resumed_job_id=resumed.job_id if resumed else None,
            resumed_layer_ranges=resumed.split() if resumed else None,
        )
    pipeline, job_id = broadcast_object((start.job.pipeline, start.job_id) if start else None)
    num_stages = pipeline.num_stages
    if start is not None:
        log.info(
            "job %s: P=%d, layers %s (%s); plans from %s",
            job_id or "-",
            num_stages,
            "/".join(str(pipeline.layers_of(p)) for p in range(num_stages)),
            start.how,
            config.planner,
        )
    groups = create_process_groups(config.cluster, [num_stages])
    executor = PlanExecutor(
        model=config.model,
        cluster=config.cluster,
        pipeline=pipeline,
        groups=groups,
        config=ExecutorConfig(
            seed=config.seed,
            dtype=DTYPES[config.dtype],
            device=config.device,
            attention_backend=config.attention_backend,
            optimizer=AdamWConfig(lr=config.lr, weight_decay=config.weight_decay),
            zero_stage=int(config.options.zero_stage),
            grad_bucket_bytes=_profile(config).grad_bucket_bytes,
            init_from=str(config.init) if config.init is not None else None,
            compute_dtype=torch.bfloat16 if config.dtype == "bfloat16" and config.device == "cuda" else None,
            recv_timeout_s=config.recv_timeout_s,
        ),
    )
    schedule = WarmupCosine(warmup_steps=config.warmup_steps, total_steps=config.steps, min_ratio=config.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(executor.optimizer, schedule)
    first_step = 0
    if resume_path is not None:
        state = load_checkpoint(
            Path(resume_path),
            module=executor.module,
            optimizer=executor.optimizer,
            world_size=world,
            num_stages=num_stages,
            layer_ranges=pipeline.layer_ranges,
        )
        scheduler.load_state_dict(state.scheduler)
        first_step = state.next_step
        if rank == 0:
            log.info("resumed from %s at step %d", resume_path, first_step)

    loop = _Loop(config, executor, scheduler, sampler, tokens, start, job_id, num_stages)
    return loop.run(first_step, position)


class _Loop:
    """The step loop; rank 0 additionally owns the plan source, the metrics file and the progress line."""

    def __init__(
        self,
        config: TrainConfig,
        executor: PlanExecutor,
        scheduler: torch.optim.lr_scheduler.LambdaLR,
        sampler: BatchSampler,
        tokens: TokenSource,
        start: JobStart | None,
        job_id: str | None,
        num_stages: int,
    ) -> None:
        self.config, self.executor, self.scheduler, self.sampler, self.tokens = (
            config,
            executor,
            scheduler,
            sampler,
            tokens,
        )
        self.start, self.job_id, self.num_stages = start, job_id, num_stages
        self.rank = dist.get_rank()
        self.replicas = config.cluster.num_devices // num_stages
        self.writer: MetricsWriter | None = None
        self.progress: ProgressPrinter | None = None

    def run(self, first_step: int, position: DataPosition) -> RunSummary | None:
        config = self.config
        if self.rank == 0:
            if config.metrics is not None:
                self.writer = MetricsWriter(config.metrics, append=first_step > 0)
            self.progress = ProgressPrinter(total_steps=config.steps, num_stages=self.num_stages)
        began = time.perf_counter()
        try:
            for step in range(first_step, config.steps):
                batch = self.sampler.next_batch(position)
                self._step(step, batch)
                position = batch.position_after
                if self._checkpoint_due(step):
                    self._checkpoint(step, position)
        finally:
            if self.start is not None:
                self.start.source.close()
            if self.writer is not None:
                self.writer.close()
        if self.rank != 0:
            return None
        return self._summary(time.perf_counter() - began)

    def _step(self, step: int, batch: GlobalBatch) -> None:
        iteration_began = time.perf_counter()
        config = self.config
        proto_batch = batch.batch()
        payload = None
        if self.start is not None:
            sourced = self.start.source.plan(step, proto_batch)
            if step + 1 < config.steps:  # ask for the next plan now, so it is solved while this step trains
                self.start.source.prefetch(step + 1, self.sampler.next_batch(batch.position_after).batch())
            payload = (sourced.plan.model_dump_json(), sourced.origin, sourced.reason, sourced.wait_s)
        plan_json, origin, reason, wait_s = broadcast_object(payload)
        plan = Plan.model_validate_json(plan_json)

        _reset_peak_memory(config.device)
        dist.barrier()  # every rank starts the clock together: the measured time is the step, not the skew
        began = time.perf_counter()
        result = self.executor.forward_backward(plan, proto_batch, tokens=self.tokens)  # (autocast inside on CUDA)
        grad_norm = self.executor.clip_grad_norm(config.grad_clip) if config.grad_clip > 0 else float("nan")
        lr = float(self.scheduler.get_last_lr()[0])
        self.executor.optimizer_step()
        self.scheduler.step()
        elapsed = torch.tensor([time.perf_counter() - began], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        peak = torch.tensor([_peak_memory_bytes(self.executor, result.peak_activation_bytes, config.device)])
        peaks = [torch.zeros_like(peak) for _ in range(dist.get_world_size())]
        dist.all_gather(peaks, peak)
        if self.rank != 0:
            return
        measured = float(elapsed.item())
        record = StepRecord(
            step=step,
            loss=result.loss,
            tokens=batch.num_tokens,
            plan_source=origin,
            predicted_s=plan.predicted.iteration_s,
            measured_s=measured,
            strategy=plan.strategy,
            plan_id=plan.plan_id,
            num_stages=plan.pipeline.num_stages,
            num_lanes=len(plan.lanes),
            lr=lr,
            grad_norm=grad_norm,
            tokens_per_s=batch.num_tokens / measured,
            peak_memory_bytes=[float(p.item()) for p in peaks],
            predicted_peak_memory_bytes=list(plan.predicted.peak_memory_bytes),
            plan_wait_s=wait_s,
            iteration_wall_s=time.perf_counter() - iteration_began,
            fallback_reason=reason,
        )
        if self.writer is not None:
            self.writer.write(record)
        assert self.progress is not None
        self.progress.step(record)
        if origin in ("service", "local") and self.start is not None:  # a fallback plan is unknown to the service
            self.start.source.send_feedback(
                Feedback(
                    step=step,
                    plan_id=plan.plan_id,
                    measured_iteration_s=measured,
                    peak_memory_bytes=record.peak_memory_bytes,
                    peak_memory_source=peak_memory_source(self.config.device),
                    tokens_per_s=record.tokens_per_s,
                )
            )

    def _checkpoint_due(self, step: int) -> bool:
        config = self.config
        if config.checkpoint_dir is None or config.checkpoint_every <= 0:
            return False
        return (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps

    def _checkpoint(self, step: int, position: DataPosition) -> None:
        assert self.config.checkpoint_dir is not None
        state = TrainState(
            next_step=step + 1,
            data_position=position.to_dict(),
            scheduler=self.scheduler.state_dict(),
            job_id=self.job_id,
            num_stages=self.num_stages,
            world_size=dist.get_world_size(),
            layer_ranges=[list(r) for r in self.executor.pipeline.layer_ranges],
        )
        path = save_checkpoint(
            self.config.checkpoint_dir,
            state,
            module=self.executor.module,
            optimizer=self.executor.optimizer,
            step=step + 1,
        )
        if self.rank == 0:
            log.info("step %d: checkpoint %s", step, path)

    def _summary(self, seconds: float) -> RunSummary:
        config = self.config
        records = read_metrics(config.metrics) if config.metrics is not None and config.metrics.exists() else []
        if not records and self.progress is not None:
            records = self.progress.records
        if config.plot is not None and records:
            plot_run(records, config.plot, title=f"{config.model.name} on {config.cluster.name}, {config.strategy}")
        fallbacks = self.start.source.fallbacks if self.start is not None else 0
        return RunSummary(
            steps_run=len(records),
            first_loss=records[0]["loss"] if records else float("nan"),
            last_loss=records[-1]["loss"] if records else float("nan"),
            tokens=sum(r["tokens"] for r in records),
            seconds=seconds,
            fallbacks=fallbacks,
            records=records,
        )


def _shared_dataset(config: TrainConfig, rank: int) -> Dataset:
    """Rank 0 of each node builds the cache (tokenizer, token store), the others then open it; every rank
    must end with the same token store (compared by digest), or the batches would differ between ranks."""
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    build = local_rank == 0

    def prepare() -> Dataset:
        return prepare_dataset(
            config.data,
            vocab_size=config.model.vocab_size,
            max_len=config.max_len,
            cache_dir=config.cache_dir,
            tokenizer_path=config.tokenizer,
        )

    dataset = prepare() if build else None
    dist.barrier()
    if dataset is None:
        dataset = prepare()
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, dataset.store.digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks tokenised the corpus differently (store digests {sorted(set(digests))})")
    return dataset


def _resume_path(config: TrainConfig) -> str | None:
    if config.resume == "never":
        return None
    root = config.checkpoint_dir
    latest = find_latest_checkpoint(root) if root is not None else None
    if latest is None:
        if config.resume == "must":
            raise CheckpointError(f"--resume: no complete checkpoint in {root}")
        return None
    return str(latest)


def _profile(config: TrainConfig) -> CostProfile:
    """The profile plans are made with (given, else the preset): the executor takes its bucket size from it, so the
    gradient buckets the cost model prices are the ones the executor issues."""
    from planner_service.cost_model.profile_presets import profile_for

    return profile_for(config.cluster, config.model, config.profile)


def _reset_peak_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_source(device: str) -> Literal["allocator", "saved_tensors"]:
    """What `_peak_memory_bytes` measures on `device` (`Feedback.peak_memory_source`)."""
    return "allocator" if device == "cuda" else "saved_tensors"


def _peak_memory_bytes(executor: PlanExecutor, activation_peak: int, device: str) -> float:
    """Peak bytes of this rank in the step: the allocator's peak on CUDA; on CPU, model states (parameters,
    gradients, optimizer state) plus the measured peak of saved activations."""
    if device == "cuda":
        return float(torch.cuda.max_memory_allocated())
    return float(executor.states.state_bytes() + activation_peak)


def init_distributed(config: TrainConfig, *, timeout_s: float = 600.0) -> None:
    """Initialise the default process group from torchrun's environment (gloo on CPU, nccl on CUDA).

    The rendezvous store is keyed by torchrun's restart count: after `--max-restarts` restarts the workers, the
    store still holds the dead workers' addresses under the default keys, and a new worker that reads one of
    those before its peer overwrites it connects to a closed port (gloo: "connectFullMesh ... refused")."""
    backend = "nccl" if config.device == "cuda" else "gloo"
    if config.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = datetime.timedelta(seconds=timeout_s)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    base = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=rank == 0 and not agent_hosts_store,
        timeout=timeout,
    )
    store = dist.PrefixStore(f"helix-train/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", base)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
