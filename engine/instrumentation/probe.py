"""The opt-in collector a forward pass reports into: routing decisions and attention rows.

The model calls `record_routing` / `record_attention` only when handed a probe, and the
attention layer takes its slow explicit path only for the layers the probe asks for, so a run
without a probe pays nothing. Tensors become plain records here and nowhere else.
Shape legend: N tokens in the forward (batch*time), E experts, A active experts, B batch,
H heads, T new tokens, S key positions.
"""
from __future__ import annotations

import torch

from engine.records import AttentionRecord, InstrumentOptions, RoutingRecord


class Probe:
    def __init__(self, options: InstrumentOptions, n_heads: int, n_kv_heads: int, batch_size: int = 1):
        self.options = options
        self.group = n_heads // n_kv_heads
        self.batch_size = batch_size
        self.routing: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.attention: dict[int, torch.Tensor] = {}
        self.attention_sinks: dict[int, torch.Tensor] = {}  # gpt-oss: each row's share given to the sink [B, H, T]

    def wants_attention(self, layer: int) -> bool:
        return layer in self.options.attention_layers

    def record_routing(self, layer: int, probs, expert_ids, gate_weights) -> None:
        if self.options.routing:
            # [N, E], [N, A], [N, A]; detached copies so later in-place work cannot change them
            self.routing[layer] = (probs.detach().float().cpu(), expert_ids.detach().cpu(),
                                   gate_weights.detach().float().cpu())

    def record_attention(self, layer: int, probs, sink=None) -> None:
        self.attention[layer] = probs.detach().float().cpu()  # [B, H, T, S]
        if sink is not None:  # with attention sinks the keys' weights sum to 1 - sink per row
            self.attention_sinks[layer] = sink.detach().float().cpu()  # [B, H, T]

    def routing_for(self, row: int, token: int = -1) -> tuple[RoutingRecord, ...]:
        """Routing of one token (default: the last) of batch row `row`, every MoE layer."""
        out = []
        for layer in sorted(self.routing):
            probs, ids, weights = self.routing[layer]
            T = probs.shape[0] // self.batch_size
            n = row * T + (token % T)
            out.append(RoutingRecord(layer, tuple(ids[n].tolist()), tuple(weights[n].tolist()),
                                     tuple(probs[n].tolist())))
        return tuple(out)

    def attention_for(self, row: int, context_len: int, token: int = -1) -> tuple[AttentionRecord, ...]:
        """The attention rows of one token over its `context_len` visible positions."""
        heads = self.options.attention_heads
        out = []
        for layer in sorted(self.attention):
            probs = self.attention[layer][row, :, token, :context_len]  # [H, S]
            sinks = self.attention_sinks.get(layer)
            for h in (heads or range(probs.shape[0])):
                sink = float(sinks[row, h, token]) if sinks is not None else 0.0
                out.append(AttentionRecord(layer, h, h // self.group, tuple(probs[h].tolist()), sink))
        return tuple(out)
