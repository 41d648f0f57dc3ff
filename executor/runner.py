"""Apply one plan per step on one rank: forward/backward of the rank's chunks, gradient sync, optimizer step.

Per step, on every rank:
1. refuse the plan unless it fits the world, batch, cluster, model and the job's pipeline (no collective
   has run yet, so a refusal is the same clean error everywhere);
2. find the rank's lane, stage and SP position;
3. run the lane's schedule for this stage (`executor.parallel.pipeline.runtime`): F(c) materialises only
   this rank's share of chunk c (or receives it from the previous stage) and runs the stage's layers with
   Ulysses attention over the lane's SP group and K/V caches for sliced sequences; B(c) back-propagates
   it and sends the input gradient back;
4. sum the gradients over the stage's data-parallel group as the rank's model states do it
   (`executor.parallel.zero`: bucketed and overlapped with backward for ZeRO-0/1/2, FSDP2 for ZeRO-3),
   and, with a tied embedding at P > 1, between its two holder stages.

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

from executor.interop.hf_llama import load_pretrained_stage
from executor.model import build_stage
from executor.parallel.data import AdamWConfig, clip_gradients
from executor.parallel.groups import ProcessGroups
from executor.parallel.pipeline.runtime import StageRunResult, StageRunSettings, StageRuntime
from executor.parallel.pipeline.shards import TokenSource, total_targets
from executor.parallel.pipeline.weight_grads import DeferrableStage, install_deferrable_linears
from executor.parallel.zero.block_rounds import Round, RoundsRefused, align_plan
from executor.parallel.zero.model_states import (
    DEFAULT_BUCKET_BYTES,
    ModelStates,
    StatesConfig,
    build_model_states,
    max_chunks_in_block,
)
from executor.role import PlanRefused, RankRole, check_plan, find_role, lane_of
from proto.batch import Batch
from proto.capabilities import TORCH_EXECUTOR
from proto.cluster import ClusterSpec
from proto.model import ModelSpec
from proto.plan import Lane, PipelineSpec, Plan, RecomputeScope

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
    zero_stage: int = 0
    """0: replicated states; 1: AdamW state sharded; 2: + gradients; 3: + parameters (FSDP2), per stage block."""
    grad_bucket_bytes: float = DEFAULT_BUCKET_BYTES
    """Gradient bucket size of the ZeRO-0/1/2 sync (the cost profile's `grad_bucket_bytes`)."""
    compute_dtype: torch.dtype | None = None
    """Mixed precision on CUDA: bf16 compute over fp32 parameters (autocast, or FSDP2's policy for ZeRO-3)."""
    overlap_grad_sync: bool = True
    """ZeRO-0/1/2: reduce gradient buckets while the backward runs (False: after it, for measurements)."""
    init_from: str | None = None
    """A Hugging Face Llama checkpoint folder whose weights replace the seeded ones (`helix train --init`)."""
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


def refuse_unsupported(config: ExecutorConfig) -> None:
    """Raise ValueError naming the field when `config` asks for something outside `TORCH_EXECUTOR`."""
    caps = TORCH_EXECUTOR
    if config.zero_stage not in caps.zero_stages:
        raise ValueError(
            f"zero_stage={config.zero_stage}: this executor runs ZeRO stages {list(map(int, caps.zero_stages))}"
        )
    if config.attention_backend not in caps.attention_backends:
        raise ValueError(
            f"attention_backend={config.attention_backend!r}: choose one of {', '.join(caps.attention_backends)}"
        )
    dtype = str(config.dtype).removeprefix("torch.")
    if dtype not in caps.parameter_dtypes:
        raise ValueError(f"dtype={dtype}: parameters are kept in one of {', '.join(caps.parameter_dtypes)}")
    if config.compute_dtype is not None:
        compute = str(config.compute_dtype).removeprefix("torch.")
        if compute not in caps.compute_dtypes or torch.device(config.device).type != "cuda":
            raise ValueError(
                f"compute_dtype={compute}: mixed precision runs on CUDA in one of {', '.join(caps.compute_dtypes)}"
            )


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
        refuse_unsupported(config)
        self.module = build_stage(
            model,
            seed=config.seed,
            layer_range=pipeline.layer_ranges[self.stage],
            dtype=config.dtype,
            device=config.device,
        )
        if config.init_from is not None:  # before the states flatten or shard the parameters
            load_pretrained_stage(self.module, config.init_from)
        # a plan may defer weight gradients at ZeRO-0/1 (`Plan.defer_weight_grads`)
        defers = config.zero_stage <= 1
        self.deferrable = install_deferrable_linears(self.module.layers.values()) if defers else None
        self.states: ModelStates = build_model_states(
            self.module,
            config=StatesConfig(
                zero_stage=config.zero_stage,
                bucket_bytes=config.grad_bucket_bytes,
                compute_dtype=config.compute_dtype,
                overlap=config.overlap_grad_sync,
            ),
            optimizer=config.optimizer,
            dp_group=self.dp_group if len(self.dp_ranks) > 1 else None,
            mesh=groups.dp_mesh(pipeline.num_stages, self.stage) if config.zero_stage == 3 else None,
            tie_group=groups.tie_group(pipeline.num_stages, self.rank) if model.tie_embeddings else None,
        )
        self.optimizer = self.states.optimizer

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
            zero_stage=self.config.zero_stage,
        )
        problem = TORCH_EXECUTOR.plan_problem(plan, self.model_spec)
        if problem is not None:
            raise PlanRefused(
                f"rank {self.rank} refuses plan {plan.plan_id or '<no id>'} (step {plan.step}): {problem}"
            )
        role = find_role(plan, rank=self.rank, world_size=self.world_size)
        assert role.stage == self.stage, f"rank {self.rank}: plan puts it on stage {role.stage}, not {self.stage}"
        lane = lane_of(plan, role)
        rounds = self._rounds(plan, role)
        self.states.begin_step()
        deferring = self.deferrable if plan.defer_weight_grads else None
        run = self._run_schedule(
            lane,
            role,
            batch,
            tokens=tokens,
            rounds=rounds,
            weight_grads=deferring,
            recompute_scope=plan.options.recompute_scope,
        )
        # every lane has ranks in every stage block: the block's busiest lane is the plan's
        busiest = max_chunks_in_block([len(other.chunks) for other in plan.lanes])
        self.states.finish_step(idle_backward_rounds=busiest - len(lane.chunks))
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
        """AdamW on this rank's states; ZeRO-1/2 then all-gather the updated parameters."""
        self.states.step()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip the step's gradients to a global norm of `max_norm` over the whole model (every gradient value
        counted once, whatever the ZeRO stage or tying); returns the norm before clipping."""
        return clip_gradients(self.states.grad_terms(), max_norm)

    def full_gradients(self) -> dict[str, torch.Tensor]:
        """The stage's synchronised gradients by global name (collective over the block under ZeRO-1/2/3)."""
        return self.states.full_gradients()

    def full_parameters(self) -> dict[str, torch.Tensor]:
        """The stage's parameters by global name (collective over the block under ZeRO-3)."""
        return self.states.full_parameters()

    def train_step(self, plan: Plan, batch: Batch, *, tokens: TokenSource) -> StepResult:
        result = self.forward_backward(plan, batch, tokens=tokens)
        self.optimizer_step()
        return result

    # --- internals -------------------------------------------------------------------------------------

    def _activation_dtype(self) -> torch.dtype:
        """dtype of the hidden states between stages: FSDP2's bf16 parameters make them bf16 under ZeRO-3 mixed
        precision; autocast keeps the fp32 residual stream of ZeRO-0/1/2."""
        config = self.config
        return config.compute_dtype if config.zero_stage == 3 and config.compute_dtype is not None else config.dtype

    def _rounds(self, plan: Plan, role: RankRole) -> list[Round] | None:
        """ZeRO-3: the block's common rounds for this rank (refused, on every rank alike, if they cannot
        line up without a deadlock); otherwise None (the lane's own schedule)."""
        if self.config.zero_stage != 3 or len(self.dp_ranks) == 1:
            return None
        try:
            return align_plan(plan)[(role.lane_index, role.stage)]
        except RoundsRefused as err:
            where = f"rank {self.rank} refuses plan {plan.plan_id or '<no id>'} (step {plan.step})"
            raise PlanRefused(f"{where}: {err}") from err

    def _run_schedule(
        self,
        lane: Lane,
        role: RankRole,
        batch: Batch,
        *,
        tokens: TokenSource,
        rounds: list[Round] | None,
        weight_grads: DeferrableStage | None,
        recompute_scope: RecomputeScope,
    ) -> StageRunResult:
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
                dtype=self._activation_dtype(),
                device=self.config.device,
                attention_backend=self.config.attention_backend,
                recv_timeout_s=self.config.recv_timeout_s,
                compute_dtype=self.config.compute_dtype if self.config.zero_stage < 3 else None,
            ),
            hooks=self.states,
            rounds=rounds,
            weight_grads=weight_grads,
            recompute_scope=recompute_scope,
        )
        return runtime.run()
