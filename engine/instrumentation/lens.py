"""The logit lens and interventions by replay: run a context through the model again in chunks, keep the
residual stream after every block at the last few positions only, and read each through the model's
own final norm and LM head (tied, quantized or not). Nothing is captured while generating.

Both views compare against the model *as loaded*: persistent interventions (Engine.set_interventions)
are suspended during a replay, and only the interventions passed in apply (interventions.applied).
Shape legend: L layers, P positions kept (columns), D dim, V vocab, N top-N, T tokens in a chunk.
"""
from __future__ import annotations

import numpy as np
import torch

from engine.instrumentation.interventions import applied, check_interventions
from engine.kv_cache import ContiguousKVCache
from engine.records import InterventionView, LogitLensView

LENS_CHUNK = 256  # tokens per replay forward: bounds the activations held at once for long contexts


@torch.inference_mode()
def logit_lens(model, context_ids, target_id, token_text, columns, top_n, interventions, cancelled
               ) -> LogitLensView | None:
    """Every layer's next-token prediction at the last `columns` positions of `context_ids`, with
    `interventions` applied for this replay only. None when `cancelled()` turns true between chunks."""
    first = _check(model, context_ids, columns, top_n, interventions)
    with applied(model, interventions):
        residuals = _residuals(model, context_ids, first, cancelled)
    if residuals is None:
        return None
    return _lens_view(model, context_ids, first, target_id, token_text, residuals, top_n, interventions)


@torch.inference_mode()
def intervene(model, context_ids, target_id, token_text, interventions, top_n, columns, cancelled
              ) -> InterventionView | None:
    """The next-token distribution after `context_ids` as loaded and with `interventions` (two replays),
    their union top-N, KL(as loaded ‖ intervened) over the whole vocabulary, and the lens under them."""
    first = _check(model, context_ids, columns, top_n, interventions)
    with applied(model, ()):
        base = _residuals(model, context_ids, len(context_ids) - 1, cancelled)
    if base is None:
        return None
    with applied(model, interventions):
        changed = _residuals(model, context_ids, first, cancelled)
    if changed is None:
        return None
    base_log = torch.log_softmax(_logits(model, base[-1, -1:])[0], dim=-1)  # [V]
    changed_log = torch.log_softmax(_logits(model, changed[-1, -1:])[0], dim=-1)  # [V]
    p, q = base_log.exp(), changed_log.exp()
    # p log(p/q), with 0 log 0 = 0 (a token the model as loaded rules out contributes nothing).
    kl = float(torch.where(p > 0, p * (base_log - changed_log), torch.zeros_like(p)).sum().clamp_min(0))
    n = min(top_n, p.numel())
    union = set(torch.topk(p, n).indices.tolist()) | set(torch.topk(q, n).indices.tolist())
    ids = sorted(union, key=lambda t: (-float(p[t]), t))
    lens = _lens_view(model, context_ids, first, target_id, token_text, changed, top_n, interventions)
    return InterventionView(tuple(interventions), target_id, tuple(ids), tuple(token_text(t) for t in ids),
                            tuple(float(p[t]) for t in ids), tuple(float(q[t]) for t in ids), kl,
                            int(p.argmax()) == int(q.argmax()), lens)


def _check(model, context_ids, columns, top_n, interventions) -> int:
    """The first kept position; ValueError for what cannot be replayed."""
    if not context_ids:
        raise ValueError("the context is empty: there is nothing to replay")
    if len(context_ids) > model.config.max_seq_len:
        raise ValueError(f"the context has {len(context_ids)} tokens; the model holds {model.config.max_seq_len}")
    if columns < 1 or top_n < 1:
        raise ValueError("the lens needs at least one column and one prediction per cell")
    check_interventions(model, interventions)
    return max(0, len(context_ids) - columns)


@torch.inference_mode()
def _residuals(model, token_ids: list[int], first: int, cancelled) -> torch.Tensor | None:
    """The residual stream after every block at positions [first, len): [L, P, D]. The context runs in
    chunks over a contiguous cache, so memory stays bounded for thousands of tokens."""
    end, weight = len(token_ids), model.embed.weight
    cache = ContiguousKVCache(model.config, end, device=weight.device, dtype=weight.dtype)
    kept = torch.empty(model.config.n_layers, end - first, model.config.dim, dtype=weight.dtype,
                       device=weight.device)  # [L, P, D]
    for start in range(0, end, LENS_CHUNK):
        if cancelled():
            return None
        stop = min(start + LENS_CHUNK, end)
        view = cache.view(start, stop - start)
        lo = max(first, start)

        def keep(layer: int, x: torch.Tensor) -> None:
            if stop > first:
                kept[layer, lo - first:stop - first] = x[0, lo - start:]
        model.run_blocks(torch.tensor([token_ids[start:stop]], device=weight.device), view, each=keep)
    return None if cancelled() else kept


def _logits(model, residual: torch.Tensor) -> torch.Tensor:
    """The model's own head on residual rows [P, D]: final norm, then the LM head or the tied embedding,
    as Decoder.forward ends. fp32 [P, V]."""
    return model.head(residual)


@torch.inference_mode()
def _lens_view(model, context_ids, first, target_id, token_text, residuals, top_n, interventions) -> LogitLensView:
    positions = tuple(range(first, len(context_ids)))
    next_ids = tuple(context_ids[pos + 1] for pos in positions[:-1]) + (target_id,)
    L, P = residuals.shape[:2]
    n = min(top_n, model.config.vocab_size)
    top_ids = np.zeros((L, P, n), dtype=np.int64)
    top_probs = np.zeros((L, P, n), dtype=np.float32)
    next_probs = np.zeros((L, P), dtype=np.float32)
    columns = torch.arange(P, device=residuals.device)
    targets = torch.tensor(next_ids, device=residuals.device)
    for layer in range(L):  # one layer at a time: [P, V] held, never [L, P, V]
        probs = torch.softmax(_logits(model, residuals[layer]), dim=-1)  # [P, V]
        values, ids = torch.topk(probs, n, dim=-1)  # [P, N]
        top_ids[layer], top_probs[layer] = ids.cpu().numpy(), values.cpu().numpy()
        next_probs[layer] = probs[columns, targets].cpu().numpy()
    shown = set(top_ids.flatten().tolist()) | set(next_ids)
    return LogitLensView(positions, tuple(token_text(context_ids[pos]) for pos in positions), next_ids, target_id,
                         top_ids, top_probs, next_probs, {t: token_text(t) for t in sorted(shown)},
                         tuple(interventions))
