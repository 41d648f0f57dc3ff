"""Compute time of transformer layers on a lane (DESIGN §6), as pure functions of a `CostProfile`.

Forward time of one layer for a chunk on a lane of SP degree s:
    t = (a2 · Σ_seg ((C + L)^2 − C^2) + a1 · Σ_seg L) / s + b
The quadratic term is causal attention of a segment of length L after a context of C earlier tokens of the same
sequence: its queries see ((C + L)^2 − C^2) / 2 query-key pairs, which grows with C, so a later slice of a long
sequence costs more than an earlier slice of the same length. Ulysses splits both terms evenly over the s devices
(heads for attention, tokens for the GEMMs); b (kernel launches) is paid by every device once per layer call.

Backward splits along the same terms: k_attn x the attention term + k_lin x (the linear term + b). Flash
attention's backward is ~2.5x its forward while a GEMM's is 2x, so one factor for the whole layer underpriced
long chunks (attention-heavy) relative to short ones.
"""

from __future__ import annotations

from collections.abc import Iterable

from proto import CostProfile


def attention_pairs(segments: Iterable[tuple[int, int]]) -> float:
    """Σ ((C + L)^2 − C^2) over (context C, length L) segments: twice the causal query-key pairs."""
    return float(sum((c + n) * (c + n) - c * c for c, n in segments))


def layer_forward_s(profile: CostProfile, *, attn_pairs: float, num_tokens: float, sp_degree: int) -> float:
    """Forward seconds of one layer on each device of the lane (compute only, no all-to-all)."""
    if num_tokens <= 0:
        return 0.0
    return (
        profile.attn_s_per_token2 * attn_pairs + profile.linear_s_per_token * num_tokens
    ) / sp_degree + profile.layer_overhead_s


def layer_backward_s(profile: CostProfile, *, attn_pairs: float, num_tokens: float, sp_degree: int) -> float:
    """Backward seconds of one layer on each device of the lane: each term of the forward times its own factor."""
    if num_tokens <= 0:
        return 0.0
    attention = profile.attention_backward_to_forward * profile.attn_s_per_token2 * attn_pairs
    linear = profile.linear_backward_to_forward * profile.linear_s_per_token * num_tokens
    return (attention + linear) / sp_degree + profile.linear_backward_to_forward * profile.layer_overhead_s


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
    per-call overhead: the work `ideal_s` divides over the cluster."""
    attention = (1.0 + profile.attention_backward_to_forward) * profile.attn_s_per_token2 * attn_pairs
    linear = (1.0 + profile.linear_backward_to_forward) * profile.linear_s_per_token * num_tokens
    head = (1.0 + profile.linear_backward_to_forward) * profile.head_s_per_token * num_tokens
    return num_layers * (attention + linear) + head
