"""Quantization drift along a conversation: per scored position the KL divergence and top-1 agreement
against the float reference (the numbers Engine.quant_diff gives, from one computation in quality.py),
plus both models' top-N there; and how the float reference is built. Not the sliding window or the KL
(quality.py), not where the reference is kept (the Engine, until release_float_reference).
"""
from __future__ import annotations

import numpy as np
import torch

from engine.instrumentation.quality import divergence, scored_windows
from engine.loaders import load_checkpoint
from engine.quant import build_model
from engine.records import QuantDriftView


def load_float_reference(source, config, like):
    """The checkpoint at `source` with no quantization, built for `config` in the dtype and on the device
    of `like` (the loaded model): what quantization is measured against."""
    dtype = like.embed.weight.dtype
    ckpt = load_checkpoint(source, dtype=dtype)  # a GGUF's packed blocks come back dequantized
    return build_model(config, ckpt.tensors, like.embed.weight.device, dtype, "none")


def scoring_window(n_ids: int, max_seq_len: int) -> tuple[int, int]:
    """(window, stride) for scoring `n_ids` tokens: the whole text when it fits, else windows of up to
    1,024 tokens (bounded memory: two [window, vocab] log-prob tables) overlapping by half."""
    window = max(2, min(n_ids, max_seq_len, 1024))
    return window, max(1, window // 2)


def require_quantized(model) -> None:
    """A model with nothing quantized is its own float reference: there is no drift to show, and loading
    a second copy to say so would cost its memory. Say so instead (the drift panel shows the message)."""
    if not any(getattr(m, "quant_weights", lambda: [])() for m in model.modules()):
        raise ValueError("this model is not quantized (every weight is float), so nothing drifts: load it "
                         "with int8 or int4, or open a GGUF, to compare it with its float weights")


def parameter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def quant_drift(model, reference, token_ids: list[int], top_n: int, cancelled, token_text,
                quantization: str) -> QuantDriftView | None:
    """`model` against its float `reference` over `token_ids`, window by window (cancellable between
    windows: None when `cancelled()` turns true). `token_text(id)` labels the tokens; `quantization` says
    what the model's weights are."""
    config = model.config
    k = min(top_n, config.vocab_size)
    kl, agree = [], []
    tops = {side: ([], []) for side in ("float", "quant")}  # per side: top ids [S, k], their probs [S, k]
    windows = ()
    if len(token_ids) >= 2:  # nothing is predicted from fewer than two tokens
        window, stride = scoring_window(len(token_ids), config.max_seq_len)
        windows = scored_windows(model, token_ids, window, stride, reference)
    for _, _, q, p in windows:
        if cancelled():
            return None
        window_kl, window_agree = divergence(p, q)
        kl += window_kl
        agree += window_agree
        for side, log_probs in (("float", p), ("quant", q)):
            probs, ids = torch.topk(log_probs.exp(), k, dim=-1)  # most likely first
            tops[side][0].append(ids.cpu().numpy().astype(np.int64))
            tops[side][1].append(probs.cpu().numpy().astype(np.float32))
    if cancelled():
        return None
    float_ids, float_probs = (_stacked(parts, k, dtype) for parts, dtype in zip(tops["float"], _DTYPES))
    quant_ids, quant_probs = (_stacked(parts, k, dtype) for parts, dtype in zip(tops["quant"], _DTYPES))
    shown = set(token_ids[1:]) | set(float_ids.ravel().tolist()) | set(quant_ids.ravel().tolist())
    n = len(kl)
    return QuantDriftView(
        start=0, next_texts=tuple(token_text(t) for t in token_ids[1:]), kl=tuple(kl),
        top1_agree=tuple(bool(a) for a in agree), mean_kl=sum(kl) / n if n else 0.0,
        agreement=sum(agree) / n if n else 1.0,
        float_top_ids=float_ids, float_top_probs=float_probs, quant_top_ids=quant_ids, quant_top_probs=quant_probs,
        texts={t: token_text(t) for t in sorted(shown)},
        quantization=quantization,
        reference_dtype=str(reference.embed.weight.dtype).removeprefix("torch."),
        reference_bytes=parameter_bytes(reference))


_DTYPES = (np.int64, np.float32)


def _stacked(parts: list[np.ndarray], k: int, dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, k), dtype=dtype)
