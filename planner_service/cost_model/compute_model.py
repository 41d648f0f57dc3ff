"""Compute time of transformer layers on a lane (DESIGN §6), as pure functions of a `CostProfile`.

Forward time of one layer for a chunk on a lane of SP degree s:
    t = (a2 · Σ_seg ((C + L)^2 − C^2) + a1 · Σ_seg L) / s + b
The quadratic term is causal attention of a segment of length L after a context of C earlier tokens of the same
sequence: its queries see ((C + L)^2 − C^2) / 2 query-key pairs, which grows with C, so a later slice of a long
sequence costs more than an earlier slice of the same length. Ulysses splits both terms evenly over the s devices
(heads for attention, tokens for the GEMMs); b (kernel launches) is paid by every device once per layer call.

Backward splits along the same terms: k_attn x the attention term + k_lin x (the linear term + b). Flash
attention's backward is ~2.5x its forward while a GEMM's is 2x, so one factor for the whole layer underpriced
long chunks (attention-heavy) relative to short ones. `weight_grad_share` of the GEMM term is the weight
gradients, which a chunk's W op may compute after its backward op has sent the input gradient
(`Plan.defer_weight_grads`).

A measured profile also says how a lane of each SP degree departs from the even split (`SpDegreeCost`): the
layer's compute time is multiplied by that degree's `compute_scale` and its forward pays `call_overhead_s` more
(backward k_lin times that). Without measurements both are neutral (1 and 0).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

from proto import CostProfile, SpDegreeCost


def attention_pairs(segments: Iterable[tuple[int, int]]) -> float:
    """Σ ((C + L)^2 − C^2) over (context C, length L) segments: twice the causal query-key pairs."""
    return float(sum((c + n) * (c + n) - c * c for c, n in segments))


@functools.lru_cache(maxsize=4096)
def _interpolated(costs: tuple[SpDegreeCost, ...], sp_degree: int) -> tuple[float, float]:
    below = [c for c in costs if c.sp_degree <= sp_degree]
    above = [c for c in costs if c.sp_degree >= sp_degree]
    if not below or not above:  # outside the measured degrees: the nearest one
        nearest = below[-1] if below else above[0]
        return nearest.compute_scale, nearest.call_overhead_s
    lo, hi = below[-1], above[0]
    if lo.sp_degree == hi.sp_degree:
        return lo.compute_scale, lo.call_overhead_s
    w = (math.log2(sp_degree) - math.log2(lo.sp_degree)) / (math.log2(hi.sp_degree) - math.log2(lo.sp_degree))
    return (
        lo.compute_scale + w * (hi.compute_scale - lo.compute_scale),
        lo.call_overhead_s + w * (hi.call_overhead_s - lo.call_overhead_s),
    )


def sp_degree_cost(profile: CostProfile, sp_degree: int) -> tuple[float, float]:
    """(compute scale, extra forward seconds per layer call) of a lane of `sp_degree`: the measured degree's, the
    log2-interpolation of its measured neighbours, or the nearest measured one outside them; (1, 0) without
    measurements."""
    if not profile.sp_degree_costs:
        return 1.0, 0.0
    return _interpolated(profile.sp_degree_costs, sp_degree)


def smallest_compute_scale(profile: CostProfile) -> float:
    """The smallest compute scale any SP degree gets (interpolation stays between measured values): the factor a
    bound on every plan's compute may use."""
    return min((c.compute_scale for c in profile.sp_degree_costs), default=1.0)


def layer_forward_s(profile: CostProfile, *, attn_pairs: float, num_tokens: float, sp_degree: int) -> float:
    """Forward seconds of one layer on each device of the lane (compute only, no all-to-all)."""
    if num_tokens <= 0:
        return 0.0
    scale, extra = sp_degree_cost(profile, sp_degree)
    formula = (
        profile.attn_s_per_token2 * attn_pairs + profile.linear_s_per_token * num_tokens
    ) / sp_degree + profile.layer_overhead_s
    return scale * formula + extra


def layer_backward_s(profile: CostProfile, *, attn_pairs: float, num_tokens: float, sp_degree: int) -> float:
    """Backward seconds of one layer on each device of the lane: each term of the forward times its own factor."""
    if num_tokens <= 0:
        return 0.0
    scale, extra = sp_degree_cost(profile, sp_degree)
    attention = profile.attention_backward_to_forward * profile.attn_s_per_token2 * attn_pairs
    linear = profile.linear_backward_to_forward * profile.linear_s_per_token * num_tokens
    formula = (attention + linear) / sp_degree + profile.linear_backward_to_forward * profile.layer_overhead_s
    return scale * formula + profile.linear_backward_to_forward * extra


def layer_weight_grad_s(profile: CostProfile, *, num_tokens: float, sp_degree: int) -> float:
    """The part of `layer_backward_s` that computes the weight gradients: `weight_grad_share` of its GEMM term
    (no attention, no per-call overhead). A chunk with a W op moves this much per kept layer from its backward op,
    which then sends its input gradient that much earlier, to the W op."""
    if num_tokens <= 0:
        return 0.0
    scale, _ = sp_degree_cost(profile, sp_degree)
    linear = profile.linear_backward_to_forward * profile.linear_s_per_token * num_tokens / sp_degree
    return scale * profile.weight_grad_share * linear


def layer_mlp_forward_s(profile: CostProfile, *, num_tokens: float, sp_degree: int) -> float:
    """Forward seconds of one layer's MLP half on each device of the lane: `mlp_linear_share` of its GEMM term
    (no attention, no all-to-all): what a layer that recomputes only its MLP reruns in backward."""
    if num_tokens <= 0:
        return 0.0
    scale, _ = sp_degree_cost(profile, sp_degree)
    return scale * profile.mlp_linear_share * profile.linear_s_per_token * num_tokens / sp_degree


def layer_forward_segments_s(profile: CostProfile, segments: Iterable[tuple[int, int]], sp_degree: int) -> float:
    """`layer_forward_s` for explicit (context, length) segments."""
    segs = list(segments)
    return layer_forward_s(
        profile, attn_pairs=attention_pairs(segs), num_tokens=float(sum(n for _, n in segs)), sp_degree=sp_degree
    )


def head_forward_s(profile: CostProfile, *, num_tokens: float, sp_degree: int) -> float:
    """Final norm + LM head + loss forward seconds on each device of the last stage (tokens split over s)."""
    return profile.head_s_per_token * num_tokens / sp_degree


def head_backward_s(profile: CostProfile, *, num_tokens: float, sp_degree: int) -> float:
    """Backward of the LM head + loss: GEMM work, so k_lin x its forward."""
    return profile.linear_backward_to_forward * head_forward_s(profile, num_tokens=num_tokens, sp_degree=sp_degree)


def training_s(profile: CostProfile, *, attn_pairs: float, num_tokens: float, num_layers: int) -> float:
    """Forward + backward compute of `num_layers` layers and the LM head on one device (s = 1) without the
    per-call overhead, the layers at the smallest compute scale of any SP degree: the work `ideal_s` divides over
    the cluster, no more than any lane layout does."""
    attention = (1.0 + profile.attention_backward_to_forward) * profile.attn_s_per_token2 * attn_pairs
    linear = (1.0 + profile.linear_backward_to_forward) * profile.linear_s_per_token * num_tokens
    head = (1.0 + profile.linear_backward_to_forward) * profile.head_s_per_token * num_tokens
    return smallest_compute_scale(profile) * num_layers * (attention + linear) + head
