"""Where a plan's deferred weight gradients run: W ops right after their backward, or in the gaps a stage would
otherwise wait through.

With `Plan.defer_weight_grads` a chunk with a W op in a stage's order splits its backward there: the B op computes
the input gradient and sends it, the W op the kept layers' weight gradients. A W right after its B already
shortens the pipeline drain by it once per stage boundary; running it later, while the stage waits for its next
input, shortens it again (the zero-bubble schedules of Qi et al., "Zero Bubble Pipeline Parallelism", 2024: the
weight-gradient pass has no cross-stage dependency and fills bubbles). A chunk without a W op is not split.

`place_weight_grads` replays each lane in global time order with the simulator's op costs (`lane_op_costs`): a
stage whose next F or B cannot start yet runs the oldest queued W instead when the W fits the wait: before the
input's arrival when that is known, within the shortest time its producer (the neighbour's op of the same chunk,
not started yet) can take when it is not. A W that would only delay the next op waits.

Memory decides per chunk, against what the device has for activations beside the stage's model states: a B
queues its W (`queue=True`) only while the chunks in flight, the queued W ops' operands (their GEMMs' inputs and
output gradients, `CostModel.weight_grad_operand_bytes`), room for one more chunk and the stage's largest working
memory of one op still fit; otherwise its W follows it at once when the B's rise fits beside what is held (its
operands less the activations its layers free, `CostModel.deferring_backward_bytes`; not on the first stage,
which sends nothing, so gains nothing); otherwise the chunk is not split. The
simulator's peak has the last word on memory. W ops still queued when the stage has nothing else to do run at
its end. The result is the plan with explicit W ops in its stages' op orders, which the executor follows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

from planner_service.cost_model import CostModel
from planner_service.schedules.pipeline_schedule import op_of
from planner_service.simulator.memory_timeline import StageMemory, stage_memory
from planner_service.simulator.pipeline_simulator import LaneOpCosts, lane_op_costs
from proto import Batch, Lane, Op, Plan


def place_weight_grads(
    plan: Plan, batch: Batch, cost: CostModel, *, queue: bool = True, margin_bytes: Sequence[float] | None = None
) -> Plan:
    """`plan` (with `defer_weight_grads`) with W ops: where its stages would wait (`queue`), or right after their
    B ops (see the module docstring); `margin_bytes[p]`: memory of stage p to leave unused besides (a caller's
    correction after a placement whose simulated peak overflowed)."""
    if not plan.defer_weight_grads:
        raise ValueError("W ops need a plan with defer_weight_grads")
    if cost.options != plan.options:
        cost = replace(cost, options=plan.options)
    pipeline = plan.pipeline
    num_stages = pipeline.num_stages
    collectives = [cost.collective_times(p, pipeline) for p in range(num_stages)]
    dp_size = cost.dp_size(pipeline)
    margin = margin_bytes or [0.0] * num_stages
    room = [
        cost.usable_memory_bytes - cost.model_state_bytes(p, pipeline, dp_size) - margin[p] for p in range(num_stages)
    ]
    lengths = batch.length_of()
    lanes = []
    for lane in plan.lanes:
        bare = without_weight_grad_ops(lane)
        tokens = [chunk.num_tokens for chunk in bare.chunks]
        memory = [
            _StageRoom.of(stage_memory(bare, pipeline, p, cost, lengths, tokens), bare, p, cost, room[p])
            for p in range(num_stages)
        ]
        schedule = _placed(bare, lane_op_costs(bare, plan, cost, collectives), memory, queue=queue)
        lanes.append(bare.model_copy(update={"schedule": schedule}))
    return plan.model_copy(update={"lanes": lanes})


def without_weight_grad_ops(lane: Lane) -> Lane:
    """`lane` with its W ops removed: every chunk's backward whole again."""
    return lane.model_copy(update={"schedule": [[op for op in ops if op.kind != "W"] for ops in lane.schedule]})


@dataclass(frozen=True, slots=True)
class _StageRoom:
    """What a stage's activations may take, and what each chunk takes, for the queueing test."""

    room: float
    """Device memory less the reserve, the stage's model states and its largest op's working memory."""
    held: tuple[float, ...]
    """held[c]: chunk c's activations from its F to its B."""
    gradients: tuple[float, ...]
    """gradients[c]: what B(c) adds at its peak when it defers (`CostModel.deferring_backward_bytes`)."""
    operands: tuple[float, ...]
    """operands[c]: what chunk c keeps from its B to its W."""

    @property
    def largest_held(self) -> float:
        """Room kept for one more chunk in flight: queued operands must not crowd out the next forward."""
        return max(self.held, default=0.0)

    @classmethod
    def of(cls, memory: StageMemory, lane: Lane, stage: int, cost: CostModel, room: float) -> _StageRoom:
        recompute = lane.recompute[stage]
        kept = [memory.num_layers - r for r in recompute]
        s = lane.sp_degree
        tokens = [chunk.num_tokens for chunk in lane.chunks]
        return cls(
            room=room - max(memory.op_constant, default=0.0),
            held=tuple(memory.base[c] + memory.per_layer[c] * r for c, r in enumerate(recompute)),
            gradients=tuple(cost.deferring_backward_bytes(n, s) * k for n, k in zip(tokens, kept, strict=True)),
            operands=tuple(cost.weight_grad_operand_bytes(n, s) * k for n, k in zip(tokens, kept, strict=True)),
        )


def _placed(lane: Lane, costs: LaneOpCosts, memory: list[_StageRoom], *, queue: bool) -> list[list[Op]]:
    """The lane's F/B op orders with W ops inserted (one lane, global time order)."""
    schedule = lane.schedule
    num_stages = len(schedule)
    num_chunks = len(lane.chunks)
    last = num_stages - 1
    cursor = [0] * num_stages
    free = [0.0] * num_stages
    used = [0.0] * num_stages  # activations in flight + operands of queued W ops
    queued: list[deque[int]] = [deque() for _ in range(num_stages)]
    f_end: list[list[float | None]] = [[None] * num_chunks for _ in range(num_stages)]
    b_sent: list[list[float | None]] = [[None] * num_chunks for _ in range(num_stages)]
    placed: list[list[Op]] = [[] for _ in range(num_stages)]

    def shortest_wait(p: int, op: Op) -> float:
        """The least time before an input not computed yet can arrive: its producer's shortest op and the send."""
        c = op.chunk
        if op.kind == "F":
            return costs.forward[p - 1][c].duration_s + costs.p2p[p - 1][c]
        return costs.backward_split[p + 1][c].duration_s + costs.p2p[p][c]

    def ready_at(p: int, op: Op) -> float | None:
        """When op's input is on stage p (None: not computed yet)."""
        c = op.chunk
        if op.kind == "F":
            if p == 0:
                return 0.0
            done = f_end[p - 1][c]
            return None if done is None else done + costs.p2p[p - 1][c]
        if p == last:
            return 0.0  # after its own F, which precedes it in the stage's order
        sent = b_sent[p + 1][c]
        return None if sent is None else sent + costs.p2p[p][c]

    while True:
        best: tuple[float, int, Op | None] | None = None  # (start, stage, op; None: the oldest queued W)
        for p in range(num_stages):
            nxt = schedule[p][cursor[p]] if cursor[p] < len(schedule[p]) else None
            ready = ready_at(p, nxt) if nxt is not None else None
            if nxt is not None and ready is not None and ready <= free[p]:
                action: tuple[float, int, Op | None] = (free[p], p, nxt)
            elif queued[p] and (
                nxt is None
                or (ready if ready is not None else free[p] + shortest_wait(p, nxt)) - free[p]
                >= costs.weight_grads[p][queued[p][0]]
            ):
                action = (free[p], p, None)  # the W fits the wait, or nothing is left but W ops
            elif nxt is not None and ready is not None:
                action = (ready, p, nxt)
            else:
                continue  # waiting for an input not computed yet
            if best is None or action[:2] < best[:2]:
                best = action
        if best is None:
            waiting = [(free[p], p) for p in range(num_stages) if queued[p]]
            if not waiting:
                break
            best = (*min(waiting), None)  # every stage waits on inputs not computed: a W makes progress
        start, p, op = best
        if op is None:
            c = queued[p].popleft()
            used[p] -= memory[p].operands[c]
            free[p] = start + costs.weight_grads[p][c]
            placed[p].append(op_of("W", c))
            continue
        c = op.chunk
        if op.kind == "F":
            f_end[p][c] = free[p] = start + costs.forward[p][c].duration_s
            used[p] += memory[p].held[c]
        else:
            room = memory[p].room
            fits = costs.weight_grads[p][c] > 0 and used[p] + memory[p].gradients[c] <= room
            used[p] -= memory[p].held[c]
            operands = memory[p].operands[c]
            queues = fits and queue and used[p] + operands + memory[p].largest_held <= room
            at_once = fits and not queues and p > 0  # the first stage sends nothing: a W at once gains nothing
            split = queues or at_once
            free[p] = b_sent[p][c] = start + (costs.backward_split if split else costs.backward)[p][c].duration_s
            placed[p].append(op)
            cursor[p] += 1
            if queues:
                queued[p].append(c)
                used[p] += operands
            elif at_once:
                free[p] += costs.weight_grads[p][c]
                placed[p].append(op_of("W", c))
            continue
        placed[p].append(op)
        cursor[p] += 1
    stuck = [p for p in range(num_stages) if cursor[p] < len(schedule[p])]
    if stuck:
        raise ValueError(f"lane {lane.lane_id}: schedule deadlocks at stages {stuck}")
    return placed
