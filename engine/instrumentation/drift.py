"""Quantization drift along a conversation: per scored position the KL divergence and top-1 agreement
against the float reference (the numbers Engine.quant_diff gives, from one computation in quality.py),
plus both models' top-N there. Owns loading the float reference; not the sliding window or the KL.
"""
from __future__ import annotations

import numpy as np
import torch

from engine.instrumentation.quality import divergence, scored_windows
from engine.loaders import load_checkpoint
from engine.quant import build_model
from engine.records import QuantDriftView


def float_reference(engine):
    """The engine's checkpoint in float (no quantization) in the engine's dtype and device: loaded on
    first use and kept in engine._float_reference until Engine.release_float_reference."""
    if engine._float_reference is None:
        dtype = engine.model.embed.weight.dtype
        ckpt = load_checkpoint(engine.source, dtype=dtype)  # a GGUF's packed blocks come back dequantized
        engine._float_reference = build_model(engine.config, ckpt.tensors, engine.device, dtype, "none")
    return engine._float_reference


def scoring_window(n_ids: int, max_seq_len: int) -> tuple[int, int]:
    """(window, stride) for scoring `n_ids` tokens: the whole text when it fits, else windows of up to
    1,024 tokens (bounded memory: two [window, vocab] log-prob tables) overlapping by half."""
    window = max(2, min(n_ids, max_seq_len, 1024))
    return window, max(1, window // 2)


def is_quantized(model) -> bool:
    return any(getattr(m, "quant_weights", lambda: [])() for m in model.modules())


def parameter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def quant_drift(engine, token_ids: list[int], top_n: int, cancelled) -> QuantDriftView | None:
    """Both models over `token_ids`, window by window (cancellable between windows: None when
    `cancelled()` turns true). A model with nothing quantized raises ValueError: its float reference
    is itself, so there is no drift to show, and loading a second copy to say so would cost its memory."""
    if not is_quantized(engine.model):
        raise ValueError("this model is not quantized (every weight is float), so nothing drifts: load it "
                         "with int8 or int4, or open a GGUF, to compare it with its float weights")
    reference = float_reference(engine)
    k = min(top_n, engine.config.vocab_size)
    kl, agree = [], []
    tops = {side: ([], []) for side in ("float", "quant")}  # per side: top ids [S, k], their probs [S, k]
    windows = ()
    if len(token_ids) >= 2:  # nothing is predicted from fewer than two tokens
        window, stride = scoring_window(len(token_ids), engine.config.max_seq_len)
        windows = scored_windows(engine.model, token_ids, window, stride, reference)
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
        start=0, next_texts=engine.token_texts(token_ids[1:]), kl=tuple(kl),
        top1_agree=tuple(bool(a) for a in agree), mean_kl=sum(kl) / n if n else 0.0,
        agreement=sum(agree) / n if n else 1.0,
        float_top_ids=float_ids, float_top_probs=float_probs, quant_top_ids=quant_ids, quant_top_probs=quant_probs,
        texts={t: engine.tokenizer.token_text(t) for t in sorted(shown)},
        quantization=engine.facts().weights,
        reference_dtype=str(reference.embed.weight.dtype).removeprefix("torch."),
        reference_bytes=parameter_bytes(reference))


_DTYPES = (np.int64, np.float32)


def _stacked(parts: list[np.ndarray], k: int, dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, k), dtype=dtype)
