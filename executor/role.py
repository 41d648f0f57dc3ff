"""What one rank does in a plan: refusing plans that do not fit, and deriving the rank's role.

Every rank runs these checks on its own, before any collective of the step, so a bad plan fails on
every rank with the same message instead of leaving some ranks waiting in a collective.
"""

from __future__ import annotations

from dataclasses import dataclass

from proto.batch import Batch
from proto.cluster import ClusterSpec
from proto.model import ModelSpec
from proto.plan import Lane, PipelineSpec, Plan
from proto.validation import PlanValidationError, validate_plan


class PlanRefused(ValueError):
    """The executor will not apply this plan; the message says why and on which rank."""


@dataclass(frozen=True, kw_only=True)
class RankRole:
    """A rank's place in one plan."""

    rank: int
    lane_id: int
    lane_index: int
    """Position of the lane in `plan.lanes`."""
    stage: int
    num_stages: int
    sp_rank: int
    """Position inside the lane's SP group at this stage."""
    sp_ranks: tuple[int, ...]
    """The lane's SP group at this stage."""

    @property
    def sp_degree(self) -> int:
        return len(self.sp_ranks)

    @property
    def is_first_stage(self) -> bool:
        return self.stage == 0

    @property
    def is_last_stage(self) -> bool:
        return self.stage == self.num_stages - 1


def check_plan(
    plan: Plan,
    *,
    batch: Batch,
    cluster: ClusterSpec,
    model: ModelSpec,
    world_size: int,
    rank: int,
    pipeline: PipelineSpec | None = None,
    zero_stage: int | None = None,
) -> None:
    """Raise `PlanRefused` unless the plan fits this world, batch, cluster, model (and the job's pipeline and
    ZeRO stage, when given: both are set up once per job)."""
    where = f"rank {rank} refuses plan {plan.plan_id or '<no id>'} (step {plan.step})"
    plan_ranks = sorted(r for lane in plan.lanes for stage_ranks in lane.ranks for r in stage_ranks)
    if cluster.num_devices != world_size:
        raise PlanRefused(
            f"{where}: the cluster spec has {cluster.num_devices} devices but the world size is {world_size}"
        )
    if plan_ranks != list(range(world_size)):
        top = max(plan_ranks, default=-1) + 1
        raise PlanRefused(
            f"{where}: its lanes use {len(plan_ranks)} rank slots over ranks 0..{top - 1} but the world size is "
            f"{world_size} (ranks 0..{world_size - 1}); was it made for another cluster?"
        )
    if pipeline is not None and plan.pipeline != pipeline:
        raise PlanRefused(
            f"{where}: its pipeline {plan.pipeline.layer_ranges} differs from the job's {pipeline.layer_ranges} "
            "(the pipeline split is fixed per job)"
        )
    if zero_stage is not None and plan.options.zero_stage != zero_stage:
        raise PlanRefused(
            f"{where}: it is for options.zero_stage={int(plan.options.zero_stage)}, but this job's model states are "
            f"sharded for ZeRO-{zero_stage} once per job (plan with max_zero_stage={zero_stage})"
        )
    try:
        validate_plan(plan, batch, cluster, model)
    except PlanValidationError as err:
        raise PlanRefused(f"{where}: {err}") from err


def find_role(plan: Plan, *, rank: int, world_size: int) -> RankRole:
    """The lane, stage and SP position of `rank` (the plan must have passed `check_plan`)."""
    num_stages = plan.pipeline.num_stages
    for index, lane in enumerate(plan.lanes):
        for stage, ranks in enumerate(lane.ranks):
            if rank in ranks:
                return RankRole(
                    rank=rank,
                    lane_id=lane.lane_id,
                    lane_index=index,
                    stage=stage,
                    num_stages=num_stages,
                    sp_rank=ranks.index(rank),
                    sp_ranks=tuple(ranks),
                )
    raise PlanRefused(f"rank {rank} is in no lane of plan {plan.plan_id} (world size {world_size})")


def lane_of(plan: Plan, role: RankRole) -> Lane:
    return plan.lanes[role.lane_index]
