"""Attention sinks (gpt-oss): one learned logit per query head that joins every softmax row, taking
probability mass without contributing a value. Two exact forms: explicit scores (the probe's path,
which also reports how much each row gave to the sink), and SDPA over one extra "sink key".

Decoding (one query a row) takes explicit scores, grouped by KV head so K/V are read in place: the
scores are one row per head. Longer chunks take SDPA with a sink key, whose cost is one padded copy of
K/V (O(S·d), small beside the O(T·S·d) attention) instead of a [B, H, T, S] matrix.

The sink key: SDPA cannot add a per-head constant to a row's normaliser, but a key can. Every key
gets P extra zero dimensions (P >= 1, so the width stays a multiple of 8 for the fused kernels), one
more key is appended whose extra dimension is 1/scale (the rest zero) with an all-zero value, and each
query head h carries sink[h] in that extra dimension. Then q'·k' = q·k for every real key and
scale · q'·k_sink = sink[h] for the sink, per query head, even when heads share K/V (GQA).
Shape legend: B batch, H query heads, K kv heads, T queries, S keys, d head_dim, P padding dims.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def softmax_with_sinks(scores: torch.Tensor, sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [B, H, T, S] (masked entries -inf) -> (probs over the keys [B, H, T, S], the sink's share
    [B, H, T]); the two sum to 1 per row."""
    B, H, T, _ = scores.shape
    sink = sinks.to(scores.dtype).view(1, H, 1, 1).expand(B, H, T, 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)  # [B, H, T, S+1]
    return probs[..., :-1], probs[..., -1]


def sdpa_with_sinks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                    sinks: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention for q [B, H, T, d], k and v [B, K, S, d], a boolean mask [B or 1, 1, T, S] (or None: all
    visible) and per-head sink logits [H] -> [B, H, T, d], the softmax over keys and sink together."""
    if q.shape[2] == 1:
        return _decode_with_sinks(q, k, v, mask, sinks, scale)
    return _sdpa_sink_key(q, k, v, mask, sinks, scale)


def _decode_with_sinks(q, k, v, mask, sinks, scale) -> torch.Tensor:
    B, H, T, d = q.shape
    K, S = k.shape[1], k.shape[2]
    G = H // K
    # fp32 scores, as SDPA's kernels keep them (for an fp32 model the casts are no-ops, so K is read in place)
    scores = (q.reshape(B, K, G * T, d).float() @ k.float().transpose(-1, -2)) * scale  # [B, K, G*T, S]
    scores = scores.view(B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs, _ = softmax_with_sinks(scores, sinks)  # [B, H, T, S]
    return (probs.to(v.dtype).view(B, K, G * T, S) @ v).view(B, H, T, d)


def _sdpa_sink_key(q, k, v, mask, sinks, scale) -> torch.Tensor:
    B, H, T, d = q.shape
    K, S = k.shape[1], k.shape[2]
    P = 8 - d % 8  # 1..8 extra dims
    q_extra = q.new_zeros(B, H, T, P)
    q_extra[..., 0] = sinks.to(q.dtype).view(1, H, 1)
    q2 = torch.cat([q, q_extra], dim=-1)  # [B, H, T, d+P]
    k2 = k.new_zeros(B, K, S + 1, d + P)
    k2[:, :, :S, :d] = k
    k2[:, :, S, d] = 1.0 / scale  # the sink key: scale · (sink[h] · 1/scale) = sink[h]
    v2 = v.new_zeros(B, K, S + 1, d + P)  # padded like k: fused kernels want equal widths
    v2[:, :, :S, :d] = v
    if mask is not None:
        mask = torch.cat([mask, mask.new_ones(*mask.shape[:-1], 1)], dim=-1)  # the sink is always visible
    out = F.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask, scale=scale, enable_gqa=H != K)
    return out[..., :d]  # [B, H, T, d]
