"""A lower bound on the *simulated* iteration time of every plan a dynamic strategy can build.

The lane ILP's bound is a bound for its own model, which leaves out what the simulator charges on top, so it
says little about the plan (a plan "0.5% from optimal" in the model was 60% slower in the simulator). This
bound holds for the simulator's prices instead, for any plan with pipeline degree P among `degrees` and a layer
split among the strategy's own (`layer_split.SplitChoice`: the even split, and for helix the head-balanced one).
It is computed for each P, split and ZeRO stage z a plan there may run at, and the bound is the smallest:

    bound = min over P, split, z of  max over stages p of  fill(p) + max(busy(p, z) + drain(p, z), sync(p, z))

Why each piece holds, for every lane l of a plan (at the split's layers per stage; valid
schedules: on each stage F(c) precedes B(c), so a stage's first op is a forward and its last a backward):

- fill(p): lane l's first op on stage p is F(c) for some chunk c, which waits for F(c) on stages 0..p-1 and
  each send: at least the sum over q < p of the smallest F op (`layer_forward_s` of one token is at least the
  per-call overhead b per layer, priced with stage q's per-chunk collectives by `overlapped_op_s`, which grows
  with the op's work) and the smallest send (`p2p_s` of one token on the faster link).
- busy(p, z): lane l's ops on stage p run one at a time between its first op's start and its last op's end.
  The busiest lane of the stage block is busy at least (device-time of stage p's work) / (N/P): device-time
  conservation over the block's N/P devices (lanes use distinct ranks). Stage p's work, each term charged to
  every plan:
  * each sequence's forward and backward compute on the stage's layers (`training_s`: a lane of s devices
    splits it over s, so s x the per-device time is the s = 1 work; slicing does not change the attention
    pairs, which telescope to n^2);
  * the LM head on the last stage only (why a per-stage bound beats the cluster-wide `ideal_s` at P > 1);
  * each sequence's Ulysses all-to-alls: s x (the all-to-alls of its tokens) device-seconds per layer, forward
    and backward, at the cheapest SP degree on which it fits memory (s = 1 pays none). Without a pipeline the
    sequence is one unsliced chunk, so memory also forces the fewest recomputed layers that let it fit its lane
    (`forced_recompute_layers`), whose forward and all-to-alls its backward op repeats: each sequence pays the
    cheapest over s of s x (all-to-alls + forced recompute);
  * the per-call overhead b of each layer's forward and backward, once per device-chunk: a chunk of t tokens
    fits a lane of s only if the unsliced `sequence_fits` test passes for t (its full-recompute activations
    and working memory beside the states while its backward runs), so a lane's T tokens need at least
    T / cap(s) chunks, and the block at least (tokens x the smallest s / cap(s)) device-chunks (`device_chunks`).
  Also at least: the lane holding the longest sequence does its whole compute, all-to-alls (and, at P = 1,
  forced recompute) on its s devices at the cheapest fitting s. Under ZeRO-2/3 an op lasts at least its
  per-chunk collectives plus the share of its work they cannot overlap (`overlapped_op_s`), and every lane
  joins as many rounds as the busiest (`idle_round_s` each): the block's device-chunks bound how many.
- drain(p, z): lane l's last op on stage p is B(c'); B(c') on stages p-1..0 follows it (the smallest B op and
  send each), and each stage q's step ends at least `after_step_s` (the ZeRO-1/2 parameter all-gather) plus
  one bucket's share of its ZeRO-0/1 reduction (`step_sync_end_s`) after the lane's last backward on q. Where a
  plan may defer weight gradients (ZeRO-0/1, `Plan.defer_weight_grads`), B(c') on stage p sends before stage p's
  last op ends, by W ops after it (unbounded above), so only stage p's own tail is charged.
- sync(p, z): stage p's ZeRO-0/1 reduction ends no earlier than its first bucket, final once the last backward
  op has started, plus the whole reduction (`step_sync_end_s`); every forward op of the lane precedes that last
  backward. So the stage also ends at least fill(p) + (the block's forward device-time) / (N/P) + the reduction
  + `after_step_s`: the sync a short step cannot hide behind its backward.

Memory fit is `memory_fit.sequence_fits`, the planner's own test (unsliced at P = 1, where no strategy slices;
sliced or unsliced at P > 1), with model states sharded at the highest ZeRO stage the job allows (the most
memory any plan can have), so it never rules out a lane a plan may use. The ZeRO stages z of a P are those from
the job's stage to `max_zero_stage` whose model states fit the device next to the reserve at all (a plan whose
states alone overflow fails `fits_memory`, so no strategy returns it).

A measured profile prices the layer on lanes of each SP degree with its own compute scale and call overhead
(`CostProfile.sp_degree_costs`): the work terms that do not fix a degree (compute, per-call overhead, forwards)
take the smallest scale of any degree and no extra overhead, the smallest op the smallest over degrees; terms
evaluated at a given degree (the longest sequence's lane, forced recompute) use that degree's prices.

Recompute beyond what memory forces on an unsliced sequence, imbalance between lanes, all but the first fill
and the last drain, and collectives an op could hide only add time, so they are left out: `gap` =
(simulated - bound) / simulated is a true optimality gap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from planner_service.budget import UNITS_PER_BOUND_DEGREE, UNITS_PER_BOUND_SEQUENCE, PlanningBudget
from planner_service.context import PlanningContext
from planner_service.cost_model import ChunkShape, CostModel, compute_model
from planner_service.cost_model.comm_model import NO_TRAFFIC
from planner_service.cost_model.data_parallel import overlapped_op_s
from planner_service.layout.layer_split import SplitChoice, job_split
from planner_service.layout.memory_fit import sequence_fits
from proto import PipelineSpec, ZeroStage
from proto.topology import valid_sp_degrees

ALLTOALL_PROBE_TOKENS_PER_DEVICE = 8192
"""Tokens per device at which the all-to-all's per-token slope is measured (a whole multiple of every s)."""


def longest_fitting(cost: CostModel, pipeline: PipelineSpec, sp_degree: int, *, sliced: bool, upto: int) -> int:
    """The longest sequence (at most `upto` tokens) that fits a lane of `sp_degree` (0: none); fit is monotone
    in the length, so a bisection finds it."""
    if not sequence_fits(cost, pipeline, 1, sp_degree, sliced=sliced):
        return 0
    if sequence_fits(cost, pipeline, upto, sp_degree, sliced=sliced):
        return upto
    lo, hi = 1, upto  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if sequence_fits(cost, pipeline, mid, sp_degree, sliced=sliced):
            lo = mid
        else:
            hi = mid
    return lo


def span_choices(cost: CostModel, sp_degree: int) -> tuple[bool, ...]:
    """Whether a lane of `sp_degree` may span nodes: it must when larger than a node, and may (priced as the
    all-inter-node exchange) otherwise; a bound takes the cheaper."""
    return (True,) if sp_degree > cost.cluster.devices_per_node else (False, True)


def alltoall_device_s_per_token(cost: CostModel, sp_degree: int) -> float:
    """Device-seconds of one layer's forward all-to-alls per token of a sequence on a lane of size s (all its s
    devices together), without per-call latency: a lower bound for any number of tokens."""
    s = sp_degree
    if s <= 1:
        return 0.0
    x = ALLTOALL_PROBE_TOKENS_PER_DEVICE * s
    slope = min(
        (cost.alltoall_layer_s(2 * x, s, spans) - cost.alltoall_layer_s(x, s, spans)) / x
        for spans in span_choices(cost, s)
    )
    return s * max(slope, 0.0)


def feasible_zero_stages(ctx: PlanningContext, pipeline: PipelineSpec) -> list[CostModel]:
    """Cost models at each ZeRO stage a plan at `pipeline` may run at: the job's stage up to `max_zero_stage`,
    leaving out those whose model states alone exceed the device (no such plan passes `fits_memory`)."""
    out = []
    for stage in range(ctx.options.zero_stage, ctx.options.max_zero_stage + 1):
        options = ctx.options.model_copy(update={"zero_stage": ZeroStage(stage)})
        cost = replace(ctx.cost, options=options)
        dp = cost.dp_size(pipeline)
        states = max(cost.model_state_bytes(p, pipeline, dp) for p in range(pipeline.num_stages))
        if states <= cost.usable_memory_bytes:
            out.append(cost)
    return out


def sp_degree_fits(cost: CostModel, pipeline: PipelineSpec, degrees: list[int], longest: int) -> dict[int, int]:
    """Per SP degree, the longest sequence (up to `longest`) that fits a lane of it in some way a plan at this
    P may run it: unsliced, or at P > 1 also sliced."""
    modes = (False,) if pipeline.num_stages == 1 else (False, True)
    return {
        s: max(longest_fitting(cost, pipeline, s, sliced=sliced, upto=longest) for sliced in modes) for s in degrees
    }


def degree_bound(
    ctx: PlanningContext, num_stages: int, lengths: np.ndarray, pipeline: PipelineSpec | None = None
) -> float:
    """The bound for plans of pipeline degree `num_stages` at the layer split `pipeline` (default: the even split;
    inf when some sequence fits no lane, or no ZeRO stage leaves room for the model states)."""
    if pipeline is None:
        pipeline = ctx.split_for(num_stages)
    elif pipeline.num_stages != num_stages:
        raise ValueError(f"split of {pipeline.num_stages} stages for P = {num_stages}")
    costs = feasible_zero_stages(ctx, pipeline)
    if not costs:
        return math.inf
    roomiest = costs[-1]  # states sharded furthest: the most memory any plan at this P has
    block = roomiest.dp_size(pipeline)
    degrees = valid_sp_degrees(ctx.model, block)
    longest = int(lengths.max())
    fits = sp_degree_fits(roomiest, pipeline, degrees, longest)
    per_token = {s: alltoall_device_s_per_token(roomiest, s) for s in degrees}
    comm = np.full(len(lengths), math.inf)  # each sequence's cheapest all-to-all device-seconds per layer
    for s in degrees:
        comm = np.where(lengths <= fits[s], np.minimum(comm, per_token[s] * lengths), comm)
    if not np.all(np.isfinite(comm)):
        return math.inf

    profile = ctx.cost.profile
    # compute at the smallest per-degree scale a measured profile gives any lane (`SpDegreeCost`; 1 for presets),
    # without the per-degree call overheads (>= 0): no lane of any degree computes for less
    scale = compute_model.smallest_compute_scale(profile)
    plain = profile.model_copy(update={"sp_degree_costs": ()})
    pairs, tokens = float((lengths * lengths).sum()), float(lengths.sum())
    head_work = compute_model.training_s(profile, attn_pairs=pairs, num_tokens=tokens, num_layers=0)
    layer_work = compute_model.training_s(profile, attn_pairs=pairs, num_tokens=tokens, num_layers=1) - head_work
    if num_stages == 1:  # unsliced: all-to-alls and forced recompute traded per sequence, on the whole model
        layer_work += unsliced_sequences_s(roomiest, pipeline, degrees, lengths) / ctx.model.num_layers
    else:
        layer_work += 2 * float(comm.sum())  # forward and backward all-to-alls
    # forward ops alone (each lane's forwards all precede its last backward, which a ZeRO-0/1 reduction follows)
    head_forward = compute_model.head_forward_s(profile, num_tokens=tokens, sp_degree=1)
    layer_forward = scale * compute_model.layer_forward_s(plain, attn_pairs=pairs, num_tokens=tokens, sp_degree=1)
    layer_forward += float(comm.sum()) - scale * profile.layer_overhead_s  # its all-to-alls; b counted per chunk
    lane_busy = longest_sequence_lane(roomiest, pipeline, degrees, fits, longest)
    one_token = ChunkShape(num_tokens=1, attn_pairs=1.0)
    one_token_terms = [ctx.cost.layer_terms(one_token, sp_degree=s, spans_nodes=False) for s in degrees]
    smallest_forward = min(t.forward_s for t in one_token_terms)
    smallest_backward = min(t.backward_s for t in one_token_terms)
    send = min(ctx.cost.p2p_s(1, 1, crosses) for crosses in (False, True))

    # per-call overhead b of one layer's forward and backward on each device (`layer_forward_s`, `layer_backward_s`)
    per_call = scale * profile.layer_overhead_s
    overhead_s = (1.0 + profile.linear_backward_to_forward) * per_call
    # device-chunks (sum over lanes of s x chunks): a chunk fits a lane only up to `chunk_cap` tokens; with the
    # states sharded furthest (the most room, the fewest chunks) it bounds every ZeRO stage at once
    chunks = device_chunks(roomiest, pipeline, degrees, int(tokens))
    if not math.isfinite(chunks):
        return math.inf

    def defers(cost: CostModel) -> bool:  # a plan at this ZeRO stage may defer weight gradients
        return ctx.defer_weight_grads and cost.options.zero_stage <= ZeroStage.OPTIMIZER

    best = math.inf
    for cost in costs:
        times = [cost.collective_times(p, pipeline) for p in range(num_stages)]
        f_min = [
            overlapped_op_s(pipeline.layers_of(q) * smallest_forward, NO_TRAFFIC, times[q].forward)
            for q in range(num_stages)
        ]
        b_min = [
            overlapped_op_s(pipeline.layers_of(q) * smallest_backward, NO_TRAFFIC, times[q].backward)
            for q in range(num_stages)
        ]
        tail = [t.step_bucket_share * t.step_sync.duration_s + t.after_step_s for t in times]
        worst = 0.0
        fill = 0.0
        for p in range(num_stages):
            last = p == num_stages - 1
            layers = pipeline.layers_of(p)
            work = layers * (layer_work + chunks * overhead_s) + (head_work if last else 0.0)
            rounds = times[p].idle_round_s
            share = min(times[p].forward.unhidden_compute_share, times[p].backward.unhidden_compute_share)
            busy = max(
                work / block,
                lane_busy[p],
                rounds * math.ceil(chunks / block - 1e-9),
                (rounds * chunks + share * work) / block,
            )
            drain, behind = tail[p], 0.0  # behind: B(c') on stages p-1..q and the sends, after stage p's end
            for q in range(p - 1, -1, -1) if not defers(cost) else ():
                behind += send + b_min[q]
                drain = max(drain, behind + tail[q])
            forwards = (layers * (layer_forward + chunks * per_call) + (head_forward if last else 0)) / block
            synced = forwards + times[p].step_sync.duration_s + times[p].after_step_s
            worst = max(worst, fill + busy + drain, fill + synced)
            fill += f_min[p] + send
        best = min(best, worst)
    return best


def device_chunks(cost: CostModel, pipeline: PipelineSpec, degrees: list[int], num_tokens: int) -> float:
    """A lower bound on the sum over lanes of (SP degree x chunks) for `num_tokens` tokens (inf: no chunk fits).

    A chunk of t tokens on a lane of s devices holds at least its full-recompute activations next to the model
    states while its backward runs, plus that op's working memory: the unsliced `sequence_fits` test for t
    tokens, so no chunk exceeds the longest "sequence" that fits; a lane of s with T tokens needs T / cap(s)
    chunks, s x that device-chunks, at least T x the smallest s / cap(s)."""
    per_token = math.inf
    for s in degrees:
        cap = longest_fitting(cost, pipeline, s, sliced=False, upto=num_tokens)
        if cap > 0:
            per_token = min(per_token, s / cap)
    return num_tokens * per_token


def forced_recompute_layers(cost: CostModel, pipeline: PipelineSpec, length: int, sp_degree: int) -> int | None:
    """Without a pipeline: the fewest layers a chunk holding an unsliced sequence of `length` tokens recomputes on
    a lane of `sp_degree` (None: it does not fit even recomputing every layer).

    While the chunk's backward runs the device holds the model states, the chunk's activations (less per
    recomputed layer: `chunk_activation_bytes` is linear in it) and the op's working memory, the unsliced
    `sequence_fits` test with r layers recomputed; a chunk with more tokens holds more."""
    layers = pipeline.layers_of(0)
    budget = cost.usable_memory_bytes - cost.model_state_bytes(0, pipeline, cost.dp_size(pipeline))
    working = cost.transient_bytes(length, sp_degree=sp_degree, is_last_stage=True)

    def held(r: int) -> float:
        return cost.chunk_activation_bytes(
            length, sp_degree=sp_degree, num_layers=layers, recompute_layers=r, is_last_stage=True
        )

    need = held(0) + working
    if need <= budget:
        return 0
    if held(layers) + working > budget:
        return None
    saved = held(0) - held(1)
    return min(layers, max(1, math.ceil((need - budget) / saved - 1e-9)))


def unsliced_sequences_s(cost: CostModel, pipeline: PipelineSpec, degrees: list[int], lengths: np.ndarray) -> float:
    """Without a pipeline, device-seconds every sequence pays beyond its compute: per sequence, the cheapest over
    the SP degrees s it fits of s x (its all-to-alls on every layer, forward and backward, plus the forward and
    all-to-alls of the layers memory forces it to recompute). A larger s pays more all-to-all device-time and
    less recompute, so the two are traded per sequence rather than each minimised alone."""
    layers = pipeline.layers_of(0)
    total = 0.0
    per_token = {s: alltoall_device_s_per_token(cost, s) for s in degrees}
    free = longest_without_recompute(cost, pipeline, int(lengths.max()))
    for n in (int(x) for x in lengths):
        if n <= free:
            continue  # fits one device with no recompute: pays nothing beyond its compute
        best = math.inf
        for s in degrees:
            r = forced_recompute_layers(cost, pipeline, n, s)
            if r is None:
                continue
            extra = 2 * layers * per_token[s] * n
            if r:
                shape = ChunkShape(num_tokens=n, attn_pairs=float(n) * n)
                terms = [cost.layer_terms(shape, sp_degree=s, spans_nodes=spans) for spans in span_choices(cost, s)]
                extra += s * r * min(t.recompute_s for t in terms)
            best = min(best, extra)
        total += best
    return total


def longest_without_recompute(cost: CostModel, pipeline: PipelineSpec, upto: int) -> int:
    """Without a pipeline, the longest sequence (at most `upto`) that fits one device with no recompute."""
    lo, hi = 0, upto
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if forced_recompute_layers(cost, pipeline, mid, 1) == 0:
            lo = mid
        else:
            hi = mid - 1
    return lo


def longest_sequence_lane(
    cost: CostModel, pipeline: PipelineSpec, degrees: list[int], fits: dict[int, int], longest: int
) -> list[float]:
    """Per stage, the least time the lane holding the longest sequence spends on it: the sequence's compute and
    all-to-alls on the stage's layers (+ the LM head on the last stage; without a pipeline, + the recompute memory
    forces on it) on the cheapest SP degree it fits."""
    shape = ChunkShape(num_tokens=longest, attn_pairs=float(longest) * longest)
    out = [math.inf] * pipeline.num_stages
    for s in degrees:
        if longest > fits[s]:
            continue
        recompute = forced_recompute_layers(cost, pipeline, longest, s) if pipeline.num_stages == 1 else 0
        for spans in span_choices(cost, s):
            t = cost.layer_terms(shape, sp_degree=s, spans_nodes=spans)
            per_layer = t.forward_s + t.backward_s + 2 * t.alltoall_s
            per_layer += (recompute or 0) * t.recompute_s / pipeline.layers_of(0)
            for p in range(pipeline.num_stages):
                last = p == pipeline.num_stages - 1
                busy = pipeline.layers_of(p) * per_layer + (t.head_s + t.head_backward_s if last else 0.0)
                out[p] = min(out[p], busy)
    return out


BOUND_SHARE = 0.2
"""Most of a call's units left that computing the full bound may take; beyond it the cheap bound (`ideal_s`)
stands in, so a tight limit on a huge batch goes to the search, not to the certificate."""


@dataclass(frozen=True, slots=True)
class BudgetedBound:
    value_s: float
    full: bool
    """False: the full bound did not fit the budget and `value_s` is `ideal_s` (still a bound, a loose one)."""

    @property
    def note(self) -> str:
        return "" if self.full else "; gap against ideal_s only (the full lower bound did not fit the time limit)"


def bound_units(ctx: PlanningContext, degrees: Sequence[int], splits: SplitChoice = job_split) -> float:
    """Deterministic work units the full bound takes (the budget's reference-machine prices): one pass per split."""
    count = sum(len(splits(ctx, p)) for p in degrees)
    return count * (UNITS_PER_BOUND_DEGREE + UNITS_PER_BOUND_SEQUENCE * len(ctx.batch.lengths))


def budgeted_lower_bound(
    ctx: PlanningContext, degrees: Sequence[int], budget: PlanningBudget, splits: SplitChoice = job_split
) -> BudgetedBound:
    """The full bound, charged to `budget`, when it takes at most `BOUND_SHARE` of the units left; else `ideal_s`.
    Strategies call it first, so its time counts inside the caller's limit and its units are deterministic."""
    units = bound_units(ctx, degrees, splits)
    if units > BOUND_SHARE * budget.units_left():
        return BudgetedBound(ctx.cost.ideal_s(ctx.batch), full=False)
    budget.charge(units)
    return BudgetedBound(simulated_time_lower_bound(ctx, degrees, splits), full=True)


def simulated_time_lower_bound(ctx: PlanningContext, degrees: Sequence[int], splits: SplitChoice = job_split) -> float:
    """A lower bound on the simulated iteration time of any plan the planner builds at a P among `degrees` and a
    layer split among `splits(ctx, P)` (the strategy's own choice of splits: the smallest over them)."""
    ideal = ctx.cost.ideal_s(ctx.batch)
    lengths = np.array(ctx.batch.lengths, dtype=np.float64)
    bound = min(
        (degree_bound(ctx, p, lengths, pipeline) for p in degrees for pipeline in splits(ctx, p)), default=math.inf
    )
    # Devices sharing a compute unit run up to k times faster than profiled once their unit-mates are done
    # (`simulator.shared_compute`), so the per-device terms hold only divided by k. `ideal_s` holds as it is: a
    # unit still does at most k device-seconds of profiled work per second.
    bound /= ctx.cost.profile.devices_per_compute_unit
    return max(ideal, bound) if math.isfinite(bound) else ideal


def gap_to(iteration_s: float, lower_bound_s: float | None) -> float | None:
    """(simulated - bound) / simulated, or None without a bound."""
    if lower_bound_s is None or iteration_s <= 0:
        return None
    return max(0.0, (iteration_s - lower_bound_s) / iteration_s)
