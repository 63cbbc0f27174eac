"""Causal self-attention with grouped-query heads (MHA, GQA, MQA), RoPE, optional q/k-norm and
sliding window. Reads and writes K/V through the cache it is handed; never owns one.

Shape legend: B batch, T new tokens, S cached+new tokens, D dim, H query heads, K kv heads,
d head_dim, G = H/K queries per kv head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from engine.layers.norm import RMSNorm
from engine.layers.rope import apply_rope, apply_rope_folded, sign_folded_sin
from engine.layers.sinks import sdpa_with_sinks, softmax_with_sinks
from engine.layers.softcap import softcapped_attention


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.clip_qkv = config.clip_qkv
        self.qk_norm = config.qk_norm
        self.window = config.sliding_windows[layer_idx]
        self.use_rope = config.rope_layers[layer_idx]  # False: a NoPE layer (SmolLM3), q and k stay unrotated
        self.query_scale = config.query_scale  # None: SDPA's own head_dim ** -0.5
        self.softcap = config.attn_logit_softcap  # SDPA cannot cap scores: such layers take the explicit path
        # gpt-oss: a learned logit per query head in every softmax row (engine/layers/sinks.py)
        self.sinks = nn.Parameter(torch.empty(config.n_heads)) if config.attn_sinks else None
        H, K, d = self.n_heads, self.n_kv_heads, self.head_dim
        self.wq = nn.Linear(config.dim, H * d, bias=config.qkv_bias)
        self.wk = nn.Linear(config.dim, K * d, bias=config.qkv_bias)
        self.wv = nn.Linear(config.dim, K * d, bias=config.qkv_bias)
        self.wo = nn.Linear(H * d, config.dim, bias=config.o_bias)
        offset = config.norm_weight_offset
        if config.qk_norm == "head":  # Qwen3, Gemma 3: one RMSNorm shared by every head
            self.q_norm, self.k_norm = RMSNorm(d, config.norm_eps, offset), RMSNorm(d, config.norm_eps, offset)
        elif config.qk_norm == "full":  # OLMoE: RMSNorm over all heads' concatenation
            self.q_norm, self.k_norm = RMSNorm(H * d, config.norm_eps), RMSNorm(K * d, config.norm_eps)
        self.wqkv = None  # q, k, v stacked into one matmul by engine.quant.concat.fuse_projections; wq/wk/wv are then None

    # The last step's cos, sin and their per-head forms for the fused path, shared by every layer (each layer
    # receives the same table objects in a step): built once per step instead of once per layer. Keyed by
    # identity, and holding the tables keeps them alive, so a match is never a recycled id.
    _head_tables: tuple = (None, None, None, None)

    @classmethod
    def _per_head_tables(cls, cos, sin):
        """cos [B, T, 1, d] and sign_folded_sin of sin, likewise."""
        last = cls._head_tables  # one read: another thread may replace the tuple, never half of it
        if last[0] is cos and last[1] is sin:
            return last[2], last[3]
        tables = (cos, sin, cos.unsqueeze(2), sign_folded_sin(sin.unsqueeze(2)))
        cls._head_tables = tables
        return tables[2], tables[3]

    def forward(self, x, cos, sin, kv, probe=None) -> torch.Tensor:
        B, T, _ = x.shape
        H, K, d = self.n_heads, self.n_kv_heads, self.head_dim
        if self.wqkv is not None and self.qk_norm == "none" and self.clip_qkv is None:
            q, k, v = self._fused_qkv_rope(x, cos, sin)  # k, v still [B, T, K, d]
            update_tokens_major = getattr(kv, "update_tokens_major", None)
            if update_tokens_major is not None:  # the paged view takes them as they are: no transposes there and back
                k, v = update_tokens_major(self.layer_idx, k, v)
            else:
                k, v = kv.update(self.layer_idx, k.transpose(1, 2), v.transpose(1, 2))
        else:
            q, k, v = self._qkv_rope(x, cos, sin)
            k, v = kv.update(self.layer_idx, k, v)  # [B, K, S, d] each
        mask = kv.mask(self.window)  # [B or 1, 1, T, S] or None

        if probe is not None and probe.wants_attention(self.layer_idx):
            out = self._explicit(q, k, v, mask, probe)
        elif self.softcap is not None:
            scale = self.head_dim ** -0.5 if self.query_scale is None else self.query_scale
            out = softcapped_attention(q, k, v, mask, scale, self.softcap)  # [B, H, T, d]
        elif self.sinks is not None:
            scale = self.head_dim ** -0.5 if self.query_scale is None else self.query_scale
            out = sdpa_with_sinks(q, k, v, mask, self.sinks, scale)  # [B, H, T, d]
        else:
            # Fused kernel; GQA is handled inside SDPA without repeating K/V in memory. A chunk that starts a
            # sequence needs no mask: SDPA's own causal rule (query i sees keys 0..i) skips the key blocks above
            # the diagonal instead of scoring them and masking them out (half the work of a prefill), and hides
            # the padding past the chunk's last key as well.
            causal = getattr(kv, "causal_from_zero", False) and self.window is None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal,
                                                 enable_gqa=H != K, scale=self.query_scale)  # [B, H, T, d]
        return self.wo(out.transpose(1, 2).reshape(B, T, H * d))

    def _fused_qkv_rope(self, x, cos, sin):
        """The common case in few ops: one matmul for q, k and v, and one rotation for the q and k heads
        together, in [B, T, heads, d] layout (the same numbers as rotating each on its own). q comes back
        [B, H, T, d], k and v in that [B, T, K, d] layout (forward hands them to the cache as they are)."""
        B, T, _ = x.shape
        H, K, d = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.wqkv(x).view(B, T, H + 2 * K, d)
        qk = qkv[:, :, :H + K]  # [B, T, H+K, d]
        if self.use_rope and cos.shape[-1] == d:  # a full-width table: the folded rotation (same numbers)
            qk = apply_rope_folded(qk, *self._per_head_tables(cos, sin))
        elif self.use_rope:
            qk = apply_rope(qk, cos.unsqueeze(2), sin.unsqueeze(2))
        return qk[:, :, :H].transpose(1, 2), qk[:, :, H:], qkv[:, :, H + K:]

    def _qkv_rope(self, x, cos, sin):
        """q [B, H, T, d], k and v [B, K, T, d]: projections, optional q/k-norm and clipping, RoPE."""
        B, T, _ = x.shape
        H, K, d = self.n_heads, self.n_kv_heads, self.head_dim
        if self.wqkv is not None:
            q, k, v = self.wqkv(x).split((H * d, K * d, K * d), dim=-1)
        else:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)  # [B, T, H*d], [B, T, K*d] x2
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.clip_qkv is not None:
            q, k, v = (t.clamp(-self.clip_qkv, self.clip_qkv) for t in (q, k, v))
        q = q.view(B, T, H, d)
        k = k.view(B, T, K, d)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, H, T, d], [B, K, T, d]
        if self.use_rope:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, T, d]: one table for every head
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v.view(B, T, K, d).transpose(1, 2)  # v: [B, K, T, d]

    def _explicit(self, q, k, v, mask, probe) -> torch.Tensor:
        """The slow path that materialises the attention matrix so a probe can see it (soft-capped scores
        included: the same numbers as engine/layers/softcap.py)."""
        G = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(G, dim=1)  # [B, H, S, d]: head h reads kv head h // G
        v = v.repeat_interleave(G, dim=1)
        scale = self.head_dim ** -0.5 if self.query_scale is None else self.query_scale
        scores = (q.float() @ k.float().transpose(-1, -2)) * scale  # [B, H, T, S]
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        if self.sinks is None:
            probs = torch.softmax(scores, dim=-1)
            if probe is not None:
                probe.record_attention(self.layer_idx, probs)
        else:
            probs, sink = softmax_with_sinks(scores, self.sinks)  # [B, H, T, S], the sink's share [B, H, T]
            if probe is not None:
                probe.record_attention(self.layer_idx, probs, sink)
        return (probs.to(v.dtype) @ v)
