"""Multi-head latent attention (DeepSeek-V2): per token one compressed latent c_kv (kv_lora_rank wide,
after its RMSNorm) and one RoPE key k_pe shared by every head are all the KV cache keeps. A prefill
expands the cached latents into per-head keys and values through kv_b; a decode step attends in latent
space instead, kv_b folded into the query and the output (the same numbers, without expanding S latents a
step). Owns the layer and its RoPE layout; the cache it is handed stores (c_kv, k_pe) in the slots other
layers use for K and V (ModelConfig.kv_entry).

Shape legend: B batch, T new tokens, S cached+new tokens, D dim, H heads, R kv_lora_rank, n qk_nope_head_dim,
r qk_rope_head_dim, v v_head_dim.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from engine.layers.norm import RMSNorm

# DeepSeek's reference builds q_a_layernorm and kv_a_layernorm with RMSNorm's default eps, not rms_norm_eps.
LATENT_NORM_EPS = 1e-6


def softmax_scale(config: ModelConfig) -> float:
    """1/sqrt(n + r), times YaRN's mscale(factor, mscale_all_dim) squared when the RoPE scaling names one
    (DeepSeek multiplies the scores, not only cos/sin, by the length-dependent temperature)."""
    mla, s = config.mla, config.rope_scaling
    scale = (mla.qk_nope_head_dim + mla.qk_rope_head_dim) ** -0.5
    if s.rope_type != "default" and s.mscale_all_dim and s.factor > 1:
        mscale = 0.1 * s.mscale_all_dim * math.log(s.factor) + 1.0
        scale *= mscale * mscale
    return scale


def apply_rope_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., T, r] as r/2 *adjacent* pairs (x[2i], x[2i+1]), DeepSeek's complex-number layout, not
    the rotate-half one of engine/layers/rope.py. cos/sin are RopeTable's [..., T, r] tables, whose first
    half holds each frequency once. In fp32, as the reference rotates."""
    half = x.shape[-1] // 2
    c, s = cos[..., :half].float(), sin[..., :half].float()
    x32 = x.float()
    even, odd = x32[..., 0::2], x32[..., 1::2]  # [..., T, r/2] each
    return torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).flatten(-2).to(x.dtype)


class MLAttention(nn.Module):
    LINEARS = ("wq", "wq_a", "wq_b", "wkv_a", "wkv_b", "wo")  # every projection, for engine/quant's module swap

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        mla = config.mla
        self.layer_idx = layer_idx
        self.n_heads = H = config.n_heads
        self.n_kv_heads = H  # after expansion every head has its own key and value
        self.head_dim = mla.v_head_dim  # each head's slice of wo's input (head interventions scale these)
        self.nope, self.rope, self.rank, self.v_dim = mla.qk_nope_head_dim, mla.qk_rope_head_dim, mla.kv_lora_rank, \
            mla.v_head_dim
        self.window = None
        qk = self.nope + self.rope
        if mla.q_lora_rank is None:  # V2-Lite: q straight from x
            self.wq = nn.Linear(config.dim, H * qk, bias=False)
            self.wq_a = self.q_a_norm = self.wq_b = None
        else:  # V2: q through its own low-rank bottleneck
            self.wq = None
            self.wq_a = nn.Linear(config.dim, mla.q_lora_rank, bias=mla.a_bias)
            self.q_a_norm = RMSNorm(mla.q_lora_rank, LATENT_NORM_EPS)
            self.wq_b = nn.Linear(mla.q_lora_rank, H * qk, bias=False)
        self.wkv_a = nn.Linear(config.dim, self.rank + self.rope, bias=mla.a_bias)  # -> [c_kv | k_pe]
        self.kv_a_norm = RMSNorm(self.rank, LATENT_NORM_EPS)
        self.wkv_b = nn.Linear(self.rank, H * (self.nope + self.v_dim), bias=False)  # latent -> [k_nope | v] per head
        self.wo = nn.Linear(H * self.v_dim, config.dim, bias=config.o_bias)
        self.scale = softmax_scale(config)
        self.wqkv = None  # never fused: engine/quant/concat.py leaves MLA alone

    def forward(self, x, cos, sin, kv, probe=None) -> torch.Tensor:
        B, T, _ = x.shape
        H, n, r, R, v = self.n_heads, self.nope, self.rope, self.rank, self.v_dim
        q = self.wq(x) if self.wq is not None else self.wq_b(self.q_a_norm(self.wq_a(x)))
        q = q.view(B, T, H, n + r).transpose(1, 2)  # [B, H, T, n+r]
        latent, k_pe = self.wkv_a(x).split((R, r), dim=-1)  # [B, T, R], [B, T, r]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, T, r]: one table for every head
        q_pe = apply_rope_pairs(q[..., n:], cos, sin)  # [B, H, T, r]
        k_pe = apply_rope_pairs(k_pe.unsqueeze(1), cos, sin)  # [B, 1, T, r]
        c_kv = self.kv_a_norm(latent).unsqueeze(1)  # [B, 1, T, R]
        # What the cache stores: the normalised latent and the rotated shared key, (R + r) values a token.
        c_kv, k_pe = kv.update(self.layer_idx, c_kv, k_pe)  # [B, 1, S, R], [B, 1, S, r]
        mask = kv.mask(None)  # [B or 1, 1, T, S] or None
        if self._absorbs(T):
            out = self._absorbed(q[..., :n], q_pe, c_kv, k_pe, mask, probe)
        else:
            out = self._expanded(q[..., :n], q_pe, c_kv, k_pe, mask, probe)
        return self.wo(out.transpose(1, 2).reshape(B, T, H * v))  # out: [B, H, T, v]

    def _absorbs(self, T: int) -> bool:
        """Whether to attend in latent space: for few new tokens (decoding) that costs T·S·(2R + r) a head
        against S·R·(n + v) for expanding every cached latent. Only with kv_b a plain float linear (a
        quantized one has no float matrix to fold). Nothing hooks kv_b: LoRA adapters target q/k/v/o and the
        MLP projections (engine/loaders/lora_adapter.py), interventions the output projection."""
        return (type(self.wkv_b) is nn.Linear
                and T * (2 * self.rank + self.rope) < self.rank * (self.nope + self.v_dim))

    def _expanded(self, q_nope, q_pe, c_kv, k_pe, mask, probe) -> torch.Tensor:
        """Every cached latent expanded into per-head keys and values through kv_b."""
        B, H, _, n = q_nope.shape
        S, r, v = c_kv.shape[2], self.rope, self.v_dim
        expanded = self.wkv_b(c_kv[:, 0]).view(B, S, H, n + v).transpose(1, 2)  # [B, H, S, n+v]
        k = torch.cat((expanded[..., :n], k_pe.expand(B, H, S, r)), dim=-1)  # [B, H, S, n+r]
        q = torch.cat((q_nope, q_pe), dim=-1)  # [B, H, T, n+r]
        if probe is not None and probe.wants_attention(self.layer_idx):
            return self._explicit(q, k, expanded[..., n:], mask, probe)
        return F.scaled_dot_product_attention(q, k, expanded[..., n:], attn_mask=mask, scale=self.scale)

    def _absorbed(self, q_nope, q_pe, c_kv, k_pe, mask, probe) -> torch.Tensor:
        """The same attention with kv_b folded in: a head's score q_nope·(W_k c) is (W_kᵀ q_nope)·c, and its
        output W_v (Σ p c), so the keys are the cached [c, k_pe] themselves and the values c (one shared
        head: MQA over the latent); W_v is applied to the T outputs instead of the S cached latents."""
        H, n, v, R = self.n_heads, self.nope, self.v_dim, self.rank
        w = self.wkv_b.weight.view(H, n + v, R)
        q = torch.cat((q_nope @ w[:, :n], q_pe), dim=-1)  # [B, H, T, R+r]
        k = torch.cat((c_kv, k_pe), dim=-1)  # [B, 1, S, R+r]
        # Plain matmuls broadcast over the heads: CPU SDPA with one shared 576-wide head ran ~25x slower here.
        out = self._explicit(q, k, c_kv, mask, probe if probe is not None and probe.wants_attention(self.layer_idx)
                             else None)  # [B, H, T, R]
        return out @ w[:, n:].transpose(1, 2)  # [B, H, T, R] @ [H, R, v] -> [B, H, T, v]

    def _explicit(self, q, k, values, mask, probe) -> torch.Tensor:
        """The attention matrix materialised, for a probe to see (probe may be None); k and values may be
        one head shared by all (latent space)."""
        scores = (q.float() @ k.float().transpose(-1, -2)) * self.scale  # [B, H, T, S]
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if probe is not None:
            probe.record_attention(self.layer_idx, probs)
        return probs.to(values.dtype) @ values


def per_head_kv_values(config: ModelConfig) -> int:
    """Values per token and layer that per-head K and V caches of the same attention would hold:
    H keys of n + r and H values of v (what MLA's latent replaces)."""
    mla = config.mla
    return config.n_heads * (mla.qk_nope_head_dim + mla.qk_rope_head_dim + mla.v_head_dim)


def mla_shapes(config: ModelConfig, prefix: str) -> dict[str, tuple[int, ...]]:
    """Canonical attention tensors of one MLA layer (docs/weights.md), for engine/loaders/validate.py."""
    mla, D, H = config.mla, config.dim, config.n_heads
    qk, R, r = mla.qk_nope_head_dim + mla.qk_rope_head_dim, mla.kv_lora_rank, mla.qk_rope_head_dim
    p = prefix + "attn."
    if mla.q_lora_rank is None:
        shapes = {p + "wq.weight": (H * qk, D)}
    else:
        Q = mla.q_lora_rank
        shapes = {p + "wq_a.weight": (Q, D), p + "q_a_norm.weight": (Q,), p + "wq_b.weight": (H * qk, Q)}
        if mla.a_bias:
            shapes[p + "wq_a.bias"] = (Q,)
    shapes.update({p + "wkv_a.weight": (R + r, D), p + "kv_a_norm.weight": (R,),
                   p + "wkv_b.weight": (H * (mla.qk_nope_head_dim + mla.v_head_dim), R),
                   p + "wo.weight": (D, H * mla.v_head_dim)})
    if mla.a_bias:
        shapes[p + "wkv_a.bias"] = (R + r,)
    if config.o_bias:
        shapes[p + "wo.bias"] = (D,)
    return shapes
