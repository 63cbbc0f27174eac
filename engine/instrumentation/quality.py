"""What a model (or a quantization of it) costs in quality: perplexity over a text with a sliding
window, and the per-token KL divergence / top-1 agreement between two models on the same tokens.

Plain forwards over a contiguous cache (no sampling, no paging): the numbers depend only on the
weights. Sliding window as in transformers' perplexity guide: each window of `window` tokens
scores only the tokens the previous window did not, so every token but the first is scored once
with at least `window - stride` tokens of context (except near the start).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from engine.kv_cache import ContiguousKVCache
from engine.records import QuantDiff

SHIPPED_TEXT = Path(__file__).resolve().parents[2] / "resources" / "text" / "botchan_chapter1.txt"


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    mean_nll: float
    tokens_scored: int
    window: int
    stride: int


def _windows(n_tokens: int, window: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, first scored position) per window; positions [first, end) are scored."""
    # stride < window: a window's first scored token is predicted from the token before it,
    # which must be inside the same window
    if window < 2 or not 0 < stride < window:
        raise ValueError("need window >= 2 and 0 < stride < window")
    scored_to = 1  # token 0 has no context to be predicted from
    start = 0
    while scored_to < n_tokens:
        end = min(start + window, n_tokens)
        yield start, end, scored_to
        scored_to = end
        start = max(0, end - (window - stride))
        if end == n_tokens:
            break


@torch.inference_mode()
def _log_probs(model, ids: list[int], start: int, end: int) -> torch.Tensor:
    """log-softmax of the next-token logits for positions [start, end) -> [end - start, V]."""
    device = model.embed.weight.device
    tokens = torch.tensor([ids[start:end]], device=device)
    cache = ContiguousKVCache(model.config, end - start, device=device, dtype=model.embed.weight.dtype)
    return F.log_softmax(model(tokens, cache.view(0, end - start))[0].float(), dim=-1)


def scored_windows(model, ids: list[int], window: int, stride: int, reference=None
                   ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Per window (see _windows): the first scored position `first`, the targets ids[first:end], the
    model's log-probs [S, V] predicting them and the reference's (None without one). One window's
    log-probs at a time: memory is bounded by the window, not by len(ids)."""
    for start, end, first in _windows(len(ids), window, stride):
        rows = slice(first - 1 - start, end - 1 - start)  # row i predicts token start + i + 1
        q = _log_probs(model, ids, start, end)[rows]
        targets = torch.tensor(ids[first:end], device=q.device)
        p = None if reference is None else _log_probs(reference, ids, start, end)[rows].to(q.device)
        yield first, targets, q, p


def divergence(p: torch.Tensor, q: torch.Tensor) -> tuple[list[float], list[bool]]:
    """Per row KL(p || q) of two log-prob rows [S, V] and whether both put the same token first."""
    kl = (p.exp() * (p - q)).sum(-1).clamp(min=0)  # rounding can make a tiny KL negative
    return kl.tolist(), (p.argmax(-1) == q.argmax(-1)).tolist()


def evaluate(model, ids: list[int], window: int = 512, stride: int = 256,
             reference=None) -> tuple[Perplexity, QuantDiff | None]:
    """Perplexity of `model` over `ids` and, with a `reference` model (typically the float model of
    a quantized one), the per-token KL(reference || model) and top-1 agreement, in one pass: each
    window runs each model once."""
    total, count, kl, agree = 0.0, 0, [], []
    for _, targets, q, p in scored_windows(model, ids, window, stride, reference):
        total -= q.gather(1, targets[:, None]).sum().item()
        count += len(targets)
        if p is not None:
            window_kl, window_agree = divergence(p, q)
            kl += window_kl
            agree += window_agree
    if count == 0:
        raise ValueError("the text is too short to score (it needs at least 2 tokens)")
    ppl = Perplexity(math.exp(total / count), total / count, count, window, stride)
    if reference is None:
        return ppl, None
    return ppl, QuantDiff(tuple(kl), tuple(bool(a) for a in agree), sum(kl) / count, sum(agree) / count)


def perplexity(model, ids: list[int], window: int = 512, stride: int = 256) -> Perplexity:
    return evaluate(model, ids, window, stride)[0]


def compare(reference, model, ids: list[int], window: int = 512, stride: int = 256) -> QuantDiff:
    """Per scored token: KL(reference || model) of the next-token distributions and whether both
    put the same token first. `reference` is typically the float model, `model` a quantized one."""
    return evaluate(model, ids, window, stride, reference)[1]
