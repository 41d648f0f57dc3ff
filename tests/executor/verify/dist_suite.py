"""Worker-side suite for the distributed executor tests: everything one launched gloo group checks.

One launch per world size (start-up costs 5-13 s here), running: direct Ulysses checks against
whole-chunk attention, then plan-equivalence cases (gradients and weights written for the parent to
compare with the single-process reference), including plans every rank must refuse, and last the
receive-timeout check (a timed-out gloo receive closes its pair, so nothing may follow it).

The timeout check is ordered by events, not by clocks: the stalled ranks stay stalled until every running
rank has reported how its step ended (a file per rank under the suite's output folder), so a running rank
can only have been released by its own receive timeout, never by a peer that gave up waiting and left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from executor.attention.backends import varlen_causal_attention
from executor.parallel.groups import ProcessGroups, create_process_groups
from executor.parallel.pipeline.links import ReceiveTimeout
from executor.parallel.pipeline.shards import chunk_layout
from executor.parallel.ulysses import UlyssesAttention
from executor.runner import ExecutorConfig, PlanExecutor
from executor.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from executor.verify.equivalence import EquivalenceCase, RankOutcome, StepInput, run_cases
from executor.verify.synthetic_tokens import SyntheticTokens
from proto.plan import Chunk, Segment


@dataclass(frozen=True)
class UlyssesCheck:
    """Every lane of `layout` attends over a chunk with these segment lengths, heads and kv heads."""

    layout: list[list[int]]
    segment_lengths: list[int]
    num_heads: int
    num_kv_heads: int
    head_dim: int = 4


@dataclass(frozen=True)
class SuiteResult:
    rank: int
    ulysses_errors: list[float]
    """Per check: max abs error of this rank's output rows and q/k/v gradient rows vs whole-chunk attention."""
    outcomes: list[RankOutcome]
    timeout: TimeoutOutcome | None = None
    resumed: list[ResumeOutcome] = field(default_factory=list)


@dataclass(frozen=True)
class ResumeOutcome:
    """A run checkpointed after one step and resumed into a fresh executor, against the run that went on."""

    case: str
    loss_diff: float
    """|loss of the next step, resumed - continued|."""
    param_diff: float
    """max |parameter after the next step, resumed - continued| over this rank's stage."""


@dataclass(frozen=True)
class TimeoutOutcome:
    """What the receive-timeout check saw on one rank."""

    stalled: bool
    """The rank is on the stalled last stage: it ran no op."""
    error: str | None = None
    """A running rank: the `ReceiveTimeout` message its step failed with (None if the step finished)."""
    peers_timed_out_while_stalled: bool = False
    """A stalled rank: every running rank reported a receive timeout while this rank was still stalled."""


@dataclass(frozen=True)
class TimeoutCheck:
    """Run `step` (a P = 2 plan) with a short receive timeout while every rank of the last stage stalls."""

    case: EquivalenceCase
    recv_timeout_s: float


def run_suite(
    checks: list[UlyssesCheck],
    cases: list[EquivalenceCase],
    out_dir: str,
    timeout_check: TimeoutCheck | None = None,
    resume_cases: list[EquivalenceCase] | None = None,
) -> SuiteResult:
    groups = create_process_groups(cases[0].cluster, {1} | {c.pipeline.num_stages for c in cases})
    rank = dist.get_rank()
    errors = []
    for i, check in enumerate(checks):
        lane = next(ranks for ranks in check.layout if rank in ranks)
        errors.append(_ulysses_error(check, lane, groups.get(lane) if len(lane) > 1 else None, rank, seed=i))
    outcomes = run_cases(cases, out_dir, groups)
    resumed = [_resume(case, groups, Path(out_dir) / f"resume-{case.name}") for case in resume_cases or []]
    if timeout_check is None:
        return SuiteResult(rank, errors, outcomes, None, resumed)
    timeout = _stalled_peer(timeout_check, groups, Path(out_dir) / "timeout-check")
    return SuiteResult(rank, errors, outcomes, timeout, resumed)


def _resume(case: EquivalenceCase, groups: ProcessGroups, root: Path) -> ResumeOutcome:
    """Step 0, checkpoint (`helix train`'s DCP format: model, optimizer incl. ZeRO shards), restore into an
    executor built with other weights, then step 1 on both: the same loss and parameters."""
    first, second = case.steps[0], case.steps[-1]

    def executor(seed: int) -> PlanExecutor:
        config = ExecutorConfig(seed=seed, dtype=torch.float64, zero_stage=case.zero_stage)
        return PlanExecutor(
            model=case.model, cluster=case.cluster, pipeline=case.pipeline, groups=groups, config=config
        )

    def step(ex: PlanExecutor, inp: StepInput) -> float:
        loss = ex.forward_backward(
            inp.plan, inp.batch, tokens=SyntheticTokens(inp.token_seed, case.model.vocab_size)
        ).loss
        ex.optimizer_step()
        return loss

    going = executor(case.seed)
    step(going, first)
    state = TrainState(
        next_step=1,
        data_position={},
        scheduler={},
        job_id=None,
        num_stages=case.pipeline.num_stages,
        world_size=groups.world_size,
    )
    path = save_checkpoint(root, state, module=going.module, optimizer=going.optimizer, step=1)
    resumed = executor(case.seed + 1)
    load_checkpoint(
        path,
        module=resumed.module,
        optimizer=resumed.optimizer,
        world_size=groups.world_size,
        num_stages=case.pipeline.num_stages,
    )
    loss_diff = abs(step(going, second) - step(resumed, second))
    a, b = going.full_parameters(), resumed.full_parameters()
    return ResumeOutcome(case.name, loss_diff, max(float((a[n] - b[n]).abs().max()) for n in a))


STALL_GUARD_S = 120.0
"""How long a stalled rank waits for the running ranks' reports at most: only so that a runtime that hangs
cannot hang the suite (the reports come about one receive timeout after the step starts)."""


def _stalled_peer(check: TimeoutCheck, groups: ProcessGroups, signals: Path) -> TimeoutOutcome:
    """The last stage's ranks run no op and wait until every other rank has reported; every other rank runs
    the step, must fail with `ReceiveTimeout` instead of hanging, and reports. Must be the suite's last use
    of the group: a timed-out gloo receive closes its pair."""
    case = check.case
    (step,) = case.steps
    topology = groups.topology(case.pipeline.num_stages)
    running = [r for r in range(groups.world_size) if topology.stage_of(r) != case.pipeline.num_stages - 1]
    if groups.rank not in running:
        reports = _wait_for_reports(signals, running)
        timed_out = all(reports.get(r) == "timeout" for r in running)
        return TimeoutOutcome(stalled=True, peers_timed_out_while_stalled=timed_out)
    config = ExecutorConfig(seed=case.seed, dtype=torch.float64, recv_timeout_s=check.recv_timeout_s)
    executor = PlanExecutor(
        model=case.model, cluster=case.cluster, pipeline=case.pipeline, groups=groups, config=config
    )
    error, report = None, "finished"
    try:
        executor.forward_backward(step.plan, step.batch, tokens=SyntheticTokens(step.token_seed, case.model.vocab_size))
    except ReceiveTimeout as err:
        error, report = str(err), "timeout"
    signals.mkdir(parents=True, exist_ok=True)
    (signals / f"rank{groups.rank}.tmp").write_text(report)
    (signals / f"rank{groups.rank}.tmp").rename(signals / f"rank{groups.rank}")  # appears complete or not at all
    return TimeoutOutcome(stalled=False, error=error)


def _wait_for_reports(signals: Path, ranks: list[int]) -> dict[int, str]:
    """{rank: report} once every rank in `ranks` has reported; whatever has come in after STALL_GUARD_S."""
    deadline = time.monotonic() + STALL_GUARD_S
    reports: dict[int, str] = {}
    while len(reports) < len(ranks) and time.monotonic() < deadline:
        time.sleep(0.02)
        for r in ranks:
            path = signals / f"rank{r}"
            if r not in reports and path.exists():
                reports[r] = path.read_text()
    return reports


def timeout_case(case: EquivalenceCase, recv_timeout_s: float = 1.0) -> TimeoutCheck:
    """The first step of `case` (which must have P >= 2) as a timeout check."""
    assert case.pipeline.num_stages >= 2, "the timeout check needs a pipeline"
    return TimeoutCheck(
        EquivalenceCase(name=f"timeout-{case.name}", cluster=case.cluster, model=case.model, steps=case.steps[:1]),
        recv_timeout_s,
    )


def _ulysses_error(
    check: UlyssesCheck, lane: list[int], group: dist.ProcessGroup | None, rank: int, seed: int
) -> float:
    s, sp_rank = len(lane), lane.index(rank)
    chunk = Chunk(segments=[Segment(seq_id=i, start=0, end=n) for i, n in enumerate(check.segment_lengths)])
    layout = chunk_layout(chunk, s)
    gen = torch.Generator().manual_seed(1000 + seed + 7 * lane[0])
    total, d = layout.padded_tokens, check.head_dim

    def rand(h: int) -> torch.Tensor:
        return torch.randn(total, h, d, generator=gen, dtype=torch.float64)

    q, k, v = rand(check.num_heads), rand(check.num_kv_heads), rand(check.num_kv_heads)
    weight = rand(check.num_heads)
    # whole-chunk reference, identical on every rank of the lane
    full = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = varlen_causal_attention(*full, layout.cu_seqlens, backend="naive")
    ref_grads = torch.autograd.grad((ref * weight).sum(), full)
    # this rank's shard through Ulysses
    lo, hi = layout.shard_range(sp_rank)
    local = [t[lo:hi].clone().requires_grad_(True) for t in (q, k, v)]
    attend = UlyssesAttention(group=group, sp_degree=s, cu_seqlens=layout.cu_seqlens, backend="sdpa")
    out = attend(0, *local)
    grads = torch.autograd.grad((out * weight[lo:hi]).sum(), local)
    err = float((out - ref[lo:hi]).detach().abs().max())
    for g, rg in zip(grads, ref_grads, strict=True):
        err = max(err, float((g - rg[lo:hi]).abs().max()))
    return err
