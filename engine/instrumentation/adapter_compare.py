"""What the LoRA adapters change at one token: the next-token distribution after a context with the
enabled adapters and with none (engine/layers/lora.py suspends them), both by replay of the same ids in
chunks over a contiguous cache, as the logit lens and the interventions' what-if replay. Interventions
kept on for generation are suspended for both replays, so the difference is the adapters' alone.
Shape legend: T tokens in a chunk, V vocab.
"""
from __future__ import annotations

import torch

from engine.instrumentation.interventions import as_loaded
from engine.kv_cache import ContiguousKVCache
from engine.layers.lora import adapter_stack
from engine.records import AdapterComparisonView

COMPARE_CHUNK = 256  # tokens per replay forward: bounds the activations held at once


@torch.inference_mode()
def next_token_log_probs(model, token_ids: list[int], cancelled=lambda: False) -> torch.Tensor | None:
    """log-softmax of the model's logits for the token after `token_ids`, as the model is hooked now: [V]."""
    weight = model.embed.weight
    cache = ContiguousKVCache(model.config, len(token_ids), device=weight.device, dtype=weight.dtype)
    logits = None
    for start in range(0, len(token_ids), COMPARE_CHUNK):
        if cancelled():
            return None
        stop = min(start + COMPARE_CHUNK, len(token_ids))
        tokens = torch.tensor([token_ids[start:stop]], device=weight.device)  # [1, T]
        logits = model(tokens, cache.view(start, stop - start), last_only=True)  # [1, 1, V]
    return torch.log_softmax(logits[0, -1], dim=-1)


def adapter_comparison(model, context_ids, target_id: int, token_text, top_n: int,
                       cancelled=lambda: False) -> AdapterComparisonView | None:
    """The distributions after `context_ids` with the enabled adapters and without any adapter, their union
    top-N and KL(without ‖ with) over the whole vocabulary. None when `cancelled()` turns true."""
    context_ids = list(context_ids)
    if not context_ids:
        raise ValueError("the context is empty: there is nothing to replay")
    if len(context_ids) > model.config.max_seq_len:
        raise ValueError(f"the context has {len(context_ids)} tokens; the model holds {model.config.max_seq_len}")
    if top_n < 1:
        raise ValueError("the comparison needs at least one token")
    stack = adapter_stack(model)
    applied = tuple(f"{a.name} ×{a.scale:g}" for a in stack.adapters.values() if a.enabled)
    if not applied:
        raise ValueError("no adapter is enabled: there is nothing to compare")
    with as_loaded(model):
        changed = next_token_log_probs(model, context_ids, cancelled)
        if changed is None:
            return None
        with stack.suspended():
            base = next_token_log_probs(model, context_ids, cancelled)
    if base is None:
        return None
    p, q = base.exp(), changed.exp()  # [V] each
    # p log(p/q), with 0 log 0 = 0 (a token the base model rules out contributes nothing).
    kl = float(torch.where(p > 0, p * (base - changed), torch.zeros_like(p)).sum().clamp_min(0))
    n = min(top_n, p.numel())
    union = set(torch.topk(p, n).indices.tolist()) | set(torch.topk(q, n).indices.tolist())
    ids = sorted(union, key=lambda t: (-float(p[t]), t))
    return AdapterComparisonView(applied, len(context_ids), int(target_id), tuple(ids),
                                 tuple(token_text(t) for t in ids), tuple(float(p[t]) for t in ids),
                                 tuple(float(q[t]) for t in ids), kl, int(p.argmax()) == int(q.argmax()))
