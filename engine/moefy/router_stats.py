"""Router statistics of an MoE model over a text, as plain RouterStats records (engine/records.py)
the routing panel and reports can draw: per layer fᵢ (share of the N·k routing slots expert i got),
Pᵢ (mean router probability of expert i) and the Switch-Transformer auxiliary value N·Σ fᵢ·Pᵢ.

A uniform router with uniform routing gives 1.0; a collapsed router that sends every token to the
same expert with probability ~1 gives ~N. Tokens that route differently pull it towards 1.
"""
from __future__ import annotations

import torch

from engine.kv_cache import ContiguousKVCache
from engine.records import RouterStats


class RoutingCounter:
    """A probe (engine/instrumentation protocol) that only sums routing: per layer the expert
    counts [E] and router probabilities [E] over every token the model saw."""

    def __init__(self, n_experts: int):
        self.n_experts = n_experts
        self.counts: dict[int, torch.Tensor] = {}
        self.prob_sums: dict[int, torch.Tensor] = {}
        self.tokens: dict[int, int] = {}

    def wants_attention(self, layer: int) -> bool:
        return False

    def record_routing(self, layer: int, probs, expert_ids, gate_weights) -> None:
        counts = torch.bincount(expert_ids.reshape(-1).cpu(), minlength=self.n_experts).double()
        self.counts[layer] = self.counts.get(layer, 0) + counts
        self.prob_sums[layer] = self.prob_sums.get(layer, 0) + probs.reshape(-1, self.n_experts).double().sum(0).cpu()
        self.tokens[layer] = self.tokens.get(layer, 0) + probs.reshape(-1, self.n_experts).shape[0]

    def stats(self) -> tuple[RouterStats, ...]:
        out = []
        for layer in sorted(self.counts):
            f = self.counts[layer] / self.counts[layer].sum()
            p = self.prob_sums[layer] / self.tokens[layer]
            out.append(RouterStats(layer, self.tokens[layer], tuple(f.tolist()), tuple(p.tolist()),
                                   float(self.n_experts * (f * p).sum())))
        return tuple(out)


@torch.inference_mode()
def router_stats(model, ids: list[int], window: int = 512) -> tuple[RouterStats, ...]:
    """Run `model` over `ids` in independent windows and count its routing (empty for a dense model)."""
    if model.config.moe is None:
        return ()
    counter = RoutingCounter(model.config.moe.n_experts)
    device, dtype = model.embed.weight.device, model.embed.weight.dtype
    for start in range(0, len(ids), window):
        chunk = ids[start:start + window]
        cache = ContiguousKVCache(model.config, len(chunk), device=device, dtype=dtype)
        model(torch.tensor([chunk], device=device), cache.view(0, len(chunk)), probe=counter)
    return counter.stats()
