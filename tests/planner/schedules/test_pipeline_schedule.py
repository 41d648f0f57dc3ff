"""Pipeline schedules: every op once per stage, the token-level slice order, and no cross-stage deadlock.

The oracle is this module's own replay (`schedule_violations`), written from the rules in DESIGN §3 and
sharing no code with `proto.validation` or the schedule builder: it executes the schedule op by op with
blocking receives between stages, and checks each op's same-stage prerequisites when it runs. Guards
against schedules that deadlock or break the slice order (a hang or a wrong gradient in the executor).
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner_service.schedules import backward_order, build_schedule
from planner_service.schedules.pipeline_schedule import slice_group_ends
from proto import Chunk, Op, Segment


def schedule_violations(chunks: list[Chunk], schedule: list[list[Op]]) -> list[str]:
    """Replay `schedule` and list every broken rule (empty for a good schedule).

    Rules: every stage runs F and B of every chunk exactly once; F(c) on stage p waits for F(c) on p-1 and
    B(c) on p for B(c) on p+1 (a receive blocks); on its own stage B(c) needs F(c) done, F of a slice needs
    F of the sequence's previous slice done, B of a slice needs B of its next slice done; when no stage can
    move and ops remain, the schedule deadlocks.
    """
    by_seq: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for c, chunk in enumerate(chunks):
        for seg in chunk.segments:
            by_seq[seg.seq_id].append((seg.start, c))
    before: dict[int, list[int]] = defaultdict(list)  # chunk -> chunks holding the previous slice
    after: dict[int, list[int]] = defaultdict(list)  # chunk -> chunks holding the next slice
    for pieces in by_seq.values():
        order = [c for _, c in sorted(pieces)]
        for earlier, later in itertools.pairwise(order):
            before[later].append(earlier)
            after[earlier].append(later)

    num_stages = len(schedule)
    problems: list[str] = []
    done: list[set[tuple[str, int]]] = [set() for _ in range(num_stages)]
    cursor = [0] * num_stages
    moved = True
    while moved:
        moved = False
        for p, ops in enumerate(schedule):
            while cursor[p] < len(ops):
                op = ops[cursor[p]]
                c = op.chunk
                if op.kind == "F" and p > 0 and ("F", c) not in done[p - 1]:
                    break  # waiting for the activation from stage p-1
                if op.kind == "B" and p < num_stages - 1 and ("B", c) not in done[p + 1]:
                    break  # waiting for the gradient from stage p+1
                if (op.kind, c) in done[p]:
                    problems.append(f"stage {p}: {op} runs twice")
                if op.kind == "B" and ("F", c) not in done[p]:
                    problems.append(f"stage {p}: B{c} runs before F{c}")
                if op.kind == "F":
                    problems += [f"stage {p}: F{c} runs before F{e}" for e in before[c] if ("F", e) not in done[p]]
                if op.kind == "B":
                    problems += [f"stage {p}: B{c} runs before B{n}" for n in after[c] if ("B", n) not in done[p]]
                done[p].add((op.kind, c))
                cursor[p] += 1
                moved = True
    problems += [
        f"deadlock: stage {p} stuck at {schedule[p][cursor[p]]}"
        for p in range(num_stages)
        if cursor[p] < len(schedule[p])
    ]
    every_op = {(k, c) for c in range(len(chunks)) for k in "FB"}
    problems += [f"stage {p} never runs {sorted(every_op - done[p])}" for p in range(num_stages) if done[p] != every_op]
    return problems


def ops(text: str) -> list[Op]:
    return [Op(kind=t[0], chunk=int(t[1:])) for t in text.split()]


def sliced_lane() -> list[Chunk]:
    """Chunks 0-2 are three slices of sequence 0 (chunk 2 also holds short sequence 1); chunk 3 is sequence 2."""
    return [
        Chunk(segments=[Segment(seq_id=0, start=0, end=10)]),
        Chunk(segments=[Segment(seq_id=0, start=10, end=20)]),
        Chunk(segments=[Segment(seq_id=0, start=20, end=30), Segment(seq_id=1, start=0, end=5)]),
        Chunk(segments=[Segment(seq_id=2, start=0, end=8)]),
    ]


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [
        ([ops("B0 F0 F1 F2 F3 B2 B1 B3")], "B0 runs before F0"),
        ([ops("F1 F0 F2 F3 B2 B1 B0 B3")], "F1 runs before F0"),
        ([ops("F0 F1 F2 F3 B1 B2 B0 B3")], "B1 runs before B2"),
        ([ops("F0 F1 F2 F3 B2 B1 B0")], "never runs"),
        ([ops("F0 F1 F2 F3 B2 B1 B0 B3 B3")], "runs twice"),
        ([ops("F0 F1 F2 F3 B2 B1 B0 B3"), ops("F0 B2 F1 F2 F3 B1 B0 B3")], "stage 1: B2 runs before F2"),
        ([ops("F0 F1 F2 F3 B2 B1 B0 B3"), ops("F1 F0 F2 F3 B2 B1 B0 B3")], "stage 1: F1 runs before F0"),
        ([ops("F0 F1 F2 F3 B3 B2 B1 B0"), ops("F0 F1 F2 B2 B1 B0 F3 B3")], ""),  # a valid two-stage order
    ],
)
def test_the_oracle_catches_each_broken_rule(schedule: list[list[Op]], fragment: str) -> None:
    """The replay itself can fail: each hand-made schedule breaks one rule (the last breaks none)."""
    problems = schedule_violations(sliced_lane(), schedule)
    if fragment:
        assert any(fragment in p for p in problems), problems
    else:
        assert problems == []


def test_the_oracle_catches_a_cross_stage_deadlock() -> None:
    """Stage 0 waits for B1 from stage 1, which waits for F1 that stage 0 runs only after B1."""
    two = [Chunk(segments=[Segment(seq_id=0, start=0, end=25)]), Chunk(segments=[Segment(seq_id=1, start=0, end=9)])]
    problems = schedule_violations(two, [ops("F0 B1 F1 B0"), ops("F0 F1 B1 B0")])
    assert any(p.startswith("deadlock") for p in problems), problems


@st.composite
def lane_chunks(draw: st.DrawFn) -> list[Chunk]:
    """Chunks of a lane: some sequences sliced into consecutive chunks, some packed whole."""
    chunks: list[Chunk] = []
    seq = 0
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            pieces = draw(st.integers(2, 4))
            for k in range(pieces):
                chunks.append(Chunk(segments=[Segment(seq_id=seq, start=10 * k, end=10 * (k + 1))]))
            seq += 1
        else:
            count = draw(st.integers(1, 3))
            chunks.append(Chunk(segments=[Segment(seq_id=seq + i, start=0, end=5) for i in range(count)]))
            seq += count
    return chunks


@given(chunks=lane_chunks(), num_stages=st.integers(1, 4), warmup_groups=st.integers(0, 3))
def test_schedule_respects_order_and_never_deadlocks(chunks: list[Chunk], num_stages: int, warmup_groups: int) -> None:
    """Whatever the mix of slices and packed sequences and the warm-up depth, the built schedule replays cleanly
    on every stage."""
    schedule = build_schedule(chunks, num_stages, warmup_groups)
    assert len(schedule) == num_stages
    assert schedule_violations(chunks, schedule) == []


def forwards_before_each_backward(ops: list[Op]) -> list[int]:
    counts, forwards = [], 0
    for op in ops:
        if op.kind == "F":
            forwards += 1
        else:
            counts.append(forwards)
    return counts


@given(chunks=lane_chunks(), num_stages=st.integers(2, 4), warmup_groups=st.integers(0, 2))
def test_a_deeper_warmup_never_runs_a_backward_earlier(
    chunks: list[Chunk], num_stages: int, warmup_groups: int
) -> None:
    """Depth k+1 has at least as many forwards done before every backward as depth k, on every stage, and the
    backward order is the same: it only moves forwards earlier."""
    shallow = build_schedule(chunks, num_stages, warmup_groups)
    deep = build_schedule(chunks, num_stages, warmup_groups + 1)
    for p in range(num_stages):
        assert [op for op in deep[p] if op.kind == "B"] == [op for op in shallow[p] if op.kind == "B"]
        pairs = zip(forwards_before_each_backward(deep[p]), forwards_before_each_backward(shallow[p]), strict=True)
        assert all(d >= s for d, s in pairs)


def chained_lane() -> list[Chunk]:
    """A 2-slice chain, a whole sequence, a 2-slice chain whose tail shares a chunk with a short sequence, a
    whole sequence: slice groups [0, 1], [2], [3, 4], [5]."""
    return [
        Chunk(segments=[Segment(seq_id=0, start=0, end=10)]),
        Chunk(segments=[Segment(seq_id=0, start=10, end=20)]),
        Chunk(segments=[Segment(seq_id=1, start=0, end=5)]),
        Chunk(segments=[Segment(seq_id=2, start=0, end=10)]),
        Chunk(segments=[Segment(seq_id=2, start=10, end=20), Segment(seq_id=3, start=0, end=3)]),
        Chunk(segments=[Segment(seq_id=4, start=0, end=5)]),
    ]


def test_slice_groups_close_where_no_sliced_sequence_goes_on() -> None:
    assert slice_group_ends(chained_lane()) == [1, 1, 2, 4, 4, 5]
    whole = [Chunk(segments=[Segment(seq_id=i, start=0, end=4)]) for i in range(3)]
    assert slice_group_ends(whole) == [0, 1, 2]


def test_warmup_depths_by_hand() -> None:
    """Three stages: depth 0 is per-chunk 1F1B (stage 0 forwards P-p-1 = 2 chunks past the first chain); depth 1
    also reaches the end of the 2nd group after it (chunk 4 closes group [3, 4]), depth 2 the 4th (the lane's
    end); the last stage (no warm-up) is the same at every depth."""
    chunks = chained_lane()
    text = {k: [" ".join(map(str, ops)) for ops in build_schedule(chunks, 3, k)] for k in (0, 1, 2)}
    assert text[0][0] == "F0 F1 F2 F3 B1 B0 F4 B2 F5 B4 B3 B5"
    assert text[1][0] == "F0 F1 F2 F3 F4 B1 B0 F5 B2 B4 B3 B5"
    assert text[2][0] == "F0 F1 F2 F3 F4 F5 B1 B0 B2 B4 B3 B5"
    assert text[1][1] == "F0 F1 F2 B1 B0 F3 F4 B2 F5 B4 B3 B5"
    assert text[0][2] == text[1][2] == text[2][2] == "F0 F1 B1 B0 F2 B2 F3 F4 B4 B3 F5 B5"


def test_a_negative_warmup_depth_is_refused() -> None:
    with pytest.raises(ValueError, match="warmup_groups"):
        build_schedule(chained_lane(), 2, -1)


def test_one_f_one_b_shape_without_slices() -> None:
    chunks = [Chunk(segments=[Segment(seq_id=i, start=0, end=4)]) for i in range(4)]
    schedule = build_schedule(chunks, 2)
    assert [str(op) for op in schedule[0]] == ["F0", "F1", "B0", "F2", "B1", "F3", "B2", "B3"]
    assert [str(op) for op in schedule[1]] == ["F0", "B0", "F1", "B1", "F2", "B2", "F3", "B3"]


def test_backward_order_reverses_slice_chains_only() -> None:
    chunks = [
        Chunk(segments=[Segment(seq_id=9, start=0, end=4)]),
        Chunk(segments=[Segment(seq_id=0, start=0, end=10)]),
        Chunk(segments=[Segment(seq_id=0, start=10, end=20)]),
        Chunk(segments=[Segment(seq_id=0, start=20, end=30), Segment(seq_id=1, start=0, end=5)]),
    ]
    assert backward_order(chunks) == [0, 3, 2, 1]


def test_ops_are_shared_frozen_instances() -> None:
    """Schedules share one frozen op per (kind, chunk): equal to a freshly made op, and immutable."""
    import pydantic

    from planner_service.schedules.pipeline_schedule import op_of

    chunks = [Chunk(segments=[Segment(seq_id=i, start=0, end=10 + i)]) for i in range(5)]
    first, second = build_schedule(chunks, 3), build_schedule(chunks, 2)
    assert first[0][0] is second[0][0] is op_of("F", 0)
    assert first[0][0] == Op(kind="F", chunk=0)
    with pytest.raises(pydantic.ValidationError):
        first[0][0].chunk = 3  # type: ignore[misc]
