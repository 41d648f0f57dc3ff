"""Apply one plan per step on one rank: forward/backward of the rank's chunks, gradient sync, optimizer step.

Per step, on every rank:
1. refuse the plan unless it fits the world, batch, cluster, model and the job's pipeline (no collective
   has run yet, so a refusal is the same clean error everywhere);
2. find the rank's lane, stage and SP position;
3. run the lane's schedule for this stage: F(c) materialises only this rank's share of chunk c and runs
   the stage (Ulysses attention over the lane's SP group); B(c) back-propagates it;
4. all-reduce (sum) gradients over the stage's data-parallel group.

The loss of a chunk is the sum of its token cross-entropies divided by the number of target tokens of
the *global* batch, so summing over chunks, SP ranks and lanes gives the single-device loss exactly
(a per-group mean would bias the gradient, DESIGN §12).

Pipeline stages (P > 1) and sliced sequences (segments that start after 0 or end before the sequence
does) arrive with Executor II; until then such plans are refused with a clear message.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

from executor.chunk_shards import IGNORE_INDEX, chunk_layout, materialize_shard, total_targets
from executor.model import build_stage
from executor.optimizer import AdamWConfig, build_optimizer
from executor.plan_role import PlanRefused, RankRole, check_plan, find_role, lane_of
from executor.process_groups import ProcessGroups, stage_block
from executor.ulysses import UlyssesAttention
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


@dataclass(frozen=True)
class StepResult:
    loss: float
    """Global loss of the step (sum over all ranks of their chunk losses)."""
    role: RankRole
    num_chunks: int
    local_tokens: int
    seconds: float


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
        num_stages = pipeline.num_stages
        self.stage = self.rank // (self.world_size // num_stages)
        self.dp_ranks = stage_block(self.world_size, num_stages, self.stage)
        self.dp_group = groups.dp_group(num_stages, self.stage)
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

    def forward_backward(self, plan: Plan, batch: Batch, *, token_seed: int) -> StepResult:
        """Run this rank's part of `plan` on `batch`; leaves the stage's synchronised gradients in `.grad`."""
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
        _refuse_unsupported(plan, batch, self.rank)
        role = find_role(plan, rank=self.rank, world_size=self.world_size)
        assert role.stage == self.stage, f"rank {self.rank}: plan puts it on stage {role.stage}, not {self.stage}"
        lane = lane_of(plan, role)
        self.module.zero_grad(set_to_none=True)
        local_loss, local_tokens = self._run_schedule(lane, role, batch, token_seed=token_seed)
        self._sync_gradients()
        loss = torch.tensor([local_loss], dtype=torch.float64)
        dist.all_reduce(loss)
        seconds = time.perf_counter() - began
        log.info(
            "rank %d step %s: lane %d stage %d sp %d/%d, %d chunks, %d tokens, loss %.6f, %.3f s",
            self.rank,
            plan.step,
            role.lane_id,
            role.stage,
            role.sp_rank,
            role.sp_degree,
            len(lane.chunks),
            local_tokens,
            loss.item(),
            seconds,
        )
        return StepResult(float(loss.item()), role, len(lane.chunks), local_tokens, seconds)

    def optimizer_step(self) -> None:
        self.optimizer.step()

    def train_step(self, plan: Plan, batch: Batch, *, token_seed: int) -> StepResult:
        result = self.forward_backward(plan, batch, token_seed=token_seed)
        self.optimizer_step()
        return result

    # --- internals -------------------------------------------------------------------------------------

    def _run_schedule(self, lane: Lane, role: RankRole, batch: Batch, *, token_seed: int) -> tuple[float, int]:
        lengths = batch.length_of()
        norm = max(total_targets(lengths), 1)
        sp_group = self.groups.get(role.sp_ranks) if role.sp_degree > 1 else None
        pending: dict[int, torch.Tensor] = {}
        local_loss, local_tokens = 0.0, 0
        for op in lane.schedule[role.stage]:
            if op.kind == "F":
                chunk = lane.chunks[op.chunk]
                layout = chunk_layout(chunk, role.sp_degree)
                shard = materialize_shard(
                    layout,
                    role.sp_rank,
                    lengths=lengths,
                    token_seed=token_seed,
                    vocab_size=self.model_spec.vocab_size,
                    device=self.config.device,
                )
                attend = UlyssesAttention(
                    group=sp_group,
                    sp_degree=role.sp_degree,
                    cu_seqlens=layout.cu_seqlens,
                    backend=self.config.attention_backend,
                )
                logits = self.module(
                    shard.token_ids, shard.positions, attend, lane.recompute[role.stage][op.chunk]
                )  # (S, V)
                loss = F.cross_entropy(logits, shard.targets, ignore_index=IGNORE_INDEX, reduction="sum") / norm
                pending[op.chunk] = loss
                local_loss += float(loss.detach())
                local_tokens += layout.shard_tokens
            else:
                pending.pop(op.chunk).backward()
        assert not pending, f"rank {self.rank}: chunks {sorted(pending)} ran forward but never backward"
        return local_loss, local_tokens

    def _sync_gradients(self) -> None:
        """Sum gradients over the stage's data-parallel group in one flat all-reduce."""
        params = list(self.module.parameters())
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if len(self.dp_ranks) == 1:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])  # type: ignore[union-attr]
        dist.all_reduce(flat, group=self.dp_group)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p))  # type: ignore[union-attr]
            offset += n


def _refuse_unsupported(plan: Plan, batch: Batch, rank: int) -> None:
    """Plans this executor cannot apply yet (Executor II adds them)."""
    where = f"rank {rank} refuses plan {plan.plan_id or '<no id>'} (step {plan.step})"
    if plan.pipeline.num_stages > 1:
        raise PlanRefused(f"{where}: pipeline degree {plan.pipeline.num_stages} > 1 is not supported yet")
    lengths = batch.length_of()
    for lane in plan.lanes:
        for c, chunk in enumerate(lane.chunks):
            for seg in chunk.segments:
                if seg.start > 0 or seg.end < lengths[seg.seq_id]:
                    raise PlanRefused(
                        f"{where}: lane {lane.lane_id} chunk {c} holds a slice [{seg.start}, {seg.end}) of sequence "
                        f"{seg.seq_id}; sliced sequences are not supported yet"
                    )
