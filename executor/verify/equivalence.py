"""Check that applying plans across ranks gives the single-process reference's losses, gradients and weights.

Worker side (`run_cases`, on every rank of one launched group): for each case, build a fresh executor,
apply each step's plan, and let the first rank of every stage block write the stage's gradients (before
the optimizer step) and final parameters to `out_dir`. A refused plan is recorded, not raised, so the
group stays alive for the next case.

Parent side (`compare_case`): rerun the same batches on `ReferenceTrainer` and report per-step loss and
max relative gradient error and the final max relative parameter error, where the relative error of a
set of tensors is max over tensors of ||a - b||_max / max(||b||_max, tiny).

Many cases share one launch, because starting a gloo group costs 5-13 s here (DESIGN §13).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from executor.parallel.collective_counter import CollectiveLog, count_collectives
from executor.parallel.data import AdamWConfig
from executor.parallel.groups import ProcessGroups, create_process_groups
from executor.parallel.pipeline.links import ReceiveTimeout
from executor.parallel.zero.model_states import DEFAULT_BUCKET_BYTES
from executor.role import PlanRefused
from executor.runner import ExecutorConfig, PlanExecutor
from executor.verify.launch import launch_local
from executor.verify.reference import ReferenceTrainer
from executor.verify.synthetic_tokens import SyntheticTokens
from proto.batch import Batch
from proto.cluster import ClusterSpec
from proto.model import ModelSpec
from proto.plan import PipelineSpec, Plan

log = logging.getLogger(__name__)

TINY = 1e-300
DTYPES = {"float64": torch.float64, "float32": torch.float32}
TOLERANCE = {"float64": 1e-9, "float32": 1e-3}
"""Default max relative error per dtype. float32 is loose because AdamW's first update of a gradient
entry near zero is ~lr * sign(g), so reduction-order noise can flip it."""


@dataclass(frozen=True, kw_only=True)
class StepInput:
    batch: Batch
    plan: Plan
    token_seed: int


@dataclass(frozen=True, kw_only=True)
class EquivalenceCase:
    """A model and cluster, and one (batch, plan) per training step."""

    name: str
    cluster: ClusterSpec
    model: ModelSpec
    steps: tuple[StepInput, ...]
    seed: int = 0
    dtype: str = "float64"
    zero_stage: int = 0
    attention_backend: str = "auto"
    optimizer: AdamWConfig = field(default_factory=AdamWConfig)
    recv_timeout_s: float = 300.0
    max_grad_norm: float | None = None
    """Clip the gradients to this global norm before the optimizer step (as `helix train` does)."""
    grad_bucket_bytes: float = DEFAULT_BUCKET_BYTES
    count_collectives: bool = False
    """Log each step's collectives on the rank's stage block (`RankOutcome.collectives`)."""

    @property
    def pipeline(self) -> PipelineSpec:
        return self.steps[0].plan.pipeline


@dataclass(frozen=True)
class RankOutcome:
    """What one rank saw for one case: the global loss per completed step, or why it stopped."""

    case: str
    rank: int
    losses: list[float]
    error: str | None
    seconds: float
    peak_activation_bytes: list[int] = field(default_factory=list)
    """Measured per completed step (`executor.parallel.pipeline.memory_probe`)."""
    grad_norms: list[float] = field(default_factory=list)
    """Global gradient norm per step before clipping (cases with `max_grad_norm`)."""
    collectives: list[dict[str, int]] = field(default_factory=list)
    """Per step, collectives by kind on the rank's stage block, forward-backward and optimizer step together
    (cases with `count_collectives`)."""


@dataclass(frozen=True)
class StepReport:
    step: int
    loss: float
    ref_loss: float
    max_rel_grad_err: float
    peak_activation_bytes: tuple[int, ...] = ()
    """Measured per rank (index = rank)."""

    @property
    def rel_loss_err(self) -> float:
        return abs(self.loss - self.ref_loss) / max(abs(self.ref_loss), TINY)


@dataclass(frozen=True)
class CaseReport:
    name: str
    steps: list[StepReport]
    max_rel_param_err: float
    tolerance: float

    @property
    def max_rel_grad_err(self) -> float:
        return max((s.max_rel_grad_err for s in self.steps), default=0.0)

    @property
    def max_rel_loss_err(self) -> float:
        return max((s.rel_loss_err for s in self.steps), default=0.0)

    @property
    def ok(self) -> bool:
        worst = max(self.max_rel_grad_err, self.max_rel_loss_err, self.max_rel_param_err)
        return bool(self.steps) and worst <= self.tolerance


def max_rel_error(actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> float:
    """max over tensors of ||a - b||_max / max(||b||_max, tiny); the key sets must match."""
    if set(actual) != set(expected):
        missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
        raise ValueError(f"tensor names differ: missing {missing[:5]}, unexpected {extra[:5]}")
    worst = 0.0
    for name, b in expected.items():
        a = actual[name].to(b.dtype)
        scale = max(float(b.abs().max()), TINY) if b.numel() else TINY
        err = float((a - b).abs().max()) if b.numel() else 0.0
        worst = max(worst, err / scale)
    return worst


# --- worker side -------------------------------------------------------------------------------------------


def run_cases(cases: Sequence[EquivalenceCase], out_dir: str, groups: ProcessGroups | None = None) -> list[RankOutcome]:
    """On every rank: apply every case's plans, writing gradients and parameters under `out_dir`.

    Creates the process groups for the cases' pipeline degrees unless `groups` is given."""
    if groups is None:
        groups = create_process_groups(cases[0].cluster, {case.pipeline.num_stages for case in cases})
    return [_run_case(index, case, groups, Path(out_dir)) for index, case in enumerate(cases)]


def _run_case(index: int, case: EquivalenceCase, groups: ProcessGroups, out_dir: Path) -> RankOutcome:
    began = time.perf_counter()
    rank = groups.rank
    config = ExecutorConfig(
        seed=case.seed,
        dtype=DTYPES[case.dtype],
        attention_backend=case.attention_backend,
        optimizer=case.optimizer,
        zero_stage=case.zero_stage,
        recv_timeout_s=case.recv_timeout_s,
        grad_bucket_bytes=case.grad_bucket_bytes,
    )
    losses: list[float] = []
    peaks: list[int] = []
    norms: list[float] = []
    counted: list[dict[str, int]] = []
    try:
        executor = PlanExecutor(
            model=case.model, cluster=case.cluster, pipeline=case.pipeline, groups=groups, config=config
        )
        writer = executor.dp_ranks[0] == rank
        case_dir = out_dir / f"case{index:03d}"
        for k, step in enumerate(case.steps):
            tokens = SyntheticTokens(step.token_seed, case.model.vocab_size)
            with _counting(case.count_collectives) as before:
                result = executor.forward_backward(step.plan, step.batch, tokens=tokens)
            losses.append(result.loss)
            peaks.append(result.peak_activation_bytes)
            if case.max_grad_norm is not None:
                norms.append(executor.clip_grad_norm(case.max_grad_norm))
            grads = executor.full_gradients()  # collective over the block when gradients are sharded
            if writer:
                case_dir.mkdir(parents=True, exist_ok=True)
                torch.save(grads, case_dir / f"grads_step{k}_stage{executor.stage}.pt")
            with _counting(case.count_collectives) as after:
                executor.optimizer_step()
            if case.count_collectives:
                counted.append(_block_counts(executor, before, after))
        params = executor.full_parameters()  # collective over the block under ZeRO-3
        if writer:
            torch.save(params, case_dir / f"params_stage{executor.stage}.pt")
        dist.barrier()  # files are complete before any rank reports success
    except (PlanRefused, ReceiveTimeout) as err:
        log.info("case %s: %s", case.name, err)
        return RankOutcome(case.name, rank, losses, str(err), time.perf_counter() - began, peaks, norms, counted)
    return RankOutcome(case.name, rank, losses, None, time.perf_counter() - began, peaks, norms, counted)


@contextmanager
def _counting(enabled: bool) -> Iterator[CollectiveLog | None]:
    if not enabled:
        yield None
        return
    with count_collectives() as log_:
        yield log_


def _block_counts(executor: PlanExecutor, *logs: CollectiveLog | None) -> dict[str, int]:
    """Collectives by kind on the rank's stage block, and (ZeRO-0/1/2) how many gradient buckets were issued
    while a backward op still ran."""
    main = getattr(executor.states, "main", None)
    counts = dict.fromkeys(("all_reduce", "reduce_scatter", "all_gather"), 0)
    counts["overlapped_buckets"] = main.issued_during_backward if main is not None else 0
    if len(executor.dp_ranks) == 1:
        return counts
    for log_ in logs:
        assert log_ is not None
        for kind in ("all_reduce", "reduce_scatter", "all_gather"):
            counts[kind] += log_.count(executor.dp_group, kind)
    return counts


# --- parent side -------------------------------------------------------------------------------------------


@contextmanager
def _torch_threads(num_threads: int) -> Iterator[None]:
    """Temporarily set torch's intra-op threads. The reference's ops are tiny: on a 2-core machine two
    threads made a step 10x slower than one (273 s vs 24 s) whenever another process was busy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _stage_error(case_dir: Path, pattern: str, expected: Mapping[str, torch.Tensor]) -> float:
    """max_rel_error of every stage file against the reference's tensors of the same names; the files together
    must name every reference tensor. A tensor two stages hold (a tied embedding) is checked in both."""
    files = sorted(case_dir.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no files {pattern} in {case_dir}")
    worst, names = 0.0, set()
    for path in files:
        actual = torch.load(path, weights_only=True)
        names |= set(actual)
        worst = max(worst, max_rel_error(actual, {n: expected[n] for n in actual if n in expected}))
    if names != set(expected):
        missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
        raise ValueError(f"tensor names differ: missing {missing[:5]}, unexpected {extra[:5]}")
    return worst


def compare_case(
    index: int, case: EquivalenceCase, outcomes: Sequence[RankOutcome], out_dir: str, tolerance: float | None = None
) -> CaseReport:
    """Rerun `case` on the single-process reference and compare with what the ranks wrote."""
    errors = {o.error for o in outcomes if o.error is not None}
    if errors:
        raise RuntimeError(f"case {case.name} was refused: {sorted(errors)[0]}")
    losses = outcomes[0].losses
    for o in outcomes:
        assert o.losses == losses, f"case {case.name}: rank {o.rank} reports losses {o.losses}, rank 0 {losses}"
    case_dir = Path(out_dir) / f"case{index:03d}"
    dtype = DTYPES[case.dtype]
    reference = ReferenceTrainer(model=case.model, seed=case.seed, dtype=dtype, optimizer_config=case.optimizer)
    steps = []
    for k, step in enumerate(case.steps):
        ref = reference.forward_backward(step.batch, tokens=SyntheticTokens(step.token_seed, case.model.vocab_size))
        ref_grads = ref.grads
        if case.max_grad_norm is not None:
            ref_norm = reference.clip_grad_norm(case.max_grad_norm)
            ref_grads = reference.gradients()
            for o in outcomes:
                rel = abs(o.grad_norms[k] - ref_norm) / ref_norm
                assert rel <= 1e-9, (
                    f"case {case.name} step {k}: rank {o.rank} norm {o.grad_norms[k]}, reference {ref_norm}"
                )
        grad_err = _stage_error(case_dir, f"grads_step{k}_stage*.pt", ref_grads)
        peaks = tuple(o.peak_activation_bytes[k] for o in sorted(outcomes, key=lambda o: o.rank))
        steps.append(StepReport(k, losses[k], ref.loss, grad_err, peaks))
        reference.optimizer_step()
    param_err = _stage_error(case_dir, "params_stage*.pt", reference.parameters())
    tol = TOLERANCE[case.dtype] if tolerance is None else tolerance
    return CaseReport(case.name, steps, param_err, tol)


def run_and_compare(
    cases: Sequence[EquivalenceCase], *, world_size: int, out_dir: str, tolerance: float | None = None
) -> list[CaseReport]:
    """Launch one group of `world_size` ranks for all cases, then compare each with the reference."""
    began = time.perf_counter()
    results = launch_local(run_cases, (list(cases), out_dir), world_size=world_size)
    launched = time.perf_counter()
    by_case = list(zip(*(results[r] for r in sorted(results)), strict=True))
    with _torch_threads(1):
        reports = [compare_case(i, case, by_case[i], out_dir, tolerance) for i, case in enumerate(cases)]
    log.info(
        "%d cases on %d ranks: launch + run %.1f s (slowest rank in cases %.1f s), reference + compare %.1f s",
        len(cases),
        world_size,
        launched - began,
        max(sum(o.seconds for o in outcomes) for outcomes in results.values()),
        time.perf_counter() - launched,
    )
    return reports
