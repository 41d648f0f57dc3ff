"""Event-driven simulation of a whole plan: exact predicted iteration time, per-rank peak memory, Gantt events.

Model of execution (the executor's, see DESIGN §9):
- A lane runs independently of the other lanes until the gradient sync. Inside a lane, the s SP ranks of a
  stage move together (every op starts and ends with all-to-alls among them), so a (lane, stage) is one timeline.
- Stage p runs its ops in plan order, one at a time. F(c) on stage p starts once F(c) on p−1 has ended and its
  activations have arrived (p2p time); B(c) on p once B(c) on p+1 has ended and its gradient has arrived.
  Sends are asynchronous: they delay the receiver, not the sender.
- Each op is compute and all-to-alls in series (Ulysses all-to-alls sit on the critical path of every layer);
  a B op first recomputes the forward of its recomputed layers. With `Plan.defer_weight_grads`, a chunk with a
  W op in a stage's order defers the weight gradients of its kept (not recomputed) layers there: its B op is
  shorter by them (`LayerTerms.weight_grad_s` per layer) and sends at its end, longer by the profile's
  `deferred_layer_overhead_s` per kept layer; the W op computes them, with nothing to wait for or send.
  Every op also pays the profile's fixed `op_overhead_s` (the stage runtime's own work per micro-batch; 0 in
  presets, measured by `helix profile` and refined by calibration).
- Data-parallel collectives follow the executor contract of `cost_model.data_parallel`. ZeRO-0/1: the
  bucketed gradient reduction of stage p runs beside each lane's last B op on p, completes bucket by bucket
  once every lane has produced the bucket, and shares the links with that op's all-to-alls
  (`data_parallel.step_sync_end_s`); where W ops end the stage's order they are one group with the gradients
  produced evenly over the whole group (on the first stage over the last B op and the group, which runs inside
  it; `weight_grad_tail`); ZeRO-1 then all-gathers the parameters. ZeRO-2/3: the per-chunk
  collectives of an F or B op run beside it and lengthen it where they do not fit (`overlapped_op_s`); a lane
  with fewer chunks than the busiest of its block joins the remaining rounds after its ops; ZeRO-2 ends with the
  parameter all-gather. The iteration ends when the last stage's collectives end.
- Devices that time-share a compute unit (`CostProfile.devices_per_compute_unit` > 1: CPU ranks pinned several
  to a core) were profiled all busy; once a device's unit-mates are done it runs faster. Each (lane, stage)'s
  finish, last backward and events move to real time by the fluid model of `shared_compute`, before the step's
  collectives.

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
from planner_service.cost_model.comm_model import NO_TRAFFIC, LinkTimes
from planner_service.cost_model.data_parallel import (
    LastBackward,
    OverlappedCollectives,
    StageCollectiveTimes,
    first_bucket_s,
    overlapped_op_s,
    step_sync_end_s,
)
from planner_service.simulator.memory_timeline import stage_memory
from planner_service.simulator.shared_compute import shared_unit_maps
from proto import Batch, Lane, Plan, Predicted

EventKind = Literal["F", "B", "W", "R", "A2A", "P2P", "SYNC"]


class TimelineEvent(NamedTuple):
    """One bar of the Gantt chart: what a (lane, stage) — i.e. its ranks first..last — did and when.

    F/B are compute of a forward/backward op, R the recompute part of a backward, A2A its Ulysses all-to-alls,
    W a W op (a chunk's weight gradients, left by its backward op, which sent first: `Plan.defer_weight_grads`),
    P2P a send to the neighbouring stage (runs beside compute), SYNC data-parallel collectives (beside compute):
    those of op `chunk` (ZeRO-2/3), or with chunk = −1 the once-per-step ones and a lane's idle rounds.
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
    saved_tensor_peak_bytes: tuple[float, ...] = ()
    """Per rank, like `Predicted.peak_memory_bytes` but without the ops' transient working memory: reserve, model
    states and the tensors held for backward (with the operands queued for W ops), what the executor's CPU probe
    measures (`Feedback.peak_memory_source` 'saved_tensors'). Empty unless `simulate(..., saved_tensor_peaks=True)`."""


@dataclass(slots=True)
class _StageTotals:
    """Per (lane, stage) outcome, shared by its s ranks."""

    finish_s: float = 0.0
    compute_s: float = 0.0
    alltoall_s: float = 0.0
    p2p_s: float = 0.0
    recompute_s: float = 0.0
    collective_s: float = 0.0
    """Time ops were lengthened by data-parallel collectives that did not fit beside them, and idle rounds."""
    peak_activation_bytes: float = 0.0
    peak_saved_bytes: float = 0.0
    """The peak without op transients (only when asked for: `simulate(..., saved_tensor_peaks=True)`)."""
    last_backward: LastBackward | None = None

    @property
    def busy_s(self) -> float:
        """Time the devices are occupied by ops (sends run beside them)."""
        return self.compute_s + self.alltoall_s + self.recompute_s + self.collective_s


class SimulationError(ValueError):
    """The plan cannot be executed (e.g. its schedules deadlock); validate_plan reports why."""


def simulate(
    plan: Plan, batch: Batch, cost: CostModel, *, record_events: bool = True, saved_tensor_peaks: bool = False
) -> SimulationResult:
    """Simulate `plan` on `batch` with `cost`; `record_events=False` skips the Gantt events (faster in solvers);
    `saved_tensor_peaks=True` also gives each rank's peak without op transients (`SimulationResult`).

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
    collectives = [cost.collective_times(p, pipeline) for p in range(num_stages)]
    max_chunks = max(len(lane.chunks) for lane in plan.lanes)

    per_lane: list[list[_StageTotals]] = []
    for lane in plan.lanes:
        lane_events = events if record_events else None
        per_lane.append(_simulate_lane(lane, plan, cost, collectives, lengths, lane_events, saved_tensor_peaks))
    if cost.profile.devices_per_compute_unit > 1:
        events = _share_compute_units(plan, per_lane, cost.profile.devices_per_compute_unit, events)
    lane_s = [max((t.finish_s for t in totals), default=0.0) for totals in per_lane]
    stage_end = _stage_collectives_end(plan, per_lane, collectives, events if record_events else None)
    iteration_s = max(stage_end)
    if record_events:
        events.sort(key=attrgetter("start_s"))  # stable: ties keep lane, stage, op order

    state_bytes = [cost.model_state_bytes(p, pipeline, dp_size) for p in range(num_stages)]
    peak = [0.0] * num_devices
    saved_peak = [0.0] * num_devices
    busy_total = 0.0
    busiest = (-1.0, 0.0, 0.0, 0.0)  # (busy, compute, comm, recompute)
    for lane, totals in zip(plan.lanes, per_lane, strict=True):
        for p, t in enumerate(totals):
            mem = cost.memory_reserve_bytes + state_bytes[p] + t.peak_activation_bytes
            saved = cost.memory_reserve_bytes + state_bytes[p] + t.peak_saved_bytes
            for r in lane.ranks[p]:
                peak[r] = mem
                saved_peak[r] = saved
            busy = t.busy_s
            busy_total += busy * lane.sp_degree
            if busy > busiest[0]:
                busiest = (busy, t.compute_s, t.alltoall_s + t.p2p_s + t.collective_s, t.recompute_s)
    pipe_end = max(t.finish_s for totals in per_lane for t in totals)
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
        grad_sync_s=max(times.total_s(max_chunks) for times in collectives),
    )
    return SimulationResult(
        predicted=predicted,
        events=tuple(events),
        saved_tensor_peak_bytes=tuple(saved_peak) if saved_tensor_peaks else (),
    )


def _share_compute_units(
    plan: Plan, per_lane: list[list[_StageTotals]], devices_per_unit: int, events: list[TimelineEvent]
) -> list[TimelineEvent]:
    """Move each (lane, stage)'s finish, last backward and events to real time on devices that share compute
    units (`shared_compute`); returns the moved events."""
    keys = [(lane.lane_id, p) for lane in plan.lanes for p in range(len(lane.ranks))]
    totals = [t for lane_totals in per_lane for t in lane_totals]
    ranks = [lane.ranks[p] for lane in plan.lanes for p in range(len(lane.ranks))]
    maps = shared_unit_maps([(t.finish_s, r) for t, r in zip(totals, ranks, strict=True)], devices_per_unit)
    for t, to_real in zip(totals, maps, strict=True):
        t.finish_s = to_real(t.finish_s)
        if t.last_backward is not None:
            lb = t.last_backward
            t.last_backward = replace(lb, start_s=to_real(lb.start_s), end_s=to_real(lb.end_s))
    by_key = dict(zip(keys, maps, strict=True))
    return [e._replace(start_s=(m := by_key[(e.lane_id, e.stage)])(e.start_s), end_s=m(e.end_s)) for e in events]


class _OpTimes(NamedTuple):
    """Seconds of one op on a (lane, stage): its own work in series, and its length beside its collectives."""

    recompute_s: float
    compute_s: float
    alltoall_s: float
    duration_s: float
    """At least recompute + compute + all-to-alls; more when per-chunk data-parallel collectives do not fit."""
    lead_s: float
    """Collective piece the work waits for (ZeRO-3: the first unit's all-gather)."""
    alltoall: LinkTimes
    collective_s: float
    """The op's data-parallel collectives on their own (0: none)."""


def _op_times(
    recompute_s: float, compute_s: float, alltoall_s: float, alltoall: LinkTimes, collectives: OverlappedCollectives
) -> _OpTimes:
    serial = recompute_s + compute_s + alltoall_s
    duration = overlapped_op_s(serial, alltoall, collectives)
    lead = collectives.lead_s if collectives.links.duration_s > 0 else 0.0
    return _OpTimes(recompute_s, compute_s, alltoall_s, duration, lead, alltoall, collectives.links.duration_s)


def _stage_collectives_end(
    plan: Plan,
    per_lane: list[list[_StageTotals]],
    collectives: list[StageCollectiveTimes],
    events: list[TimelineEvent] | None,
) -> list[float]:
    """Per stage, when its data-parallel collectives end, after the lanes' own ops.

    Lanes with fewer chunks than the busiest join its remaining per-chunk rounds without compute (their
    finish moves); the bucketed ZeRO-0/1 reduction completes behind every lane's last backward; the ZeRO-1/2
    parameter all-gather follows.
    """
    max_chunks = max(len(lane.chunks) for lane in plan.lanes)
    for lane, totals in zip(plan.lanes, per_lane, strict=True):
        for p, t in enumerate(totals):
            extra = (max_chunks - len(lane.chunks)) * collectives[p].idle_round_s
            if extra > 0 and events is not None:
                events.append(_event(lane, p, "SYNC", -1, t.finish_s, t.finish_s + extra))
            t.finish_s += extra
            t.collective_s += extra
    ends = []
    for p, times in enumerate(collectives):
        finish = max(totals[p].finish_s for totals in per_lane)
        last = [lb for totals in per_lane if (lb := totals[p].last_backward) is not None]
        sync_end = max(finish, step_sync_end_s(times.step_sync, times.step_bucket_share, last))
        ends.append(sync_end + times.after_step_s)
        if events is None:
            continue
        for lane, totals in zip(plan.lanes, per_lane, strict=True):
            lb = totals[p].last_backward
            if times.step_sync.duration_s > 0 and lb is not None:
                events.append(_event(lane, p, "SYNC", -1, first_bucket_s(lb, times.step_bucket_share), sync_end))
            if times.after_step_s > 0:
                events.append(_event(lane, p, "SYNC", -1, sync_end, ends[p]))
    return ends


class LaneOpCosts(NamedTuple):
    """Every op's cost on one lane, [stage][chunk]."""

    forward: list[list[_OpTimes]]
    backward: list[list[_OpTimes]]
    """B(c) as it runs without a W op: the whole backward."""
    backward_split: list[list[_OpTimes]]
    """B(c) whose weight gradients a W(c) computes (`defer_weight_grads` only)."""
    weight_grads: list[list[float]]
    """Seconds of W(c): the kept layers' weight gradients."""
    p2p: list[list[float]]
    """[p][c]: the send from stage p to p+1 (activations) or p+1 to p (gradients): same size and link."""


def lane_op_costs(
    lane: Lane,
    plan: Plan,
    cost: CostModel,
    collectives: list[StageCollectiveTimes],
    shapes: list[ChunkShape] | None = None,
) -> LaneOpCosts:
    """The cost of every op of `lane` under `plan` (its pipeline, recompute counts and `defer_weight_grads`)."""
    pipeline = plan.pipeline
    num_stages = pipeline.num_stages
    cluster = cost.cluster
    s = lane.sp_degree
    shapes = shapes if shapes is not None else [ChunkShape.of(c) for c in lane.chunks]
    num_chunks = len(shapes)
    spans = [cluster.spans_nodes(lane.ranks[p]) for p in range(num_stages)]
    terms_by_span: dict[bool, list[LayerTerms]] = {}
    for sp in set(spans):
        terms_by_span[sp] = [cost.layer_terms(sh, sp_degree=s, spans_nodes=sp) for sh in shapes]
    op_overhead = cost.profile.op_overhead_s
    defers = plan.defer_weight_grads
    deferral_overhead = cost.profile.deferred_layer_overhead_s
    f_cost: list[list[_OpTimes]] = []
    b_cost: list[list[_OpTimes]] = []
    b_split: list[list[_OpTimes]] = []
    w_cost: list[list[float]] = []
    for p in range(num_stages):
        layers = pipeline.layers_of(p)
        last = p == num_stages - 1
        terms = terms_by_span[spans[p]]
        rec = lane.recompute[p]
        fp, bp, sp_, wp = [], [], [], []
        for c in range(num_chunks):
            term = terms[c]
            r = min(max(rec[c], 0), layers)
            comm = layers * term.alltoall_s
            forward = layers * term.forward_s + (term.head_s if last else 0.0) + op_overhead
            backward = layers * term.backward_s + (term.head_backward_s if last else 0.0) + op_overhead
            fp.append(_op_times(0.0, forward, comm, term.alltoall.scaled(layers), collectives[p].forward))
            recompute = r * term.recompute_s
            links = term.alltoall.scaled(layers + r * term.recompute_alltoalls)
            b_op = _op_times(recompute, backward, comm, links, collectives[p].backward)
            if not defers:  # validation allows deferral at ZeRO-0/1 only: no per-op collectives to fit around
                bp.append(b_op)
                sp_.append(b_op)
                wp.append(0.0)
                continue
            w_part, extra = (layers - r) * term.weight_grad_s, (layers - r) * deferral_overhead
            bp.append(b_op)
            shift = extra - w_part
            sp_.append(b_op._replace(compute_s=b_op.compute_s + shift, duration_s=b_op.duration_s + shift))
            wp.append(w_part)
        f_cost.append(fp)
        b_cost.append(bp)
        b_split.append(sp_)
        w_cost.append(wp)
    tokens = [sh.num_tokens for sh in shapes]
    p2p = []
    for p in range(num_stages - 1):
        crosses = any(
            cluster.node_of(a) != cluster.node_of(b) for a, b in zip(lane.ranks[p], lane.ranks[p + 1], strict=True)
        )
        p2p.append([cost.p2p_s(n, s, crosses) for n in tokens])
    return LaneOpCosts(f_cost, b_cost, b_split, w_cost, p2p)


def _simulate_lane(
    lane: Lane,
    plan: Plan,
    cost: CostModel,
    collectives: list[StageCollectiveTimes],
    lengths: dict[int, int],
    events: list[TimelineEvent] | None,
    saved_tensor_peaks: bool = False,
) -> list[_StageTotals]:
    """Time and memory of every stage of one lane."""
    pipeline = plan.pipeline
    num_stages = pipeline.num_stages
    chunks = lane.chunks
    num_chunks = len(chunks)
    totals = [_StageTotals() for _ in range(num_stages)]
    if num_chunks == 0:
        return totals

    shapes = [ChunkShape.of(c) for c in chunks]
    costs = lane_op_costs(lane, plan, cost, collectives, shapes)
    f_cost, p2p = costs.forward, costs.p2p
    explicit_w = [{op.chunk for op in ops if op.kind == "W"} for ops in lane.schedule]
    b_cost = [
        [costs.backward_split[p][c] if c in explicit_w[p] else costs.backward[p][c] for c in range(num_chunks)]
        for p in range(num_stages)
    ]

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
        advanced_f = advanced_b = False
        while cursor[p] < len(ops):
            op = ops[cursor[p]]
            c = op.chunk
            if op.kind == "W":  # the stage's own work: no input to wait for, nothing to send
                start = free[p]
                end = start + costs.weight_grads[p][c]
                t.compute_s += end - start
                # the W ops that end a stage's order run as one group, layer by layer (`weight_grad_tail`): its
                # gradients become final evenly over the whole run; on the first stage, which sends nothing, the
                # last B op runs the group beside its own backward, so the window opens when that B starts. On
                # later stages the executor arms the sync at the B too, where buckets of parameters outside the
                # group (norms, the LM head) may go early: the window at the first W leaves that out (later)
                previous = t.last_backward
                joins = p == 0 or (cursor[p] > 0 and ops[cursor[p] - 1].kind == "W")
                if previous is not None and joins:
                    t.last_backward = LastBackward(previous.start_s, end, previous.alltoall)
                else:
                    t.last_backward = LastBackward(start, end, NO_TRAFFIC)
                if events is not None:
                    events.append(_event(lane, p, "W", c, start, end))
                free[p] = end
                cursor[p] += 1
                continue
            forward = op.kind == "F"
            if forward and p > 0:
                prev = f_end[p - 1][c]
                if prev is None:
                    break
                ready = prev + p2p[p - 1][c]
            elif not forward and p < num_stages - 1:
                nxt = b_end[p + 1][c]
                if nxt is None:
                    break
                ready = nxt + p2p[p][c]
            else:
                ready = 0.0
            times = f_cost[p][c] if forward else b_cost[p][c]
            start = max(free[p], ready)
            end = start + times.duration_s
            (f_end if forward else b_end)[p][c] = end
            t.recompute_s += times.recompute_s
            t.compute_s += times.compute_s
            t.alltoall_s += times.alltoall_s
            t.collective_s += times.duration_s - (times.recompute_s + times.compute_s + times.alltoall_s)
            send_to = p + 1 if forward else p - 1
            sends = 0 <= send_to < num_stages
            send_s = p2p[min(p, send_to)][c] if sends else 0.0
            t.p2p_s += send_s
            if not forward:
                t.last_backward = LastBackward(start, end, times.alltoall)
            if events is not None:
                _op_events(events, lane, p, op.kind, c, start, end, times, send_s if sends else None)
            if forward:
                advanced_f = True
            else:
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

    _lane_memory(lane, plan, cost, shapes, lengths, totals, saved_tensor_peaks)
    return totals


def _event(lane: Lane, stage: int, kind: EventKind, chunk: int, start_s: float, end_s: float) -> TimelineEvent:
    ranks = lane.ranks[stage]
    return TimelineEvent(lane.lane_id, stage, (ranks[0], ranks[-1]), kind, chunk, start_s, end_s)


def _op_events(
    events: list[TimelineEvent],
    lane: Lane,
    stage: int,
    kind: Literal["F", "B"],
    chunk: int,
    start: float,
    end: float,
    times: _OpTimes,
    send_s: float | None,
) -> None:
    """The bars of one op: [collective lead,] recompute, compute, all-to-alls; its collectives beside it; its send."""
    at = start + times.lead_s
    if times.recompute_s > 0:
        events.append(_event(lane, stage, "R", chunk, at, at + times.recompute_s))
        at += times.recompute_s
    events.append(_event(lane, stage, kind, chunk, at, at + times.compute_s))
    at += times.compute_s
    if times.alltoall_s > 0:
        events.append(_event(lane, stage, "A2A", chunk, at, at + times.alltoall_s))
    if times.collective_s > 0:
        events.append(_event(lane, stage, "SYNC", chunk, start, end))
    if send_s is not None:
        events.append(_event(lane, stage, "P2P", chunk, end, end + send_s))


def _lane_memory(
    lane: Lane,
    plan: Plan,
    cost: CostModel,
    shapes: list[ChunkShape],
    lengths: dict[int, int],
    totals: list[_StageTotals],
    saved_tensor_peaks: bool = False,
) -> None:
    """Peak activation-side bytes per stage of a lane, from each stage's op order (and without op transients)."""
    tokens = [sh.num_tokens for sh in shapes]
    prefix_rows = [sh.prefix_kv_rows for sh in shapes]
    for p in range(plan.pipeline.num_stages):
        memory = stage_memory(lane, plan.pipeline, p, cost, lengths, tokens, prefix_rows)
        totals[p].peak_activation_bytes = memory.peak(lane.recompute[p])
        if saved_tensor_peaks:
            totals[p].peak_saved_bytes = memory.peak(lane.recompute[p], transients=False)
