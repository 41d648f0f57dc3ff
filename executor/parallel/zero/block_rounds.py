"""ZeRO-3 per-chunk collectives shared by the lanes of one stage block: which round each op joins.

FSDP2 all-gathers a layer's parameters in every chunk's forward and again in its backward, and
reduce-scatters its gradients there, over the whole stage block. The lanes of a block run different
schedules (different chunk counts, different F/B orders), yet the k-th collective of every rank on the
group must be the same call. So the block runs a common sequence of ROUNDS, each of kind F (the forward's
gathers) or B (the backward's gathers and reduce-scatters), and each lane places its ops on rounds of their
kind, in order; in the other rounds it runs an idle op (no tokens: the same collectives, no compute). An
idle B round back-propagates the graph of an earlier idle F round of the same rank, so every idle B needs an
idle F before it. The rounds are the op sequence of the lane with the most chunks when every other lane fits
on its earliest rounds that way (then a rank joins exactly as many per-chunk collectives as the busiest lane
has chunks, as the cost model prices); otherwise a longer common supersequence (`merge_forward_first`).

Because a round's collectives complete only once every rank of the block has reached them, the rounds of
all blocks together with the pipeline's dependencies (F(c) of stage p before F(c) of p+1; B(c) of p+1 before
B(c) of p) must form an acyclic graph; `align_plan` refuses a plan for which they would not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proto.plan import Op, Plan


class RoundsRefused(ValueError):
    """The plan's lanes cannot share per-chunk collectives (the message says why)."""


@dataclass(frozen=True)
class IdleOp:
    """A round this rank joins without compute."""

    kind: str
    """"F" or "B"."""


Round = Op | IdleOp


def is_subsequence(short: str, long: str) -> bool:
    it = iter(long)
    return all(ch in it for ch in short)


def leftmost_embedding(seq: str, kinds: str) -> list[int]:
    """The round of each op of `seq`: the earliest round of its kind after the previous op's round."""
    rounds, r = [], 0
    for ch in seq:
        while kinds[r] != ch:
            r += 1
        rounds.append(r)
        r += 1
    return rounds


def idle_rounds_pair(kinds: str, placed: Sequence[int]) -> bool:
    """Whether every idle B round of a lane has an earlier idle F round of its own to back-propagate."""
    own, pending = set(placed), 0
    for r, kind in enumerate(kinds):
        if r not in own:
            pending += 1 if kind == "F" else -1
            if pending < 0:
                return False
    return True


def merge_forward_first(sequences: Sequence[str]) -> tuple[str, list[list[int]]]:
    """A common supersequence built round by round: a B round only when every lane that still has ops wants a
    B, else an F round (lanes that want a B then idle in it, banking an idle forward for a later idle B); then
    as many B rounds as it takes to back-propagate the idle forwards still banked."""
    positions = [0] * len(sequences)
    kinds: list[str] = []
    placed: list[list[int]] = [[] for _ in sequences]
    while any(pos < len(seq) for pos, seq in zip(positions, sequences, strict=True)):
        wanted = {seq[pos] for pos, seq in zip(positions, sequences, strict=True) if pos < len(seq)}
        kind = "B" if wanted == {"B"} else "F"
        for i, seq in enumerate(sequences):
            if positions[i] < len(seq) and seq[positions[i]] == kind:
                placed[i].append(len(kinds))
                positions[i] += 1
        kinds.append(kind)
    # every lane has as many F as B ops, so each banked the same surplus of idle forwards: close them
    kinds += ["B"] * (kinds.count("F") - kinds.count("B"))
    return "".join(kinds), placed


def block_placements(sequences: Sequence[str]) -> tuple[str, list[list[int]]]:
    """The block's round kinds and each lane's op rounds: the busiest lane's ops with every other lane on the
    earliest rounds of its kinds when that works (then each rank joins exactly as many per-chunk collectives as
    the busiest lane has chunks); otherwise `merge_forward_first`."""
    master = max(sequences, key=len, default="")
    if all(is_subsequence(seq, master) for seq in sequences):
        placed = [leftmost_embedding(seq, master) for seq in sequences]
        if all(idle_rounds_pair(master, p) for p in placed):
            return master, placed
    return merge_forward_first(sequences)


def _lane_rounds(ops: Sequence[Op], kinds: str, placed: list[int]) -> list[Round]:
    if not idle_rounds_pair(kinds, placed):
        raise RoundsRefused("an idle backward round would come before any idle forward round of its rank")
    at = dict(zip(placed, ops, strict=True))
    return [at[r] if r in at else IdleOp(kinds[r]) for r in range(len(kinds))]


def align_plan(plan: Plan) -> dict[tuple[int, int], list[Round]]:
    """{(lane index, stage): the rounds that lane's ranks run at that stage}, for every lane and stage.

    Raises `RoundsRefused` when the rounds and the pipeline dependencies would form a cycle (a deadlock)."""
    num_stages = plan.pipeline.num_stages
    out: dict[tuple[int, int], list[Round]] = {}
    placements: dict[tuple[int, int], dict[tuple[str, int], int]] = {}
    kinds_of: dict[int, str] = {}
    for stage in range(num_stages):
        sequences = ["".join(op.kind for op in lane.schedule[stage]) for lane in plan.lanes]
        kinds, placed_all = block_placements(sequences)
        kinds_of[stage] = kinds
        for index, lane in enumerate(plan.lanes):
            ops, placed = lane.schedule[stage], placed_all[index]
            out[(index, stage)] = _lane_rounds(ops, kinds, placed)
            placements[(index, stage)] = {(op.kind, op.chunk): r for op, r in zip(ops, placed, strict=True)}
    _check_acyclic(plan, kinds_of, placements)
    return out


def _check_acyclic(
    plan: Plan, kinds_of: dict[int, str], placements: dict[tuple[int, int], dict[tuple[str, int], int]]
) -> None:
    """Kahn's algorithm over nodes (stage, round): rounds of a block in order, plus each lane's F edges
    down the pipeline and B edges up it."""
    edges: dict[tuple[int, int], set[tuple[int, int]]] = {}
    nodes = [(p, r) for p, kinds in kinds_of.items() for r in range(len(kinds))]
    for p, kinds in kinds_of.items():
        for r in range(1, len(kinds)):
            edges.setdefault((p, r - 1), set()).add((p, r))
    for index, lane in enumerate(plan.lanes):
        for p in range(plan.pipeline.num_stages - 1):
            here, there = placements[(index, p)], placements[(index, p + 1)]
            for c in range(len(lane.chunks)):
                edges.setdefault((p, here[("F", c)]), set()).add((p + 1, there[("F", c)]))
                edges.setdefault((p + 1, there[("B", c)]), set()).add((p, here[("B", c)]))
    indegree = dict.fromkeys(nodes, 0)
    for targets in edges.values():
        for t in targets:
            indegree[t] += 1
    ready = [n for n in nodes if indegree[n] == 0]
    seen = 0
    while ready:
        node = ready.pop()
        seen += 1
        for t in edges.get(node, ()):
            indegree[t] -= 1
            if indegree[t] == 0:
                ready.append(t)
    if seen != len(nodes):
        raise RoundsRefused(
            "the lanes' schedules cannot share ZeRO-3's per-chunk collectives without a deadlock "
            "(plan it with ZeRO <= 2, or with lanes whose schedules nest)"
        )
