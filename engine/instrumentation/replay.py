"""Inspection by replay: run a conversation's token ids through the model again, capturing only what
one view asks for (today: one layer's attention). Nothing is captured while generating, so the live
stream stays on the fast path (SDPA, no probe); this costs a forward up to the layer asked for, paid
only when someone looks. Replay is deterministic: tests check it against the explicit path's capture.
Shape legend: H heads, Q query rows kept, S key positions, T tokens in a chunk.
"""
from __future__ import annotations

import numpy as np
import torch

from engine.instrumentation.probe import Probe
from engine.kv_cache import ContiguousKVCache
from engine.records import AttentionView, InstrumentOptions

REPLAY_CHUNK = 256  # queries per replay forward: bounds the [H, T, S] matrix held at once


@torch.inference_mode()
def replay_attention(model, token_ids: list[int], layer: int, queries: tuple[int, int],
                     cancelled=lambda: False) -> AttentionView | None:
    """Layer `layer`'s attention for query positions [queries[0], queries[1]) over every earlier position,
    from a replay of `token_ids` (the conversation so far) through layers 0..layer only. None when
    `cancelled()` turns true between chunks."""
    config = model.config
    if not 0 <= layer < config.n_layers:
        raise ValueError(f"layer {layer} is outside the model's {config.n_layers} layers")
    first, end = max(0, queries[0]), min(len(token_ids), queries[1])
    if first >= end:
        raise ValueError(f"no query positions in {queries} for {len(token_ids)} tokens")
    upto = config.first_layers(layer + 1)
    weight = model.embed.weight
    cache = ContiguousKVCache(upto, end, device=weight.device, dtype=weight.dtype)
    probe = Probe(InstrumentOptions(attention_layers=(layer,)), config.n_heads, config.n_kv_heads)
    out = np.zeros((config.n_heads, end - first, end), dtype=np.float32)  # [H, Q, S]
    sinks = np.zeros((config.n_heads, end - first), dtype=np.float32) if config.attn_sinks else None  # [H, Q]
    for start in range(0, end, REPLAY_CHUNK):
        if cancelled():
            return None
        stop = min(start + REPLAY_CHUNK, end)
        view = cache.view(start, stop - start)
        tokens = torch.tensor([token_ids[start:stop]], device=weight.device)
        capture = stop > first  # earlier chunks only fill the cache
        _run_layers(model, tokens, view, probe if capture else None, layer)
        if capture:
            probs = probe.attention.pop(layer)[0]  # [H, T, S=stop]
            lo = max(first, start)
            out[:, lo - first:stop - first, :stop] = probs[:, lo - start:].numpy()
            if sinks is not None:
                sinks[:, lo - first:stop - first] = probe.attention_sinks.pop(layer)[0, :, lo - start:].numpy()
    # MLA's heads all read one cached latent: one group, not the per-head K/V the expanded path computes.
    group = config.n_heads if config.mla is not None else config.n_heads // config.n_kv_heads
    return AttentionView(layer, first, tuple(h // group for h in range(config.n_heads)), out, sinks,
                         window=config.sliding_windows[layer])


def _run_layers(model, tokens: torch.Tensor, view, probe, last: int) -> None:
    """The model's forward up to and including layer `last` (what is above it cannot change its attention)."""
    model.run_blocks(tokens, view, probe, upto=last + 1)
