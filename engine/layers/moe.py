"""Sparse mixture-of-experts block: a router picks k experts per token, experts run batched by expert.

Shape legend: N tokens (batch*time flattened), D dim, E experts, A active experts per token (top-k),
I expert hidden dim. Expert weights are stacked [E, ...] so that a token's experts are gathered,
not looped over; the Python loop runs over the *experts that received tokens*, never over tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import MoeConfig
from engine.layers.mlp import SwiGLU


def route(router_logits: torch.Tensor, moe: MoeConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick experts per token. Returns (router_probs [N,E], expert_ids [N,A], gate_weights [N,A]).

    Two published conventions:
      topk_softmax (Mixtral): weights = softmax over the k chosen logits.
      softmax_topk (Qwen-MoE, OLMoE): softmax over all E, keep the top k, renormalise only if asked.
    Both expose the full softmax so panels can show the router's whole distribution (for a
    MoEfied checkpoint, of the logits before its router_scale: see MoeConfig). DeepSeek-V2 takes
    softmax_topk among its best expert groups only (keep_best_groups) and scales the k weights.
    """
    probs = F.softmax(router_logits.float(), dim=-1)  # [N, E]
    candidates = probs if moe.n_group == 1 else keep_best_groups(probs, moe)  # [N, E]
    top_probs, expert_ids = torch.topk(candidates, moe.n_experts_per_tok, dim=-1)  # [N, A]
    if moe.router == "topk_softmax" or moe.norm_topk_prob:
        # softmax over the top-k logits == top-k of the full softmax, renormalised.
        top_probs = top_probs / top_probs.sum(dim=-1, keepdim=True)
    if moe.routed_scaling_factor != 1.0:  # DeepSeek: after any renormalisation, as its reference does
        top_probs = top_probs * moe.routed_scaling_factor
    if moe.router_scale != 1.0:
        probs = F.softmax(router_logits.float() / moe.router_scale, dim=-1)
    return probs, expert_ids, top_probs.to(router_logits.dtype)


def keep_best_groups(probs: torch.Tensor, moe: MoeConfig) -> torch.Tensor:
    """DeepSeek's group-limited routing: the experts form n_group equal groups (G below); each token keeps
    the topk_group groups whose best expert scores highest, and every expert outside them scores 0 for the
    top-k that follows. probs [N, E] -> [N, E]."""
    N, E = probs.shape
    grouped = probs.view(N, moe.n_group, E // moe.n_group)  # [N, G, E/G]
    best_groups = grouped.amax(dim=-1).topk(moe.topk_group, dim=-1).indices  # [N, topk_group]
    keep = torch.zeros(N, moe.n_group, dtype=torch.bool, device=probs.device).scatter_(1, best_groups, True)
    return grouped.masked_fill(~keep.unsqueeze(-1), 0.0).view(N, E)


def expert_glu(gate: torch.Tensor, up: torch.Tensor, moe: MoeConfig) -> torch.Tensor:
    """The gated activation between an expert's gate/up and its down projection: silu(gate) * up, or
    gpt-oss's clamped variant (gate capped at +limit, up clamped to ±limit, gate·sigmoid(alpha·gate)·(up + 1))."""
    if moe.swiglu_limit is None:
        return F.silu(gate) * up
    limit = moe.swiglu_limit
    gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
    return gate * torch.sigmoid(gate * moe.swiglu_alpha) * (up + 1)


class SparseMoE(nn.Module):
    def __init__(self, dim: int, moe: MoeConfig):
        super().__init__()
        self.moe = moe
        E, I = moe.n_experts, moe.expert_hidden_dim
        self.router = nn.Linear(dim, E, bias=moe.router_bias)
        self.w_gate = nn.Parameter(torch.empty(E, I, dim))
        self.w_up = nn.Parameter(torch.empty(E, I, dim))
        self.w_down = nn.Parameter(torch.empty(E, dim, I))
        # gpt-oss's experts add biases: [E, I] after gate and up, [E, D] after down (None elsewhere)
        self.b_gate = nn.Parameter(torch.empty(E, I)) if moe.expert_bias else None
        self.b_up = nn.Parameter(torch.empty(E, I)) if moe.expert_bias else None
        self.b_down = nn.Parameter(torch.empty(E, dim)) if moe.expert_bias else None
        self.shared = SwiGLU(dim, moe.shared_expert_hidden_dim) if moe.shared_expert_hidden_dim else None
        self.shared_gate = nn.Linear(dim, 1, bias=False) if self.shared is not None and moe.shared_expert_gated else None
        self.offloaded = False  # set by engine/runtime/moe_offload.py: experts live on another device

    def forward(self, x: torch.Tensor, layer_idx: int = 0, probe=None) -> torch.Tensor:
        B, T, D = x.shape
        flat = x.reshape(-1, D)  # [N, D]
        probs, expert_ids, gate_weights = route(self.router(flat), self.moe)
        if probe is not None:
            probe.record_routing(layer_idx, probs, expert_ids, gate_weights)
        out = self._experts(flat, expert_ids, gate_weights)
        if self.shared is not None:
            shared = self.shared(flat)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(flat)) * shared
            out = out + shared
        return out.view(B, T, D)

    def expert_mlp(self, e: int, h: torch.Tensor) -> torch.Tensor:
        """Expert e's SwiGLU on its tokens h [n, D] -> [n, D] (quantization overrides this).
        Offloaded experts (engine/runtime/moe_offload.py) live elsewhere, usually in pinned CPU memory:
        only the experts that received tokens are copied to h's device, one step at a time."""
        gate, up, down = self.w_gate[e], self.w_up[e], self.w_down[e]
        if self.offloaded:
            gate, up, down = (w.to(h.device, non_blocking=True) for w in (gate, up, down))
        return self.down_bias(e, self.glu(e, h @ gate.T, h @ up.T) @ down.T)

    def glu(self, e: int, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """Expert e's activation on its gate and up projections [n, I] (their biases added first, if any)."""
        if self.b_gate is not None:
            gate, up = gate + self.b_gate[e], up + self.b_up[e]
        return expert_glu(gate, up, self.moe)

    def down_bias(self, e: int, y: torch.Tensor) -> torch.Tensor:
        return y if self.b_down is None else y + self.b_down[e]

    def _experts(self, flat: torch.Tensor, expert_ids: torch.Tensor, gate_weights: torch.Tensor) -> torch.Tensor:
        N, A = expert_ids.shape
        if N == 1:
            # One decoding token: no sort, scatter or zero buffer, only its k experts. Summed in expert
            # order, which is what the general path's index_add into zeros computes, bit for bit.
            out = None
            for e, w in sorted(zip(expert_ids[0].tolist(), gate_weights[0])):
                y = self.expert_mlp(e, flat) * w
                out = y if out is None else out + y
            return out
        # Sort the N*A (token, expert) assignments by expert so each expert sees one contiguous slice.
        flat_ids = expert_ids.reshape(-1)  # [N*A]
        order = torch.argsort(flat_ids, stable=True)  # [N*A]
        token_of = order // A  # which token each sorted assignment belongs to
        counts = torch.bincount(flat_ids, minlength=self.moe.n_experts).tolist()  # one sync per layer
        weights = gate_weights.reshape(-1)[order].unsqueeze(-1)  # [N*A, 1]
        out = torch.zeros_like(flat)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue  # untouched experts' weights are never read
            rows = token_of[start:start + n]
            h = flat[rows]  # [n, D]
            out.index_add_(0, rows, self.expert_mlp(e, h) * weights[start:start + n])
            start += n
        return out
