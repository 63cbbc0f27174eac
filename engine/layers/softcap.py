"""Attention with soft-capped scores (Gemma 2): scores -> cap * tanh(scores / cap) before the softmax,
which SDPA cannot do. The scores are explicit, grouped by KV head so K and V are read in place (no copy
per query head, as a repeat would make): the query heads of a group are one [G*T, d] block against their
shared keys. Where a probe wants the attention rows, Attention._explicit computes the same numbers.
Shape legend: B batch, H query heads, K kv heads, G = H/K, T queries, S keys, d head_dim.
"""
from __future__ import annotations

import torch


def softcapped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                         scale: float, cap: float) -> torch.Tensor:
    """q [B, H, T, d], k and v [B, K, S, d], a boolean mask [B or 1, 1, T, S] (None: all visible) ->
    [B, H, T, d]. Scores and softmax in fp32; the matmuls in the inputs' dtype, as the reference does."""
    B, H, T, d = q.shape
    K, S = k.shape[1], k.shape[2]
    G = H // K
    scores = (q.reshape(B, K, G * T, d) @ k.transpose(-1, -2)).float() * scale  # [B, K, G*T, S]
    scores = torch.tanh(scores / cap) * cap
    if mask is not None:
        scores = scores.view(B, K, G, T, S).masked_fill(~mask.unsqueeze(1), float("-inf")).view(B, K, G * T, S)
    probs = torch.softmax(scores, dim=-1)  # [B, K, G*T, S]
    return (probs.to(v.dtype) @ v).view(B, H, T, d)
