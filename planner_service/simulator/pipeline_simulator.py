"""Event-driven simulation of a whole plan: exact predicted iteration time, per-rank peak memory, Gantt events.

Model of execution (the executor's, see DESIGN §9):
- A lane runs independently of the other lanes until the gradient sync. Inside a lane, the s SP ranks of a
  stage move together (every op starts and ends with all-to-alls among them), so a (lane, stage) is one timeline.
- Stage p runs its ops in plan order, one at a time. F(c) on stage p starts once F(c) on p−1 has ended and its
  activations have arrived (p2p time); B(c) on p once B(c) on p+1 has ended and its gradient has arrived.
  Sends are asynchronous: they delay the receiver, not the sender.
- Each op is compute and all-to-alls in series (Ulysses all-to-alls sit on the critical path of every layer);
  a B op first recomputes the forward of its recomputed layers.
- Stage p's data-parallel gradient sync is bucketed layer by layer behind the final backward, as DDP buckets,
  Megatron's overlap_grad_reduce and ZeRO's overlap_comm do: gradients are final only during each lane's last
  B op on the stage, so the sync starts when the last lane starts its final B and ends no earlier than that
  start plus the whole sync, nor than the stage's finish plus one layer's share of it (the last bucket stays
  exposed). The iteration ends when the last stage's sync ends.

Memory depends only on each stage's op order: a chunk's activations are held from its forward until its
backward ends; a non-final slice of a sequence also keeps the K/V of its recomputed layers (later slices attend
to them) and, from the first backward of a later slice, dK/dV accumulators for all the stage's layers, until its
own backward ends. Each op adds its transient working memory. Peak = reserve + model states + the maximum.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Literal, NamedTuple

from planner_service.cost_model import ChunkShape, CostModel, LayerTerms
from planner_service.simulator.memory_timeline import stage_memory
from proto import Batch, Lane, Plan, Predicted

EventKind = Literal["F", "B", "R", "A2A", "P2P", "SYNC"]


class TimelineEvent(NamedTuple):
    """One bar of the Gantt chart: what a (lane, stage) — i.e. its ranks first..last — did and when.

    F/B are compute of a forward/backward op, R the recompute part of a backward, A2A its Ulysses all-to-alls,
    P2P a send to the neighbouring stage (runs beside compute), SYNC the stage's gradient sync (chunk = −1).
    An immutable named tuple rather than a frozen dataclass: a large plan makes thousands per simulation.
    """

    lane_id: int
    stage: int
    ranks: tuple[int, int]
    kind: EventKind
    chunk: int
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """Predictions for the plan plus the timeline they come from."""

    predicted: Predicted
    events: tuple[TimelineEvent, ...]


@dataclass(slots=True)
class _StageTotals:
    """Per (lane, stage) outcome, shared by its s ranks."""

    finish_s: float = 0.0
    compute_s: float = 0.0
    alltoall_s: float = 0.0
    p2p_s: float = 0.0
    recompute_s: float = 0.0
    peak_activation_bytes: float = 0.0
    last_b_start_s: float = 0.0

    @property
    def busy_s(self) -> float:
        """Time the devices' compute stream is occupied (sends run beside it)."""
        return self.compute_s + self.alltoall_s + self.recompute_s


class SimulationError(ValueError):
    """The plan cannot be executed (e.g. its schedules deadlock); validate_plan reports why."""


def simulate(plan: Plan, batch: Batch, cost: CostModel, *, record_events: bool = True) -> SimulationResult:
    """Simulate `plan` on `batch` with `cost`; `record_events=False` skips the Gantt events (faster in solvers).

    The plan's own `options` (ZeRO stage) are what the executor will run, so they override `cost.options`.
    Raises `SimulationError` when the plan does not fit the cost model's cluster or its schedules deadlock.
    """
    if cost.options != plan.options:
        cost = replace(cost, options=plan.options)
    pipeline = plan.pipeline
    num_stages = pipeline.num_stages
    num_devices = cost.cluster.num_devices
    if num_devices % num_stages:
        raise SimulationError(f"pipeline degree {num_stages} does not divide the cluster's {num_devices} devices")
    top = max((r for lane in plan.lanes for ranks in lane.ranks for r in ranks), default=0)
    if top >= num_devices:
        raise SimulationError(f"plan uses rank {top} but the cluster has {num_devices} devices")
    lengths = batch.length_of()
    dp_size = cost.dp_size(pipeline)
    events: list[TimelineEvent] = []

    stage_finish = [0.0] * num_stages
    last_b_start = [0.0] * num_stages
    lane_s: list[float] = []
    per_lane: list[list[_StageTotals]] = []
    for lane in plan.lanes:
        totals = _simulate_lane(lane, plan, cost, lengths, events if record_events else None)
        per_lane.append(totals)
        lane_s.append(max((t.finish_s for t in totals), default=0.0))
        for p, t in enumerate(totals):
            stage_finish[p] = max(stage_finish[p], t.finish_s)
            last_b_start[p] = max(last_b_start[p], t.last_b_start_s)

    sync_s = [cost.grad_sync_s(p, pipeline) for p in range(num_stages)]
    sync_end = [
        max(stage_finish[p] + sync_s[p] / pipeline.layers_of(p), last_b_start[p] + sync_s[p]) for p in range(num_stages)
    ]
    iteration_s = max(sync_end)
    if record_events:
        for lane in plan.lanes:
            for p in range(num_stages):
                if sync_s[p] > 0:
                    ranks = lane.ranks[p]
                    events.append(
                        TimelineEvent(
                            lane.lane_id,
                            p,
                            (ranks[0], ranks[-1]),
                            "SYNC",
                            -1,
                            sync_end[p] - sync_s[p],
                            sync_end[p],
                        )
                    )
        events.sort(key=attrgetter("start_s"))  # stable: ties keep lane, stage, op order

    state_bytes = [cost.model_state_bytes(p, pipeline, dp_size) for p in range(num_stages)]
    peak = [0.0] * num_devices
    busy_total = 0.0
    busiest = (-1.0, 0.0, 0.0, 0.0)  # (busy, compute, comm, recompute)
    for lane, totals in zip(plan.lanes, per_lane, strict=True):
        for p, t in enumerate(totals):
            mem = cost.memory_reserve_bytes + state_bytes[p] + t.peak_activation_bytes
            for r in lane.ranks[p]:
                peak[r] = mem
            busy = t.busy_s
            busy_total += busy * lane.sp_degree
            if busy > busiest[0]:
                busiest = (busy, t.compute_s, t.alltoall_s + t.p2p_s, t.recompute_s)
    pipe_end = max(stage_finish)
    bubble = 0.0
    if pipe_end > 0:
        bubble = min(max(1.0 - busy_total / (num_devices * pipe_end), 0.0), 1.0)

    predicted = Predicted(
        iteration_s=iteration_s,
        ideal_s=cost.ideal_s(batch),
        lane_s=lane_s,
        peak_memory_bytes=peak,
        bubble_fraction=bubble,
        compute_s=busiest[1],
        comm_s=busiest[2],
        recompute_s=busiest[3],
        grad_sync_s=max(sync_s),
    )
    return SimulationResult(predicted=predicted, events=tuple(events))


def _simulate_lane(
    lane: Lane, plan: Plan, cost: CostModel, lengths: dict[int, int], events: list[TimelineEvent] | None
) -> list[_StageTotals]:
    """Time and memory of every stage of one lane."""
    pipeline = plan.pipeline
    num_stages = pipeline.num_stages
    cluster = cost.cluster
    s = lane.sp_degree
    chunks = lane.chunks
    num_chunks = len(chunks)
    totals = [_StageTotals() for _ in range(num_stages)]
    if num_chunks == 0:
        return totals

    shapes = [ChunkShape.of(c) for c in chunks]
    tokens = [sh.num_tokens for sh in shapes]

    # ---- per-stage op costs ------------------------------------------------------------------------------
    spans = [cluster.spans_nodes(lane.ranks[p]) for p in range(num_stages)]
    terms_by_span: dict[bool, list[LayerTerms]] = {}
    for sp in set(spans):
        terms_by_span[sp] = [cost.layer_terms(sh, sp_degree=s, spans_nodes=sp) for sh in shapes]
    f_cost: list[list[tuple[float, float]]] = []  # [p][c] -> (compute, comm)
    b_cost: list[list[tuple[float, float, float]]] = []  # [p][c] -> (recompute, compute, comm)
    for p in range(num_stages):
        layers = pipeline.layers_of(p)
        last = p == num_stages - 1
        terms = terms_by_span[spans[p]]
        rec = lane.recompute[p]
        fp, bp = [], []
        for c in range(num_chunks):
            term = terms[c]
            comm = layers * term.alltoall_s
            r = min(max(rec[c], 0), layers)
            fp.append((layers * term.forward_s + (term.head_s if last else 0.0), comm))
            backward = layers * term.backward_s + (term.head_backward_s if last else 0.0)
            bp.append((r * (term.forward_s + term.alltoall_s), backward, comm))
        f_cost.append(fp)
        b_cost.append(bp)
    p2p = []  # [p][c]: send from stage p to p+1 (activations) or p+1 to p (gradients): same size and link
    for p in range(num_stages - 1):
        crosses = any(
            cluster.node_of(a) != cluster.node_of(b) for a, b in zip(lane.ranks[p], lane.ranks[p + 1], strict=True)
        )
        p2p.append([cost.p2p_s(n, s, crosses) for n in tokens])

    # ---- timing: replay the schedules, waking a neighbour whenever an op it may wait on ends -----------
    f_end: list[list[float | None]] = [[None] * num_chunks for _ in range(num_stages)]
    b_end: list[list[float | None]] = [[None] * num_chunks for _ in range(num_stages)]
    cursor = [0] * num_stages
    free = [0.0] * num_stages
    pending = list(range(num_stages - 1, -1, -1))
    queued = [True] * num_stages
    while pending:
        p = pending.pop()
        queued[p] = False
        ops = lane.schedule[p]
        t = totals[p]
        ranks = (lane.ranks[p][0], lane.ranks[p][-1])
        advanced_f = advanced_b = False
        while cursor[p] < len(ops):
            op = ops[cursor[p]]
            c = op.chunk
            if op.kind == "F":
                if p == 0:
                    ready = 0.0
                else:
                    prev = f_end[p - 1][c]
                    if prev is None:
                        break
                    ready = prev + p2p[p - 1][c]
                start = max(free[p], ready)
                comp, comm = f_cost[p][c]
                end = start + comp + comm
                f_end[p][c] = end
                t.compute_s += comp
                t.alltoall_s += comm
                if events is not None:
                    events.append(TimelineEvent(lane.lane_id, p, ranks, "F", c, start, start + comp))
                    if comm > 0:
                        events.append(TimelineEvent(lane.lane_id, p, ranks, "A2A", c, start + comp, end))
                    if p + 1 < num_stages:
                        events.append(TimelineEvent(lane.lane_id, p, ranks, "P2P", c, end, end + p2p[p][c]))
                if p + 1 < num_stages:
                    t.p2p_s += p2p[p][c]
                advanced_f = True
            else:
                if p == num_stages - 1:
                    ready = 0.0
                else:
                    nxt = b_end[p + 1][c]
                    if nxt is None:
                        break
                    ready = nxt + p2p[p][c]
                start = max(free[p], ready)
                t.last_b_start_s = start
                recomp, comp, comm = b_cost[p][c]
                end = start + recomp + comp + comm
                b_end[p][c] = end
                t.recompute_s += recomp
                t.compute_s += comp
                t.alltoall_s += comm
                if events is not None:
                    if recomp > 0:
                        events.append(TimelineEvent(lane.lane_id, p, ranks, "R", c, start, start + recomp))
                    events.append(TimelineEvent(lane.lane_id, p, ranks, "B", c, start + recomp, start + recomp + comp))
                    if comm > 0:
                        events.append(TimelineEvent(lane.lane_id, p, ranks, "A2A", c, start + recomp + comp, end))
                    if p > 0:
                        events.append(TimelineEvent(lane.lane_id, p, ranks, "P2P", c, end, end + p2p[p - 1][c]))
                if p > 0:
                    t.p2p_s += p2p[p - 1][c]
                advanced_b = True
            free[p] = end
            cursor[p] += 1
        if advanced_f and p + 1 < num_stages and not queued[p + 1]:
            pending.append(p + 1)
            queued[p + 1] = True
        if advanced_b and p > 0 and not queued[p - 1]:
            pending.append(p - 1)
            queued[p - 1] = True
    stuck = [p for p in range(num_stages) if cursor[p] < len(lane.schedule[p])]
    if stuck:
        where = ", ".join(f"stage {p} at {lane.schedule[p][cursor[p]]}" for p in stuck)
        raise SimulationError(f"lane {lane.lane_id}: schedule deadlocks ({where})")
    for p in range(num_stages):
        totals[p].finish_s = free[p]

    _lane_memory(lane, plan, cost, tokens, lengths, totals)
    return totals


def _lane_memory(
    lane: Lane, plan: Plan, cost: CostModel, tokens: list[int], lengths: dict[int, int], totals: list[_StageTotals]
) -> None:
    """Peak activation-side bytes per stage of a lane, from each stage's op order."""
    for p in range(plan.pipeline.num_stages):
        memory = stage_memory(lane, plan.pipeline, p, cost, lengths, tokens)
        totals[p].peak_activation_bytes = memory.peak(lane.recompute[p])
