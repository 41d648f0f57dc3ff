"""`validate_plan`: the checks every plan passes before it is returned or applied.

Used by the planner before returning a plan and by every executor before running one, so a
broken plan is a precise error, never a hang or a wrong gradient.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence

from proto.batch import Batch
from proto.cluster import ClusterSpec
from proto.fingerprint import fingerprint
from proto.model import ModelSpec
from proto.plan import Lane, Op, Plan, ZeroStage
from proto.topology import Topology, sp_degree_problem

MAX_REPORTED_PROBLEMS = 20


class PlanValidationError(ValueError):
    """A plan that must not be applied. `problems` lists every violation found (up to a cap)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_REPORTED_PROBLEMS]
        more = len(problems) - len(shown)
        text = "; ".join(shown) + (f"; ... and {more} more" if more > 0 else "")
        super().__init__(f"invalid plan: {text}")


def validate_plan(plan: Plan, batch: Batch, cluster: ClusterSpec, model: ModelSpec) -> None:
    """Raise `PlanValidationError` naming every lane/stage/chunk/sequence that is wrong."""
    problems: list[str] = []
    problems += _check_fingerprints(plan, batch, cluster, model)
    problems += _check_pipeline(plan, cluster, model)
    if problems:  # the structural checks below assume a consistent pipeline
        raise PlanValidationError(problems)
    problems += _check_lane_layout(plan, cluster, model)
    problems += _check_tokens(plan, batch)
    for lane in plan.lanes:
        lane_problems = _check_lane_shapes(lane, plan)
        problems += lane_problems
        if not lane_problems:
            problems += _check_schedule_order(lane, plan)
            problems += _check_deadlock(lane, plan.pipeline.num_stages)
    problems += _check_memory(plan, cluster)
    if problems:
        raise PlanValidationError(problems)


def _check_fingerprints(plan: Plan, batch: Batch, cluster: ClusterSpec, model: ModelSpec) -> list[str]:
    problems = []
    if plan.cluster_fingerprint != fingerprint(cluster):
        problems.append(f"plan was made for another cluster (fingerprint {plan.cluster_fingerprint})")
    if plan.model_fingerprint != fingerprint(model):
        problems.append(f"plan was made for another model (fingerprint {plan.model_fingerprint})")
    if plan.batch_fingerprint != batch.fingerprint:
        problems.append(f"plan was made for another batch (fingerprint {plan.batch_fingerprint})")
    return problems


def _check_pipeline(plan: Plan, cluster: ClusterSpec, model: ModelSpec) -> list[str]:
    p = plan.pipeline.num_stages
    problems = []
    if plan.pipeline.num_layers != model.num_layers:
        problems.append(f"pipeline covers {plan.pipeline.num_layers} layers but the model has {model.num_layers}")
    if cluster.num_devices % p != 0:
        problems.append(f"pipeline degree {p} does not divide the {cluster.num_devices} devices")
    if plan.defer_weight_grads and plan.options.zero_stage >= ZeroStage.GRADIENTS:
        problems.append(
            "defer_weight_grads needs options.zero_stage 0 or 1: under ZeRO-2/3 every backward op reduce-scatters "
            "its gradients as they become final"
        )
    for lane in plan.lanes:
        if len(lane.ranks) != p or len(lane.schedule) != p or len(lane.recompute) != p:
            problems.append(
                f"lane {lane.lane_id}: ranks/schedule/recompute must have one entry per stage ({p}), got "
                f"{len(lane.ranks)}/{len(lane.schedule)}/{len(lane.recompute)}"
            )
    return problems


def _check_lane_layout(plan: Plan, cluster: ClusterSpec, model: ModelSpec) -> list[str]:
    problems = []
    topology = Topology.of(cluster, plan.pipeline.num_stages)  # `_check_pipeline` made sure P divides N
    block = topology.stage_block_size
    owner: dict[int, int] = {}
    ids = [lane.lane_id for lane in plan.lanes]
    if len(set(ids)) != len(ids):
        problems.append(f"lane ids are not unique: {ids}")
    for lane in plan.lanes:
        s = lane.sp_degree
        why = sp_degree_problem(s, model)
        if why:
            problems.append(f"lane {lane.lane_id}: {why}")
        offsets = set()
        for stage, ranks in enumerate(lane.ranks):
            lo = stage * block
            if len(ranks) != s:
                problems.append(f"lane {lane.lane_id} stage {stage}: {len(ranks)} ranks for SP degree {s}")
                continue
            if not topology.is_aligned_group(stage, ranks):
                problems.append(
                    f"lane {lane.lane_id} stage {stage}: ranks {ranks} are not an aligned block of {s} "
                    f"inside stage block [{lo}, {lo + block})"
                )
            offsets.add(ranks[0] - lo)
            for r in ranks:
                if r in owner:
                    problems.append(f"rank {r} is in lane {owner[r]} and lane {lane.lane_id}")
                owner[r] = lane.lane_id
        if len(offsets) > 1:
            problems.append(f"lane {lane.lane_id}: SP group offset differs between stages {sorted(offsets)}")
    idle = sorted(set(range(topology.num_devices)) - owner.keys())
    if idle:
        problems.append(f"ranks {idle[:16]}{'...' if len(idle) > 16 else ''} belong to no lane")
    return problems


def _check_tokens(plan: Plan, batch: Batch) -> list[str]:
    problems = []
    lengths = batch.length_of()
    covered: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)  # seq -> (start, end, lane, chunk)
    for lane in plan.lanes:
        for c, chunk in enumerate(lane.chunks):
            partial = 0
            for seg in chunk.segments:
                if seg.seq_id not in lengths:
                    problems.append(f"lane {lane.lane_id} chunk {c}: sequence {seg.seq_id} is not in the batch")
                    continue
                if seg.end > lengths[seg.seq_id]:
                    problems.append(
                        f"lane {lane.lane_id} chunk {c}: segment [{seg.start}, {seg.end}) runs past the end of "
                        f"sequence {seg.seq_id} (length {lengths[seg.seq_id]})"
                    )
                if seg.start > 0 or seg.end < lengths[seg.seq_id]:
                    partial += 1
                covered[seg.seq_id].append((seg.start, seg.end, lane.lane_id, c))
            if partial > 1:
                problems.append(f"lane {lane.lane_id} chunk {c}: holds slices of {partial} sequences (at most 1)")
    for seq_id, length in lengths.items():
        pieces = sorted(covered.get(seq_id, []))
        if not pieces:
            problems.append(f"sequence {seq_id} (length {length}) is in no chunk")
            continue
        lane_ids = {lane_id for _, _, lane_id, _ in pieces}
        if len(lane_ids) > 1:
            problems.append(f"sequence {seq_id}: slices are spread over lanes {sorted(lane_ids)} (must share one)")
        pos = 0
        for start, end, lane_id, c in pieces:
            if start > pos:
                problems.append(f"sequence {seq_id}: tokens [{pos}, {start}) are missing")
            elif start < pos:
                problems.append(
                    f"sequence {seq_id}: tokens [{start}, {min(pos, end)}) are duplicated (lane {lane_id} chunk {c})"
                )
            pos = max(pos, end)
        if pos < length:
            problems.append(f"sequence {seq_id}: tokens [{pos}, {length}) are missing")
    return problems


def _check_lane_shapes(lane: Lane, plan: Plan) -> list[str]:
    problems = []
    num_chunks = len(lane.chunks)
    for stage in range(plan.pipeline.num_stages):
        layers = plan.pipeline.layers_of(stage)
        rec = lane.recompute[stage]
        if len(rec) != num_chunks:
            problems.append(f"lane {lane.lane_id} stage {stage}: {len(rec)} recompute entries for {num_chunks} chunks")
        for c, r in enumerate(rec):
            if not 0 <= r <= layers:
                problems.append(f"lane {lane.lane_id} stage {stage} chunk {c}: recompute {r} not in [0, {layers}]")
        ops = lane.schedule[stage]
        seen = {(op.kind, op.chunk) for op in ops}
        expected = {(k, c) for c in range(num_chunks) for k in ("F", "B")}
        optional = {("W", c) for c in range(num_chunks)}
        if len(ops) != len(seen):
            problems.append(f"lane {lane.lane_id} stage {stage}: schedule repeats an op")
        for kind, c in sorted(expected - seen, key=lambda x: (x[1], x[0])):
            problems.append(f"lane {lane.lane_id} stage {stage}: schedule lacks {kind}{c}")
        for kind, c in sorted(seen - expected - optional, key=lambda x: (x[1], x[0])):
            problems.append(f"lane {lane.lane_id} stage {stage}: schedule names chunk {c} that does not exist ({kind})")
        if not plan.defer_weight_grads and seen & optional:
            problems.append(f"lane {lane.lane_id} stage {stage}: W ops need defer_weight_grads")
    return problems


def _check_schedule_order(lane: Lane, plan: Plan) -> list[str]:
    """Within each stage: F(c) before B(c); slices of one sequence F in token order, B in reverse."""
    problems = []
    slices: dict[int, list[tuple[int, int]]] = defaultdict(list)  # seq -> (start, chunk)
    for c, chunk in enumerate(lane.chunks):
        for seg in chunk.segments:
            slices[seg.seq_id].append((seg.start, c))
    chains = [(seq, [c for _, c in sorted(v)]) for seq, v in slices.items() if len(v) > 1]
    for stage, ops in enumerate(lane.schedule):
        pos = {(op.kind, op.chunk): i for i, op in enumerate(ops)}
        for c in range(len(lane.chunks)):
            if pos[("B", c)] < pos[("F", c)]:
                problems.append(f"lane {lane.lane_id} stage {stage} chunk {c}: B runs before F")
            if pos.get(("W", c), len(ops)) < pos[("B", c)]:
                problems.append(f"lane {lane.lane_id} stage {stage} chunk {c}: W runs before B")
        for seq, chain in chains:
            for earlier, later in itertools.pairwise(chain):
                if pos[("F", later)] < pos[("F", earlier)]:
                    problems.append(
                        f"lane {lane.lane_id} stage {stage}: F{later} runs before F{earlier} but holds a later "
                        f"slice of sequence {seq}"
                    )
                if pos[("B", earlier)] < pos[("B", later)]:
                    problems.append(
                        f"lane {lane.lane_id} stage {stage}: B{earlier} runs before B{later} but holds an earlier "
                        f"slice of sequence {seq} (backward of slices must be last-first)"
                    )
    return problems


def schedule_stuck_points(schedule: Sequence[Sequence[Op]]) -> list[str]:
    """Replay per-stage op lists with blocking receives and asynchronous sends; empty when they complete.

    F(c) on stage p waits for F(c) on stage p-1 (its input activation); B(c) on stage p waits for
    B(c) on stage p+1 (its output gradient). If no stage can advance before all are done, the
    executor would hang: the result says where each stage is stuck.
    """
    num_stages = len(schedule)
    done: set[tuple[str, int, int]] = set()
    cursor = [0] * num_stages
    progress = True
    while progress:
        progress = False
        for p in range(num_stages):
            ops = schedule[p]
            while cursor[p] < len(ops):
                op = ops[cursor[p]]
                if op.kind == "F":
                    ready = p == 0 or ("F", op.chunk, p - 1) in done
                elif op.kind == "B":
                    ready = p == num_stages - 1 or ("B", op.chunk, p + 1) in done
                else:  # W: the stage's own work, nothing to receive
                    ready = True
                if not ready:
                    break
                done.add((op.kind, op.chunk, p))
                cursor[p] += 1
                progress = True
    return [f"stage {p} waits at {schedule[p][cursor[p]]}" for p in range(num_stages) if cursor[p] < len(schedule[p])]


def _check_deadlock(lane: Lane, num_stages: int) -> list[str]:
    stuck = schedule_stuck_points(lane.schedule[:num_stages])
    return [f"lane {lane.lane_id}: schedule deadlocks ({', '.join(stuck)})"] if stuck else []


def _check_memory(plan: Plan, cluster: ClusterSpec) -> list[str]:
    peaks = plan.predicted.peak_memory_bytes
    if not peaks:
        return []
    if len(peaks) != cluster.num_devices:
        return [f"predicted.peak_memory_bytes has {len(peaks)} entries for {cluster.num_devices} ranks"]
    cap = cluster.device_memory_bytes
    return [
        f"rank {r}: predicted peak memory {m / 2**30:.2f} GiB exceeds device memory {cap / 2**30:.2f} GiB"
        for r, m in enumerate(peaks)
        if m > cap
    ]
