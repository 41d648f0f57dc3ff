"""Apply one plan per step on one rank: forward/backward of the rank's chunks, gradient sync, optimizer step.

Per step, on every rank:
1. refuse the plan unless it fits the world, batch, cluster, model and the job's pipeline (no collective
   has run yet, so a refusal is the same clean error everywhere);
2. find the rank's lane, stage and SP position;
3. run the lane's schedule for this stage (`executor.parallel.pipeline.runtime`): F(c) materialises only
   this rank's share of chunk c (or receives it from the previous stage) and runs the stage's layers with
   Ulysses attention over the lane's SP group and K/V caches for sliced sequences; B(c) back-propagates
   it and sends the input gradient back;
4. all-reduce (sum) gradients over the stage's data-parallel group (`executor.parallel.data`).

The loss of a chunk is the sum of its token cross-entropies divided by the number of target tokens of
the *global* batch, so summing over chunks, SP ranks and lanes gives the single-device loss exactly
(a per-group mean would bias the gradient, DESIGN §12).

Each rank builds only its stage's layers (the pipeline split is fixed per job): the embedding on the first
stage, final norm + LM head + loss on the last.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from executor.model import build_stage
from executor.parallel.data import AdamWConfig, build_optimizer, sync_gradients
from executor.parallel.groups import ProcessGroups
from executor.parallel.pipeline.runtime import StageRunResult, StageRunSettings, StageRuntime
from executor.parallel.pipeline.shards import TokenSource, total_targets
from executor.role import RankRole, check_plan, find_role, lane_of
from proto.batch import Batch
from proto.cluster import ClusterSpec
from proto.model import ModelSpec
from proto.plan import Lane, PipelineSpec, Plan

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ExecutorConfig:
    """How a rank builds and trains its stage."""

    seed: int = 0
    """Weight initialisation seed (same on every rank: a stage gets exactly its layers' weights)."""
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    attention_backend: str = "auto"
    optimizer: AdamWConfig = field(default_factory=AdamWConfig)
    zero1: bool = False
    """Shard AdamW state over each stage's data-parallel group (ZeroRedundancyOptimizer)."""
    recv_timeout_s: float = 300.0
    """A pipeline receive that waits longer fails with a message naming rank, stage, lane and op."""


@dataclass(frozen=True)
class StepResult:
    loss: float
    """Global loss of the step (sum over all ranks of their chunk losses)."""
    role: RankRole
    num_chunks: int
    local_tokens: int
    seconds: float
    peak_activation_bytes: int = 0
    """Measured peak activation memory of this rank in the step (`executor.parallel.pipeline.memory_probe`)."""


class PlanExecutor:
    """One rank's stage, optimizer and process groups for a job; applies a new plan every step."""

    def __init__(
        self,
        *,
        model: ModelSpec,
        cluster: ClusterSpec,
        pipeline: PipelineSpec,
        groups: ProcessGroups,
        config: ExecutorConfig,
    ) -> None:
        self.model_spec, self.cluster, self.pipeline, self.groups, self.config = (
            model,
            cluster,
            pipeline,
            groups,
            config,
        )
        self.rank, self.world_size = groups.rank, groups.world_size
        if cluster.num_devices != self.world_size:
            raise ValueError(f"cluster has {cluster.num_devices} devices but the world size is {self.world_size}")
        if pipeline.num_layers != model.num_layers:
            raise ValueError(f"pipeline covers {pipeline.num_layers} layers, the model has {model.num_layers}")
        topology = groups.topology(pipeline.num_stages)
        self.stage = topology.stage_of(self.rank)
        self.dp_ranks = topology.stage_block(self.stage)
        self.dp_group = groups.dp_group(pipeline.num_stages, self.stage)
        self.module = build_stage(
            model,
            seed=config.seed,
            layer_range=pipeline.layer_ranges[self.stage],
            dtype=config.dtype,
            device=config.device,
        )
        self.optimizer = build_optimizer(
            self.module.parameters(), config.optimizer, zero1=config.zero1, dp_group=self.dp_group
        )

    # --- one step --------------------------------------------------------------------------------------

    def forward_backward(self, plan: Plan, batch: Batch, *, tokens: TokenSource) -> StepResult:
        """Run this rank's part of `plan` on `batch` (token ids from `tokens`); leaves the stage's
        synchronised gradients in `.grad`."""
        began = time.perf_counter()
        check_plan(
            plan,
            batch=batch,
            cluster=self.cluster,
            model=self.model_spec,
            world_size=self.world_size,
            rank=self.rank,
            pipeline=self.pipeline,
        )
        role = find_role(plan, rank=self.rank, world_size=self.world_size)
        assert role.stage == self.stage, f"rank {self.rank}: plan puts it on stage {role.stage}, not {self.stage}"
        lane = lane_of(plan, role)
        self.module.zero_grad(set_to_none=True)
        run = self._run_schedule(lane, role, batch, tokens=tokens)
        sync_gradients(list(self.module.parameters()), self.dp_group)
        loss = torch.tensor([run.local_loss], dtype=torch.float64)
        dist.all_reduce(loss)
        seconds = time.perf_counter() - began
        log.info(
            "rank %d step %s: lane %d stage %d sp %d/%d, %d chunks, %d tokens, loss %.6f, %.3f s, peak act %d B",
            self.rank,
            plan.step,
            role.lane_id,
            role.stage,
            role.sp_rank,
            role.sp_degree,
            len(lane.chunks),
            run.local_tokens,
            loss.item(),
            seconds,
            run.peak_activation_bytes,
        )
        return StepResult(
            float(loss.item()), role, len(lane.chunks), run.local_tokens, seconds, run.peak_activation_bytes
        )

    def optimizer_step(self) -> None:
        self.optimizer.step()

    def train_step(self, plan: Plan, batch: Batch, *, tokens: TokenSource) -> StepResult:
        result = self.forward_backward(plan, batch, tokens=tokens)
        self.optimizer_step()
        return result

    # --- internals -------------------------------------------------------------------------------------

    def _run_schedule(self, lane: Lane, role: RankRole, batch: Batch, *, tokens: TokenSource) -> StageRunResult:
        lengths = batch.length_of()
        runtime = StageRuntime(
            module=self.module,
            lane=lane,
            role=role,
            sp_group=self.groups.get(role.sp_ranks) if role.sp_degree > 1 else None,
            lengths=lengths,
            tokens=tokens,
            loss_norm=max(total_targets(lengths), 1),
            settings=StageRunSettings(
                dtype=self.config.dtype,
                device=self.config.device,
                attention_backend=self.config.attention_backend,
                recv_timeout_s=self.config.recv_timeout_s,
            ),
        )
        return runtime.run()
