"""The per-op overhead probe: two training steps that differ only in how many ops run the same work.

`CostProfile.op_overhead_s` is the stage runtime's own fixed cost per forward or backward op (receiving, building
the chunk's inputs, bookkeeping, sending), on top of the per-layer call overhead the layer fit already holds.
A layer timed alone cannot show it, so `helix profile` times two whole steps of the executor on the job's
devices:

- the *packed* step: every lane (SP 1, one per device of a stage block) runs its sequences as one chunk;
- the *split* step: the same sequences, one chunk each.

The work (tokens, attention pairs, sends) is the same, so what the split step costs beyond the packed one, less
what the simulator already charges for the difference (per-layer call overheads, pipeline fill, sends of
smaller chunks), is paid per extra op. `fit_op_overhead` solves for it with the simulator itself: it prices both
steps at two values of the overhead, and the slope of their difference turns the measured difference into
seconds per op (the same finite difference the online calibration uses).

The probe model is the job's model with one layer per stage: the overhead is per op, not per layer, and a
whole 7B model with its optimizer state would not fit one device where `helix profile` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from planner_service.cost_model.cost_model import CostModel
from planner_service.cost_model.profile_measurements import OpProbeTiming
from planner_service.schedules import build_schedule
from planner_service.simulator import simulate
from proto import Batch, Chunk, ClusterSpec, CostProfile, Lane, ModelSpec, PipelineSpec, Plan, Predicted, Segment
from proto.fingerprint import fingerprint
from proto.plan import SolverInfo

SEQUENCES_PER_LANE = 8
"""Sequences each lane runs: the split step runs 8 times the packed step's ops."""
TOKENS_PER_SEQUENCE = 64
"""Short enough that the fixed costs are a large share of a step, as they are for short chunks in real plans."""
PROBE_DELTA_S = 1e-3
"""Overhead step of the finite difference (the simulated time is piecewise linear in the overhead)."""
MAX_PROBE_STAGES = 2
"""Pipeline degree of the probe: 2 where the devices and layers allow (sends and the stage handshakes are
part of what an op costs in a pipeline), else 1."""


@dataclass(frozen=True, slots=True)
class OpProbe:
    """The probe's shape on one cluster: its pipeline degree and model (one layer per stage)."""

    num_stages: int
    model: ModelSpec

    @classmethod
    def of(cls, cluster: ClusterSpec, model: ModelSpec) -> OpProbe:
        stages = MAX_PROBE_STAGES if cluster.num_devices % MAX_PROBE_STAGES == 0 and model.num_layers >= 2 else 1
        probe_model = model.model_copy(update={"num_layers": stages, "name": f"{model.name}-op-probe"})
        return cls(num_stages=stages, model=probe_model)

    def batch(self, cluster: ClusterSpec) -> Batch:
        lanes = cluster.num_devices // self.num_stages
        return Batch.from_lengths([TOKENS_PER_SEQUENCE] * (lanes * SEQUENCES_PER_LANE))

    def plan(self, cluster: ClusterSpec, profile: CostProfile, *, split: bool) -> Plan:
        """The packed (`split` False) or split step's plan, simulated with `profile`."""
        batch = self.batch(cluster)
        pipeline = PipelineSpec.even(self.model.num_layers, self.num_stages)
        block = cluster.num_devices // self.num_stages
        lanes = []
        for lane in range(block):
            ids = batch.seq_ids[lane * SEQUENCES_PER_LANE : (lane + 1) * SEQUENCES_PER_LANE]
            segments = [Segment(seq_id=i, start=0, end=TOKENS_PER_SEQUENCE) for i in ids]
            chunks = [Chunk(segments=[seg]) for seg in segments] if split else [Chunk(segments=segments)]
            lanes.append(
                Lane(
                    lane_id=lane,
                    sp_degree=1,
                    ranks=[[p * block + lane] for p in range(self.num_stages)],
                    chunks=chunks,
                    schedule=build_schedule(chunks, self.num_stages),
                    recompute=[[0] * len(chunks) for _ in range(self.num_stages)],
                )
            )
        plan = Plan(
            strategy="op-probe",
            cluster_name=cluster.name,
            model_name=self.model.name,
            cluster_fingerprint=fingerprint(cluster),
            model_fingerprint=fingerprint(self.model),
            batch_fingerprint=batch.fingerprint,
            pipeline=pipeline,
            lanes=lanes,
            predicted=Predicted(iteration_s=0.0, ideal_s=0.0),
            solver=SolverInfo(message="helix profile: per-op overhead probe"),
        )
        predicted = self.simulated(plan, cluster, profile)
        return plan.model_copy(update={"predicted": predicted}).with_id()

    def timing(self, packed_s: float, split_s: float) -> OpProbeTiming:
        """The measurement row of this probe's two steps."""
        return OpProbeTiming(
            num_stages=self.num_stages,
            sequences_per_lane=SEQUENCES_PER_LANE,
            tokens_per_sequence=TOKENS_PER_SEQUENCE,
            packed_s=packed_s,
            split_s=split_s,
        )

    def simulated(self, plan: Plan, cluster: ClusterSpec, profile: CostProfile) -> Predicted:
        cost = CostModel.from_specs(cluster, self.model, profile=profile, options=plan.options)
        return simulate(plan, self.batch(cluster), cost, record_events=False).predicted


@dataclass(frozen=True, slots=True)
class OpOverheadFit:
    """The fitted overhead (None when the probe was not measured) and the numbers behind it."""

    op_overhead_s: float | None
    measured_extra_s: float
    """Split step minus packed step, measured."""
    modelled_extra_s: float
    """The same difference as the simulator prices it without any op overhead."""
    slope: float
    """Simulated seconds the difference grows per second of op overhead (extra ops on the critical path)."""


def fit_op_overhead(
    cluster: ClusterSpec, model: ModelSpec, profile: CostProfile, packed_s: float, split_s: float
) -> OpOverheadFit:
    """The op overhead that makes the simulator's split-minus-packed difference equal the measured one (at
    least 0: a split step measured no slower than the model says is no evidence of a negative cost)."""
    base = profile.model_copy(update={"op_overhead_s": 0.0})
    probe, (packed, split) = probe_plans(cluster, model, base)  # each already simulated at `base`
    modelled = split.predicted.iteration_s - packed.predicted.iteration_s
    nudged = profile.model_copy(update={"op_overhead_s": PROBE_DELTA_S})
    nudged_split, nudged_packed = (probe.simulated(plan, cluster, nudged).iteration_s for plan in (split, packed))
    slope = (nudged_split - nudged_packed - modelled) / PROBE_DELTA_S
    measured = split_s - packed_s
    value = max((measured - modelled) / slope, 0.0) if slope > 0 else None
    return OpOverheadFit(value, measured, modelled, slope)


def probe_plans(cluster: ClusterSpec, model: ModelSpec, profile: CostProfile) -> tuple[OpProbe, Sequence[Plan]]:
    """The probe and its (packed, split) plans, as the executor runs them."""
    probe = OpProbe.of(cluster, model)
    return probe, (probe.plan(cluster, profile, split=False), probe.plan(cluster, profile, split=True))
